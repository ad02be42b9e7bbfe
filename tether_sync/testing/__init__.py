"""Test an application against a real Tether server with faults (DESIGN §8).

Install with ``pip install tether-sync[testing]``: the pytest plugin registers
itself (entry point ``pytest11``) and every test can ask for the
``tether_server`` fixture::

    from tether_sync import TetherClient

    def test_orders_survive_a_server_crash(tether_server):
        with TetherClient(tether_server.url) as client:
            client.connect(wait=True, timeout=10)
            client.send({"order": 1}, channel="orders")
            tether_server.kill()                    # like kill -9
            client.send({"order": 2}, channel="orders")   # queued while down
            tether_server.restart()
            assert tether_server.wait_received(2, channel="orders")
            assert tether_server.received("orders") == [{"order": 1}, {"order": 2}]

Without pytest (or outside a test), :class:`TetherTestServer` is a context
manager, and :func:`record_client` records what a real client receives (in
production, say) in the format :meth:`TetherTestServer.replay` plays back.

The server is :class:`tether_sync.server.TetherServer` (the ``server`` extra,
``websockets``); the faults act in a TCP relay in front of it
(:mod:`tether_sync.testing.proxy`).
"""

from __future__ import annotations

from .recording import Recording, read_recording, record_client
from .server import TetherTestServer

try:  # the plugin part needs pytest; the rest does not
    from .plugin import pytest_configure, tether_server
except ImportError:  # pragma: no cover - depends on the environment
    pass

__all__ = [
    "Recording",
    "TetherTestServer",
    "pytest_configure",
    "read_recording",
    "record_client",
    "tether_server",
]
