"""AsyncioDispatcher: callbacks run in a running asyncio loop; a closed loop falls back."""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, List, Tuple

import pytest

from tether_sync import TetherClient
from tether_sync.dispatchers import AsyncioDispatcher

GONE = "the target is gone"


def _gone_warnings(caplog: pytest.LogCaptureFixture) -> List[str]:
    return [r.getMessage() for r in caplog.records if GONE in r.getMessage()]


def test_callbacks_run_in_the_running_loop_in_order(tether_server: Any) -> None:
    async def main() -> Tuple[List[Any], List[bool]]:
        loop = asyncio.get_running_loop()
        me = threading.current_thread()
        inbox: asyncio.Queue[Any] = asyncio.Queue()
        on_loop: List[bool] = []

        def on_message(payload: Any) -> None:
            on_loop.append(threading.current_thread() is me)
            inbox.put_nowait(payload)  # not thread-safe: only correct in the loop

        client = TetherClient(tether_server.url, dispatcher=AsyncioDispatcher())
        opened = asyncio.Event()
        client.on("open", lambda _event: opened.set())
        client.subscribe("aio", on_message)
        client.connect()
        await asyncio.wait_for(opened.wait(), 10)
        for n in range(300):
            client.send({"n": n}, channel="aio")
        got = [await asyncio.wait_for(inbox.get(), 10) for _ in range(300)]
        assert loop.is_running()
        await asyncio.to_thread(client.close, 5)
        return got, on_loop

    got, on_loop = asyncio.run(main())
    assert got == [{"n": n} for n in range(300)]
    assert on_loop and all(on_loop)


def test_a_closed_loop_falls_back_once_and_the_client_keeps_working(
    tether_server: Any, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="tether_sync")
    loop = asyncio.new_event_loop()
    loop_thread = threading.Thread(target=loop.run_forever, name="app-loop", daemon=True)
    loop_thread.start()
    dispatcher = AsyncioDispatcher(loop)
    lock = threading.Lock()
    seen: List[Tuple[int, str]] = []
    first_half = threading.Event()
    all_in = threading.Event()

    def on_message(payload: Any) -> None:
        with lock:
            seen.append((payload["n"], threading.current_thread().name))
            if len(seen) == 20:
                first_half.set()
            if len(seen) == 40:
                all_in.set()

    client = TetherClient(tether_server.url, dispatcher=dispatcher)
    try:
        client.subscribe("aio", on_message)
        client.connect(wait=True, timeout=10)
        for n in range(20):
            client.send({"n": n}, channel="aio")
        assert first_half.wait(10)
        # The app's loop goes away mid-stream.
        loop.call_soon_threadsafe(loop.stop)
        loop_thread.join(5)
        loop.close()
        for n in range(20, 40):
            client.send({"n": n}, channel="aio")
        assert all_in.wait(10), f"only {len(seen)} callbacks ran"
        # The client itself is unaffected: a round trip still resolves.
        client.send({"n": 99}, channel="other").result(5)  # raises if it failed
        assert client.flush(5)
    finally:
        assert client.close(5)
    assert [n for n, _ in seen] == list(range(40))
    assert {name for _, name in seen[:20]} == {"app-loop"}
    assert {name for _, name in seen[20:]} == {"tether-asyncio-fallback"}
    assert dispatcher.is_gone
    assert len(_gone_warnings(caplog)) == 1, _gone_warnings(caplog)
    assert "closed" in _gone_warnings(caplog)[0]


def test_a_dispatcher_never_raises_into_its_caller() -> None:
    loop = asyncio.new_event_loop()
    loop.close()
    dispatcher = AsyncioDispatcher(loop)
    done = threading.Event()

    def boom() -> None:
        raise ValueError("a task that raises")

    dispatcher(boom)  # neither the closed loop nor the task's error reach the caller
    dispatcher(done.set)
    assert done.wait(5)
