"""Bridge tether_sync into an asyncio program: callbacks run in the event loop.

Start the bundled server in one terminal::

    tether-sync serve                      # listens on ws://127.0.0.1:8765/

then, in another::

    python examples/asyncio_bridge.py ws://127.0.0.1:8765/ --count 5

``AsyncioDispatcher(loop)`` makes every callback of the client run in the loop
(``loop.call_soon_threadsafe``), so a subscription callback can feed an
``asyncio.Queue`` directly and coroutines ``await`` messages. ``send()`` is
cheap and never waits for the link, so it is called from coroutines as is
(only a full queue while open makes it wait for room: hand a flood of sends to
``asyncio.to_thread``); :func:`delivered` turns its ``Delivery`` into an
awaitable. The blocking ``wait_open()`` and ``close()`` go to a thread.

The script sends ``--count`` messages on ``--channel``, awaits their echoes from
the bundled server, prints each, and exits 0 (1 on timeout).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import threading
from typing import Any, List, Optional

from tether_sync import Delivery, TetherClient
from tether_sync.dispatchers import AsyncioDispatcher


def delivered(delivery: Delivery) -> asyncio.Future[Any]:
    """An asyncio future, in the running loop, done when ``delivery`` is."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[Any] = loop.create_future()

    def settle(_: Any) -> None:
        if future.done():  # cancelled by the awaiting side
            return
        error = delivery.exception()
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(None)  # Delivery.result() returns None once done

    # add_done_callback runs on whatever thread resolved the delivery: hop into the loop.
    delivery.add_done_callback(lambda d: loop.call_soon_threadsafe(settle, d))
    return future


async def run(url: str, channel: str, count: int, timeout: float) -> int:
    loop = asyncio.get_running_loop()
    loop_thread = threading.current_thread()
    inbox: asyncio.Queue[Any] = asyncio.Queue()
    in_loop = 0

    def on_message(payload: Any) -> None:
        nonlocal in_loop
        in_loop += threading.current_thread() is loop_thread
        inbox.put_nowait(payload)  # safe: this runs in the loop

    client = TetherClient(url, dispatcher=AsyncioDispatcher(loop))
    client.subscribe(channel, on_message)
    client.connect()
    try:
        await asyncio.to_thread(client.wait_open, timeout)
        await asyncio.wait_for(delivered(client.send({"n": 0}, channel=channel)), timeout)
        for n in range(1, count):
            client.send({"n": n}, channel=channel)
        for _ in range(count):
            payload = await asyncio.wait_for(inbox.get(), timeout)
            print(json.dumps(payload, sort_keys=True), flush=True)
    except (asyncio.TimeoutError, TimeoutError):
        print(f"timed out after {timeout}s", file=sys.stderr)
        return 1
    finally:
        await asyncio.to_thread(client.close, 5.0)
    print(f"callbacks in the event loop: {in_loop} of {count}", flush=True)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="ws:// URL of a Tether server")
    parser.add_argument("--channel", default="bridge", help="channel (default bridge)")
    parser.add_argument("--count", type=int, default=5, help="messages (default 5)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per step")
    args = parser.parse_args(argv)
    return asyncio.run(run(args.url, args.channel, args.count, args.timeout))


if __name__ == "__main__":
    sys.exit(main())
