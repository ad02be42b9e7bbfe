"""Shared fixtures: a real bundled Tether server on 127.0.0.1, one per test.

``tether_sync.server`` (and so ``websockets``) is imported inside the fixtures,
so tests that use no server do not need the ``server`` extra.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Set

import pytest

if TYPE_CHECKING:
    from tether_sync.server import TetherServer


class _LogText(logging.Handler):
    """Keeps every formatted tether_sync log line of the session."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


_PRESENTED_TOKENS: Set[str] = set()


def _remember_tokens(server: TetherServer) -> None:
    for conn in server.all_connections:
        # Only real tokens: the few-letter stand-ins of some raw-protocol tests
        # would match unrelated text.
        _PRESENTED_TOKENS.update(t for t in conn.tokens if len(t) >= 16)


@pytest.fixture(scope="session", autouse=True)
def no_token_in_any_log_line() -> Iterator[None]:
    """Log tether_sync at DEBUG for the whole run; no token may appear in it.

    Every token any bundled server was presented during the session is checked
    against every log line (client and server) at the end of the run.
    """
    logger = logging.getLogger("tether_sync")
    handler = _LogText()
    handler.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))
    previous = logger.level
    logger.setLevel(logging.DEBUG)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(previous)
    text = "\n".join(handler.lines)
    leaked = sorted(t for t in _PRESENTED_TOKENS if t in text)
    assert not leaked, f"{len(leaked)} token(s) appeared in tether_sync log lines"


@pytest.fixture
def tether_server() -> Iterator[TetherServer]:
    """A running ``TetherServer(port=0)``; ``.url`` is ``ws://127.0.0.1:<port>/``."""
    from tether_sync.server import TetherServer

    server = TetherServer(port=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        _remember_tokens(server)


@pytest.fixture
def make_server() -> Iterator[Callable[..., TetherServer]]:
    """Factory: ``make_server(require_auth=True, ...)`` starts a server, stopped at teardown.

    Keyword arguments go to ``TetherServer``; ``port`` defaults to 0 (a free port).
    """
    from tether_sync.server import TetherServer

    servers: List[TetherServer] = []

    def factory(**kwargs: Any) -> TetherServer:
        server = TetherServer(**kwargs)
        server.start()
        servers.append(server)
        return server

    try:
        yield factory
    finally:
        for server in servers:
            server.stop()
            _remember_tokens(server)


@pytest.fixture
def dead_url() -> str:
    """A ws:// URL where nothing listens (the port was free a moment ago)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"ws://127.0.0.1:{port}/"
