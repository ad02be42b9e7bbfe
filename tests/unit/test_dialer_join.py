"""Dialer.join (close()'s wait for connector threads) against a connector not started yet."""

from __future__ import annotations

import threading

from tether_sync.clock import Deadline, SystemClock
from tether_sync.engine.attempts import Dial, Dialer
from tether_sync.engine.config import LoopConfig
from tether_sync.engine.timers import TimerHeap


def test_join_skips_a_connector_registered_but_not_started_yet() -> None:
    # dial() (on the I/O thread) registers the connector thread, then starts it;
    # a close() on another thread in between called join() on the unstarted
    # thread and failed with RuntimeError("cannot join thread before it is
    # started"): seen as a Ctrl-C at exit that lost its report (3 runs in 60).
    dialer = Dialer(
        LoopConfig.__new__(LoopConfig), None, lambda c: None, TimerHeap(), SystemClock()
    )
    dial = Dial()
    ran = threading.Event()
    thread = threading.Thread(target=ran.set)
    dialer._connectors[thread] = dial
    assert dialer.join(Deadline(0.05)) == []  # before: RuntimeError
    assert dial.aborted
    thread.start()
    thread.join(5)
    assert ran.is_set()
