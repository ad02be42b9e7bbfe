"""The I/O thread never dies (DESIGN §4): a failing step costs one connection at most.

A handler or a dispatcher that raises costs nothing (the link stays up); a bug
in one of the loop's own steps fails the connection with an ``error`` event and
the client reconnects, on the same I/O thread, which keeps answering.
"""

from __future__ import annotations

import threading
from typing import Any, Callable, List, Optional

import pytest
from engine.rig import WAIT, Rig

from tether_sync import ClientClosed, Reconnect, TetherError
from tether_sync.engine import attempts
from tether_sync.engine import commands as cmd
from tether_sync.engine.lifecycle import Lifecycle
from tether_sync.engine.poller import Poller
from tether_sync.engine.routing import Router

pytestmark = pytest.mark.timeout(30)


def test_a_handler_that_raises_costs_nothing(rig: Rig) -> None:
    d = rig.client()
    server = rig.connect(d)
    seen: List[Any] = []

    def handler(event: Any) -> None:
        seen.append(event.payload)
        if event.payload == "boom":
            raise ValueError("handler bug")

    d.client.on("message", handler)
    for text in ("a", "boom", "b"):
        server.send_text(text)
    d.events.wait_for("message", 3)
    error = d.events.wait_for("error").error
    assert isinstance(error, ValueError) and str(error) == "handler bug"
    assert seen == ["a", "boom", "b"]
    # The link is the same one: nothing was closed, nothing retried.
    d.client.send("still here")
    assert server.read_text() == ["still here"]
    assert not d.events.of("close") and rig.dialing.count == 1


def test_a_dispatcher_that_raises_moves_callbacks_to_a_fallback_thread(rig: Rig) -> None:
    calls = 0

    def dispatcher(task: Callable[[], None]) -> None:
        nonlocal calls
        calls += 1
        if calls >= 3:
            raise RuntimeError("the GUI is gone")
        threading.Thread(target=task, name="user-gui").start()

    d = rig.client(dispatcher=dispatcher)
    server = rig.connect(d)
    for i in range(5):
        server.send_text(f"m{i}")
    d.events.wait_for("message", 5)
    assert [e.payload for e in d.events.of("message")] == [f"m{i}" for i in range(5)]
    assert "the GUI is gone" in str(d.events.wait_for("error").error)
    assert "tether-dispatch-fallback" in d.events.threads
    assert "tether-io" not in d.events.threads
    d.client.send("still here")
    assert server.read_text() == ["still here"]
    assert not d.events.of("close") and rig.dialing.count == 1


