"""Fixtures for client tests against the bundled server on 127.0.0.1."""

from __future__ import annotations

from typing import Any, Callable, Iterator, List

import pytest

from tether_sync import TetherClient


@pytest.fixture
def make_client() -> Iterator[Callable[..., TetherClient]]:
    """Build clients that are closed (and their threads joined) after the test."""
    made: List[TetherClient] = []

    def factory(url: str, **options: Any) -> TetherClient:
        options.setdefault("reconnect", {"base_delay": 0.02, "max_delay": 0.2})
        options.setdefault("heartbeat", False)
        client = TetherClient(url, **options)
        made.append(client)
        return client

    yield factory
    for client in made:
        client.close(timeout=3)
