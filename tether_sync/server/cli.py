"""``tether-sync serve``: run the bundled server in the foreground until a signal."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType
from typing import Any, Dict, Optional

from .core import TetherServer

__all__ = ["serve_main"]


def _configure_logging(verbose: bool) -> None:
    # basicConfig is a no-op when the host application already set up logging.
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Verbose means "log every connection" (INFO). Our DEBUG lines never carry
    # tokens, and websockets' frame-level DEBUG is disabled by the server itself.
    logging.getLogger("tether_sync").setLevel(logging.INFO if verbose else logging.WARNING)


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
    _configure_logging(verbose)
    stop = threading.Event()

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        stop.set()

    # Handlers go in before the server starts, so a signal that arrives at any
    # point after that still ends in a clean stop rather than a traceback.
    previous: Dict[int, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, on_signal)
    server = TetherServer(host, port, require_auth=require_auth)
    try:
        try:
            server.start()
        except OSError as exc:
            print(f"tether-sync: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
            return 1
        print(f"tether-sync server listening on {server.url}", flush=True)
        # A timed wait keeps the main thread responsive to signals on every platform.
        while not stop.wait(1.0):
            pass
        server.stop()
        return 0
    finally:
        for restored, handler in previous.items():
            signal.signal(restored, handler)
