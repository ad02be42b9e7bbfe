"""The panel's Flask application: the static page, an SSE stream and one POST per button.

Routes:
    ``GET /``: the page (``static/index.html``); ``GET /static/...``: its CSS and JS.
    ``GET /events``: server-sent events, one ``update`` per change (see
    :meth:`~tether_sync.demo.backend.DemoBackend.stream`).
    ``GET /api/state``: the current snapshot as JSON.
    ``POST /api/<action>``: a button; a JSON body carries its parameters. The
    answer is ``{"ok": true, "message": ...}``, or ``{"ok": false, "error": ...}``
    with 400 (bad parameter), 409 (not possible now) or 415 (not JSON).

POST bodies must be JSON: a cross-site form cannot send that without a CORS
preflight, which this app never grants, so another web page cannot press the
buttons.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Dict, Tuple

from flask import Flask, Response, jsonify, request

from .backend import ActionConflict, DemoBackend

__all__ = ["STATIC_DIR", "create_app"]

STATIC_DIR = Path(__file__).resolve().parent / "static"
"""The page, its stylesheet and its script: served as they are, no build step."""

Action = Callable[[DemoBackend, Dict[str, Any]], Dict[str, Any]]

ACTIONS: Dict[str, Action] = {
    "kill": lambda b, p: b.kill_connection(),
    "server-close": lambda b, p: b.server_close(),
    "offline": lambda b, p: b.go_offline(p.get("seconds", 5)),
    "burst": lambda b, p: b.send_burst(p.get("count", 20), p.get("size", 0)),
    "flood": lambda b, p: b.flood(p.get("count", 500)),
    "latency": lambda b, p: b.set_latency(p.get("seconds", 0)),
    "refresh": lambda b, p: b.refresh_token(),
    "blackhole": lambda b, p: b.blackhole(p.get("seconds", 5)),
    "stall": lambda b, p: b.stall_reads(p.get("seconds", 5)),
    "crash": lambda b, p: b.crash_burst(p.get("count", 2000)),
}
"""Button name (the URL's last part) → what it does."""


def create_app(backend: DemoBackend) -> Flask:
    """Build the panel's WSGI application around a started ``backend``."""
    app = Flask(__name__, static_folder=str(STATIC_DIR), static_url_path="/static")
    app.json.sort_keys = False  # type: ignore[attr-defined]

    @app.get("/")
    def index() -> Response:
        response = app.send_static_file("index.html")
        response.headers["Cache-Control"] = "no-store"
        return response

    @app.get("/favicon.ico")
    def favicon() -> Response:
        # Browsers ask for /favicon.ico before (or without) reading the page's <link rel=icon>.
        return app.send_static_file("favicon.svg")

    @app.get("/events")
    def events() -> Response:
        return Response(
            backend.stream(),
            mimetype="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    @app.get("/api/state")
    def state() -> Response:
        return jsonify(backend.snapshot())

    @app.post("/api/<name>")
    def action(name: str) -> Tuple[Response, int]:
        run = ACTIONS.get(name)
        if run is None:
            return jsonify({"ok": False, "error": f"unknown action {name!r}"}), 404
        if not request.is_json:
            return jsonify({"ok": False, "error": "send a JSON body"}), 415
        params = request.get_json(silent=True)
        if params is None:
            params = {}
        if not isinstance(params, dict):
            return jsonify({"ok": False, "error": "the body must be a JSON object"}), 400
        try:
            result = run(backend, params)
        except ValueError as exc:
            return jsonify({"ok": False, "error": str(exc)}), 400
        except ActionConflict as exc:
            return jsonify({"ok": False, "error": str(exc)}), 409
        return jsonify(result), 200

    return app
