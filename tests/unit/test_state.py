"""Tests of tether_sync.state: the connection states and their transition table."""

from __future__ import annotations

import itertools

import pytest

from tether_sync.state import ALLOWED, State, check

IDLE, CONNECTING, OPEN, RECONNECTING, CLOSED = (
    State.IDLE,
    State.CONNECTING,
    State.OPEN,
    State.RECONNECTING,
    State.CLOSED,
)

EXPECTED = {
    (IDLE, CONNECTING),
    (IDLE, CLOSED),
    (CONNECTING, OPEN),
    (CONNECTING, RECONNECTING),
    (CONNECTING, CLOSED),
    (OPEN, RECONNECTING),
    (OPEN, CLOSED),
    (RECONNECTING, CONNECTING),
    (RECONNECTING, CLOSED),
}


def test_state_values_are_the_design_strings() -> None:
    assert [s.value for s in State] == ["idle", "connecting", "open", "reconnecting", "closed"]
    assert State.OPEN == "open"
    assert State("reconnecting") is State.RECONNECTING
    assert str(State.CLOSED) == "closed"
    assert f"{State.IDLE}" == "idle"


def test_table_covers_every_state() -> None:
    assert set(ALLOWED) == set(State)
    for targets in ALLOWED.values():
        assert isinstance(targets, frozenset)


def test_table_is_exactly_the_lifecycle() -> None:
    allowed = {(a, b) for a, targets in ALLOWED.items() for b in targets}
    assert allowed == EXPECTED


def test_closed_is_final_and_reachable_from_every_other_state() -> None:
    assert ALLOWED[CLOSED] == frozenset()
    for state in State:
        if state is not CLOSED:
            assert CLOSED in ALLOWED[state]


def test_no_self_transitions() -> None:
    for state in State:
        assert state not in ALLOWED[state]


@pytest.mark.parametrize(("current", "new"), sorted(EXPECTED))
def test_check_accepts_allowed(current: State, new: State) -> None:
    check(current, new)


@pytest.mark.parametrize(
    ("current", "new"),
    [pair for pair in itertools.product(State, State) if pair not in EXPECTED],
)
def test_check_rejects_everything_else_naming_both_states(current: State, new: State) -> None:
    with pytest.raises(RuntimeError) as info:
        check(current, new)
    assert f"{current.value} -> {new.value}" in str(info.value)


def test_reconnect_cycle_walks_the_table() -> None:
    path = [IDLE, CONNECTING, RECONNECTING, CONNECTING, OPEN, RECONNECTING, CONNECTING, OPEN]
    for current, new in zip(path, path[1:]):
        check(current, new)
    check(OPEN, CLOSED)
