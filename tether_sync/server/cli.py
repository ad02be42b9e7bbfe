"""``tether-sync serve``: run the bundled server in the foreground until a signal."""

from __future__ import annotations

import sys

from .core import TetherServer
from .foreground import configure_logging, stop_on_signals, wait_for_stop

__all__ = ["serve_main"]


def serve_main(
    host: str = "127.0.0.1",
    port: int = 8765,
    require_auth: bool = False,
    verbose: bool = False,
) -> int:
    """Run a :class:`TetherServer` in the foreground until SIGINT or SIGTERM.

    Prints ``tether-sync server listening on ws://HOST:PORT/`` (flushed) once
    the socket is bound, so a parent process can wait for that line.

    Args:
        host: Interface to listen on.
        port: TCP port (0 picks a free one; the printed URL shows which).
        require_auth: Refuse data until a valid token was sent.
        verbose: Log every connection to stderr.

    Returns:
        The process exit code: 0 after a clean stop, 1 if the port could not be bound.
    """
    configure_logging(verbose)
    with stop_on_signals() as stop:
        server = TetherServer(host, port, require_auth=require_auth)
        try:
            server.start()
        except OSError as exc:
            print(f"tether-sync: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
            return 1
        print(f"tether-sync server listening on {server.url}", flush=True)
        wait_for_stop(stop)
        server.stop()
        return 0
