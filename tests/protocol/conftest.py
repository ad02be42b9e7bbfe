"""Fixtures of the sans-I/O session tier (no threads, sockets, sleeps or wall time)."""

from __future__ import annotations

import pytest
from protocol.sessionkit import FakeClock


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()
