"""Running a command in the foreground: logging set-up and a clean stop on signals.

Shared by ``tether-sync serve`` and ``tether-sync demo``.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
from types import FrameType
from typing import Any, Dict, Iterator, Optional, Sequence

__all__ = ["configure_logging", "stop_on_signals", "wait_for_stop"]


def configure_logging(verbose: bool, quiet_unless_verbose: Sequence[str] = ()) -> None:
    """Log to stderr: tether_sync at INFO with ``verbose``, else WARNING.

    Args:
        verbose: Log every connection (INFO). Our DEBUG lines never carry tokens,
            and websockets' frame-level DEBUG is disabled by the server itself.
        quiet_unless_verbose: More loggers held at WARNING unless ``verbose``
            (werkzeug logs every request at INFO).
    """
    # basicConfig is a no-op when the host application already set up logging.
    logging.basicConfig(
        level=logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    level = logging.INFO if verbose else logging.WARNING
    for name in ("tether_sync", *quiet_unless_verbose):
        logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def stop_on_signals() -> Iterator[threading.Event]:
    """Turn SIGINT and SIGTERM into an event for the block's duration.

    Handlers go in before the block starts its servers, so a signal that arrives
    at any point after that ends in a clean stop rather than a traceback. Off the
    main thread (where signals cannot be handled) the event is only set by code.
    """
    stop = threading.Event()

    def on_signal(signum: int, frame: Optional[FrameType]) -> None:
        stop.set()

    previous: Dict[signal.Signals, Any] = {}
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous[sig] = signal.signal(sig, on_signal)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def wait_for_stop(stop: threading.Event) -> None:
    """Block until ``stop`` is set; the timed wait keeps signals handled everywhere."""
    while not stop.wait(1.0):
        pass