def test_a_step_of_the_loop_that_raises_costs_one_connection(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    deliver = Router.deliver_many
    failures = [RuntimeError("bug while routing")]

    def deliver_many(self: Router, items: Any) -> None:
        if failures:
            raise failures.pop()
        deliver(self, items)

    d = rig.client(reconnect=Reconnect(base_delay=1.0))
    server = rig.connect(d)
    io_thread = d.io_thread()
    monkeypatch.setattr(Router, "deliver_many", deliver_many)
    server.send_text("first")
    error = d.events.wait_for("error").error
    assert isinstance(error, TetherError)
    assert "internal error" in str(error) and "bug while routing" in str(error)
    assert isinstance(error.__cause__, RuntimeError)
    # That connection failed (1011, no closing handshake): the server sees EOF.
    assert server.read_until_eof() == []
    retry = d.events.wait_for("reconnecting")
    close = d.events.of("close")[0]
    assert (close.code, close.reason) == (1011, "internal error")
    rig.clock.advance(retry.delay)
    server = rig.dialing.next().accept()
    d.events.wait_for("open", 2)
    server.send_text("second")
    assert d.events.wait_for("message").payload == "second"
    assert d.io_thread() is io_thread and io_thread is not None and io_thread.is_alive()
    d.sync()  # and it still answers commands


def test_an_attempt_that_cannot_start_its_thread_is_retried(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # e.g. "can't start new thread" under a process's thread limit.
    real = threading.Thread
    refusals = [RuntimeError("can't start new thread")]

    class Thread(real):  # type: ignore[misc,valid-type]
        def start(self) -> None:
            if refusals:
                raise refusals.pop()
            super().start()

    class Threading:
        def __getattr__(self, name: str) -> Any:
            return Thread if name == "Thread" else getattr(threading, name)

    monkeypatch.setattr(attempts, "threading", Threading())
    d = rig.client(reconnect=Reconnect(base_delay=1.0))
    d.client.connect()
    error = d.events.wait_for("error").error
    assert "can't start new thread" in str(error)
    retry = d.events.wait_for("reconnecting")
    assert retry.attempt == 1
    rig.clock.advance(retry.delay)
    rig.dialing.next().accept()
    d.events.wait_for("open")
    assert d.io_thread() is not None and d.io_thread().is_alive()  # type: ignore[union-attr]


def test_a_reconnect_policy_that_raises_costs_a_report_and_the_default_delay(rig: Rig) -> None:
    def policy(attempt: int, elapsed: float, reason: object) -> float:
        raise ZeroDivisionError("policy bug")

    d = rig.client(reconnect=Reconnect(base_delay=1.0, policy=policy))
    d.client.connect()
    rig.dialing.next().fail(ConnectionRefusedError(111, "refused"))
    retry = d.events.wait_for("reconnecting")
    assert retry.delay == 2.0  # the default delay (the cap of attempt 1)
    assert any("policy bug" in repr(e.error.__cause__) for e in d.events.of("error"))
    rig.clock.advance(retry.delay)
    rig.dialing.next().accept()
    d.events.wait_for("open")


def test_a_headers_callable_that_raises_fails_the_attempt_not_the_loop(rig: Rig) -> None:
    calls: List[int] = []

    def headers() -> dict:
        calls.append(1)
        if len(calls) == 1:
            raise KeyError("no token in the environment")
        return {"X-Try": str(len(calls))}

    d = rig.client(headers=headers, reconnect=Reconnect(base_delay=1.0))
    d.client.connect()
    retry = d.events.wait_for("reconnecting")
    assert isinstance(retry.cause, KeyError)
    assert rig.dialing.count == 0  # it failed before the network part
    rig.clock.advance(retry.delay)
    rig.dialing.next().accept()
    d.events.wait_for("open")
    assert len(calls) == 2


def test_a_command_that_raises_costs_one_connection_and_later_commands_are_answered(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    command = Router.command
    failures = [RuntimeError("bug in a subscription command")]

    def failing(self: Router, c: Any, session: Any) -> None:
        if failures:
            raise failures.pop()
        command(self, c, session)

    d = rig.client(reconnect=Reconnect(base_delay=1.0))
    server = rig.connect(d)
    monkeypatch.setattr(Router, "command", failing)
    sub = d.client.subscribe("news")
    d.sync()  # a later command is answered
    assert "bug in a subscription command" in str(d.events.wait_for("error").error)
    assert not sub.active  # the refused subscription was closed, not left hanging
    with pytest.raises(ClientClosed):
        sub.get(timeout=0)
    assert server.read_until_eof() == []
    rig.clock.advance(d.events.wait_for("reconnecting").delay)
    rig.dialing.next().accept()
    d.events.wait_for("open", 2)


def test_a_timer_step_that_raises_costs_one_attempt_not_the_reconnecting(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Lifecycle.on_reconnect_timer
    failures = [RuntimeError("bug in a timer")]

    def on_reconnect_timer(self: Lifecycle) -> None:
        if failures:
            raise failures.pop()
        real(self)

    monkeypatch.setattr(Lifecycle, "on_reconnect_timer", on_reconnect_timer)
    d = rig.client(reconnect=Reconnect(base_delay=1.0))
    d.client.connect()
    rig.dialing.next().fail(ConnectionRefusedError(111, "refused"))
    rig.clock.advance(d.events.wait_for("reconnecting").delay)
    assert "bug in a timer" in str(d.events.wait_for("error", 2).error)
    # The next attempt comes after a backoff delay, as after any failed attempt.
    for _ in range(10):
        d.sync()
        if rig.dialing.count > 1:
            break
        rig.clock.advance(60.0)
    assert rig.dialing.count == 2, f"no attempt after the failed step: {d.client.state}"


class Outcome:
    """What a blocking call on another thread returned or raised."""

    def __init__(self, call: Callable[[], Any]) -> None:
        self.error: Optional[BaseException] = None
        self.result: Any = None
        self.done = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(call,), daemon=True)
        self._thread.start()

    def _run(self, call: Callable[[], Any]) -> None:
        try:
            self.result = call()
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def returned(self) -> Any:
        assert self.done.wait(WAIT), "still blocked"
        self._thread.join(WAIT)
        assert self.error is None, self.error
        return self.result

    def raised(self) -> BaseException:
        assert self.done.wait(WAIT), "still blocked"
        self._thread.join(WAIT)
        assert self.error is not None
        return self.error


def chain(error: Optional[BaseException]) -> List[BaseException]:
    out = []
    while error is not None:
        out.append(error)
        error = error.__cause__
    return out


def test_if_the_loop_itself_dies_every_waiter_is_released_with_the_reason(
    rig: Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    d = rig.client(protocol="tether", connect_timeout=30.0)
    d.client.connect()
    rig.dialing.next()  # connecting, never answered
    delivery = d.client.send("queued")
    sub = d.client.subscribe("news")
    waiting_open = Outcome(lambda: d.client.wait_open(timeout=WAIT))
    getting = Outcome(lambda: sub.get(timeout=WAIT))
    flushing = Outcome(lambda: d.client.flush(timeout=WAIT))
    d.wait_handled(cmd.Flush)
    wait = Poller.wait

    def broken_wait(self: Poller, timeout: Optional[float]) -> List[int]:
        monkeypatch.setattr(Poller, "wait", wait)
        raise RuntimeError("the selector broke")  # outside any step: a loop bug

    monkeypatch.setattr(Poller, "wait", broken_wait)
    rig.clock.advance(0.0)  # wake the loop into it
    d.events.wait_for("state_change", where=lambda e: e.current == "closed")
    for error in (getting.raised(), delivery.exception(timeout=WAIT)):
        assert isinstance(error, ClientClosed), error
    assert flushing.returned() is False  # released, and not everything went out
    # wait_open() too is released with ClientClosed, the crash chained (DESIGN §4).
    opening = waiting_open.raised()
    assert isinstance(opening, ClientClosed), opening
    assert any("the selector broke" in str(e) for e in chain(opening)), chain(opening)
    causes = chain(delivery.exception(timeout=0))
    assert any("the selector broke" in str(e) for e in causes), causes
    assert any("I/O loop crashed" in str(e.error) for e in d.events.of("error"))
    io_thread = d.io_thread()
    assert io_thread is not None
    io_thread.join(WAIT)
    assert not io_thread.is_alive()
    with pytest.raises(ClientClosed):
        d.client.send("after the end")
