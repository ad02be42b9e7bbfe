"""Shared fixtures: a real bundled Tether server on 127.0.0.1, one per test.

``tether_sync.server`` (and so ``websockets``) is imported inside the fixtures,
so tests that use no server do not need the ``server`` extra.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterator, List

import pytest

if TYPE_CHECKING:
    from tether_sync.server import TetherServer


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
