"""``tether-sync demo``: the bundled server, one client and the panel, in one process."""

from __future__ import annotations

import logging
import sys
import threading
from typing import Optional

from ..server.foreground import configure_logging, stop_on_signals, wait_for_stop
from .backend import DemoBackend, DemoConfig

__all__ = ["demo_main"]


def demo_main(
    host: str = "127.0.0.1",
    port: int = 8000,
    server_port: int = 0,
    verbose: bool = False,
    config: Optional[DemoConfig] = None,
) -> int:
    """Run the control panel in the foreground until SIGINT or SIGTERM.

    Prints ``tether-sync demo: control panel on http://HOST:PORT/`` (flushed) once
    both servers listen, so a parent process can wait for that line.

    Args:
        host: Interface for the panel and the bundled WebSocket server.
        port: The panel's HTTP port (0 picks a free one).
        server_port: The WebSocket server's port (0 picks a free one).
        verbose: Log connections and HTTP requests to stderr.
        config: The demo client's settings.

    Returns:
        0 after a clean stop; 1 if a port could not be bound.
    """
    configure_logging(verbose, quiet_unless_verbose=("werkzeug",))
    if not verbose:
        # The panel shows the demo client's failed attempts and reconnects; its
        # WARNING lines would repeat them on the terminal (issue 21). The
        # server's and the panel's own warnings still print.
        logging.getLogger("tether_sync").setLevel(logging.ERROR)
        for name in ("tether_sync.server", "tether_sync.demo"):
            logging.getLogger(name).setLevel(logging.WARNING)
    with stop_on_signals() as stop:
        return _run(host, port, server_port, config, stop)


def _run(
    host: str, port: int, server_port: int, config: Optional[DemoConfig], stop: threading.Event
) -> int:
    # Imported here so that a missing ``demo`` extra fails only this command.
    from werkzeug.serving import BaseWSGIServer, make_server

    from .app import create_app

    backend = DemoBackend(host, server_port, config)
    http: Optional[BaseWSGIServer] = None
    http_thread: Optional[threading.Thread] = None
    try:
        try:
            backend.start()
        except OSError as exc:
            print(f"tether-sync demo: cannot start the server: {exc}", file=sys.stderr)
            return 1
        try:
            http = make_server(host, port, create_app(backend), threaded=True)
        except OSError as exc:
            print(f"tether-sync demo: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
            return 1
        except SystemExit:  # werkzeug prints why (e.g. the port is busy), then exits
            print(f"tether-sync demo: cannot listen on {host}:{port}", file=sys.stderr)
            return 1
        http_thread = threading.Thread(
            target=http.serve_forever,
            kwargs={"poll_interval": 0.2},
            name="tether-demo-http",
            daemon=True,
        )
        http_thread.start()
        shown = f"[{host}]" if ":" in host else host
        print(
            f"tether-sync demo: control panel on http://{shown}:{http.server_port}/ "
            f"(bundled server {backend.server.url}); Ctrl-C stops it",
            flush=True,
        )
        wait_for_stop(stop)
        print("tether-sync demo: stopping", file=sys.stderr, flush=True)
        return 0
    finally:
        # Streams first, so no request thread is left waiting for news.
        backend.begin_shutdown()
        if http is not None:
            http.shutdown()
            http.server_close()
        if http_thread is not None:
            http_thread.join(2.0)
        backend.close()
