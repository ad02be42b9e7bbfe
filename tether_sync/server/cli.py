"""``tether-sync serve``: run the bundled server in the foreground until a signal."""

from __future__ import annotations

import sys
from typing import Optional

from .core import TetherServer
from .foreground import configure_logging, stop_on_signals, wait_for_stop
from .store import Store

__all__ = ["serve_main"]


def serve_main(
    host: str = "127.0.0.1",
    port: int = 8765,
    require_auth: bool = False,
    verbose: bool = False,
    *,
    extensions: bool = True,
    broadcast: bool = False,
    session_ttl: float = 600.0,
    history_size: int = 1000,
    history_max_age: float = 300.0,
    record_path: Optional[str] = None,
    compression: Optional[str] = None,
    store: Optional[str] = None,
    node: Optional[str] = None,
) -> int:
    """Run a :class:`TetherServer` in the foreground until SIGINT or SIGTERM.

    Prints ``tether-sync server listening on ws://HOST:PORT/`` (flushed) on
    stdout once the socket is bound, so a parent process can wait for that
    line and read the real port from it (``--port 0`` picks a free one).

    Args:
        host: Interface to listen on.
        port: TCP port (0 picks a free one; the printed URL shows which).
        require_auth: Refuse data until a valid token was sent.
        verbose: Log every connection to stderr.
        extensions: Serve the reliable-sessions extension (``--no-extensions``: off).
        broadcast: Publish a client's data to the channel's subscribers.
        session_ttl: Seconds a session is kept after its last connection.
        history_size: Published messages kept per channel.
        history_max_age: Seconds a published message is kept.
        record_path: File that gets one JSON line per accepted data message.
        compression: ``"deflate"`` or None.
        store: ``redis://HOST:PORT/DB`` to keep sessions and channel history in
            Redis (nodes on one Redis are one service); None or ``"memory"``:
            in this process.
        node: This node's name among the nodes of one store, stable across its
            restarts (default: from ``record_path`` when given, else host and pid).

    Returns:
        The process exit code: 0 after a clean stop, 1 if the port could not be
        bound or the record file opened, 2 for an invalid option value.
    """
    configure_logging(verbose)
    try:
        backend = _make_store(store)
        server = TetherServer(
            host,
            port,
            require_auth=require_auth,
            extensions=extensions,
            broadcast=broadcast,
            session_ttl=session_ttl,
            history_size=history_size,
            history_max_age=history_max_age,
            record_path=record_path,
            compression=compression,
            store=backend,
            node=node,
        )
    except ValueError as exc:
        print(f"tether-sync serve: {exc}", file=sys.stderr)
        return 2
    # Nothing in this process reads the received-frame records: keep none.
    server._keep_records = False
    with stop_on_signals() as stop:
        try:
            server.start()
        except OSError as exc:
            if record_path is not None and exc.filename == record_path:
                print(f"tether-sync: cannot open {record_path}: {exc}", file=sys.stderr)
            else:
                print(f"tether-sync: cannot listen on {host}:{port}: {exc}", file=sys.stderr)
            return 1
        print(f"tether-sync server listening on {server.url}", flush=True)
        wait_for_stop(stop)
        server.stop()
        return 0


def _make_store(url: Optional[str]) -> Optional[Store]:
    """The store a ``--store`` value names (ValueError for an unknown scheme)."""
    if url is None or url == "memory":
        return None
    if url.startswith(("redis://", "rediss://", "unix://")):
        from .redis_store import RedisStore

        return RedisStore(url)
    raise ValueError("--store must be 'memory' or a redis:// URL")
