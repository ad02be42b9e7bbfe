"""A Flask app that publishes one Tether message per request, for any WSGI server.

Start the bundled server in one terminal::

    tether-sync serve                      # listens on ws://127.0.0.1:8765/

then run the app under gunicorn, preloaded, with two worker processes::

    TETHER_URL=ws://127.0.0.1:8765/ gunicorn --preload -w 2 -b 127.0.0.1:8000 \\
        --chdir examples flask_app:app
    curl -X POST -H 'Content-Type: application/json' -d '{"text": "hi"}' \\
        http://127.0.0.1:8000/messages

(``flask --app examples/flask_app.py run`` works too.) ``POST /messages`` sends
the JSON body, with the worker's pid added, on the channel ``orders`` (or
``?channel=...``) and answers 202 at once: ``send()`` queues and never waits for
the link. Each worker process has its own client, made on its first request
(after the fork: ``--preload`` imports this module in the master), and closes it
when it exits, sending what is still queued first.

``TETHER_EXAMPLE_BOOT_MESSAGE=1`` makes the app send one ``boot`` message while
it is imported, so with ``--preload`` the master has a client of its own before
it forks; the workers never reuse it.
"""

from __future__ import annotations

import os
from typing import Any, Dict, Optional, Tuple

from flask import Flask, request

from tether_sync.flask import TetherSync

tether = TetherSync()


def create_app(url: Optional[str] = None) -> Flask:
    app = Flask(__name__)
    app.config["TETHER_URL"] = url or os.environ.get("TETHER_URL", "ws://127.0.0.1:8765/")
    # TetherClient's keyword arguments; dicts work for the option groups.
    app.config["TETHER_OPTIONS"] = {"queue": {"max_size": 10_000}}
    app.config["TETHER_CLOSE_TIMEOUT"] = 5.0
    tether.init_app(app)

    @app.post("/messages")
    def post_message() -> Tuple[Dict[str, Any], int]:
        body = request.get_json(silent=True)
        if not isinstance(body, dict):
            return {"error": "send a JSON object"}, 400
        channel = request.args.get("channel", "orders")
        tether.send({**body, "pid": os.getpid()}, channel=channel)
        return {"queued": True, "pid": os.getpid()}, 202

    @app.get("/status")
    def status() -> Dict[str, Any]:
        stats = tether.client.stats()
        return {"pid": os.getpid(), "state": stats.state, "sent": stats.sent}

    return app


app = create_app()

if os.environ.get("TETHER_EXAMPLE_BOOT_MESSAGE") == "1":
    with app.app_context():
        tether.send({"boot": os.getpid()}, channel="boot")
