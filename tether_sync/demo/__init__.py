"""``tether-sync demo``: a web control panel that shows every resilience feature live.

One process runs the bundled Tether server, one real :class:`~tether_sync.TetherClient`
connected to it, and a Flask app (threaded werkzeug server) whose page follows the
client through server-sent events and injects faults with its buttons: kill the
connection, force a close, take the server offline, burst-send, flood, add latency,
rotate the token, blackhole, stall reads, kill -9 the server mid-burst (and count
what was lost: nothing).

Needs the ``tether-sync[demo]`` extra (Flask, websockets). Nothing in
``tether_sync`` imports this package; ``tether-sync demo`` does, when it runs.

Modules:
    backend: :class:`DemoBackend`, the server, the client and the panel's model (no HTTP).
    app: the Flask application (page, ``/events``, ``/api/<action>``).
    runner: :func:`demo_main`, the command's foreground loop and clean shutdown.
"""

from .backend import ActionConflict, DemoBackend, DemoConfig
from .runner import demo_main

__all__ = ["ActionConflict", "DemoBackend", "DemoConfig", "demo_main"]
