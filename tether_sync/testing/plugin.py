"""The pytest side of :mod:`tether_sync.testing`: the ``tether_server`` fixture and its marker."""

from __future__ import annotations

from typing import Iterator

import pytest

from .server import TetherTestServer

MARKER = (
    "tether_server(**options): options for the tether_server fixture's bundled server "
    "(require_auth=True, broadcast=True, extensions=False, ...)"
)


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``tether_server`` marker (so ``--strict-markers`` accepts it)."""
    config.addinivalue_line("markers", MARKER)


@pytest.fixture
def tether_server(request: pytest.FixtureRequest) -> Iterator[TetherTestServer]:
    """A bundled Tether server on a free loopback port, for this test only.

    Gives ``url``, ``received(channel)``, ``publish(channel, payload)``, and the
    faults ``kill()``, ``restart()``, ``reset_all()``, ``blackhole(seconds)``,
    ``latency(seconds)``, ``stall_reading(seconds)``, ``refuse(n, status=503)``,
    plus ``record(path)`` / ``replay(path)``; see
    :class:`~tether_sync.testing.TetherTestServer`. Server options come from
    ``@pytest.mark.tether_server(...)``. Each test (and so each pytest-xdist
    worker) gets its own server and port.
    """
    marker = request.node.get_closest_marker("tether_server")
    options = dict(marker.kwargs) if marker is not None else {}
    server = TetherTestServer(**options)
    try:
        yield server
    finally:
        server.close()


__all__ = ["pytest_configure", "tether_server"]
