"""Fixtures of the engine tier: the real I/O loop on a fake clock and scripted sockets.

See :mod:`engine.rig`. No server, no sleeps; the whole tier runs in seconds.
"""

from __future__ import annotations

from typing import Iterator

import pytest
from engine.rig import Rig

from tether_sync.engine import transport


@pytest.fixture
def rig(monkeypatch: pytest.MonkeyPatch) -> Iterator[Rig]:
    """Clients on a fake clock whose attempts the test answers (see ``Rig``)."""
    built = Rig()
    # The seam: the network part of an attempt (attempts.handshake calls these
    # through the transport module, on the connector thread).
    monkeypatch.setattr(transport, "open_socket", built.dialing.open_socket)
    monkeypatch.setattr(transport, "handshake", built.dialing.handshake)
    try:
        yield built
    finally:
        built.teardown()
