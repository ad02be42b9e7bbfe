"""Connection states and the transitions allowed between them.

All state changes go through :func:`check`, called by the loop's one
``_set_state`` method, which logs the change and emits ``state_change``.
"""

from __future__ import annotations

import enum
from typing import Dict, FrozenSet


class State(str, enum.Enum):
    """The state of a :class:`~tether_sync.TetherClient`.

    The values are the strings of DESIGN §2, so ``client.state == "open"`` works.
    """

    IDLE = "idle"
    """Created, ``connect()`` not called yet."""
    CONNECTING = "connecting"
    """A handshake (and, with auth, the token exchange) is in progress."""
    OPEN = "open"
    """Connected (and authenticated): the queue drains."""
    RECONNECTING = "reconnecting"
    """Waiting out a backoff delay before the next attempt."""
    CLOSED = "closed"
    """Final: ``close()`` was called, attempts ran out, or a close was terminal."""

    def __str__(self) -> str:
        return self.value


ALLOWED: Dict[State, FrozenSet[State]] = {
    State.IDLE: frozenset({State.CONNECTING, State.CLOSED}),
    State.CONNECTING: frozenset({State.OPEN, State.RECONNECTING, State.CLOSED}),
    State.OPEN: frozenset({State.RECONNECTING, State.CLOSED}),
    State.RECONNECTING: frozenset({State.CONNECTING, State.CLOSED}),
    State.CLOSED: frozenset(),
}
"""For each state, the states it may change to."""


def check(current: State, new: State) -> None:
    """Raise :class:`RuntimeError` if ``current -> new`` is not in :data:`ALLOWED`."""
    if new not in ALLOWED[current]:
        raise RuntimeError(f"invalid state transition {current.value} -> {new.value}")
