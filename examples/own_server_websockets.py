"""Reliable delivery on your own python-websockets server (docs/guides/own-server.rst).

Run: ``python examples/own_server_websockets.py [PORT] [redis://127.0.0.1:6379/0]``.
"""

import asyncio
import sys

from websockets.asyncio.server import serve

from tether_sync.server import Hub, MemoryStore, Message


def handle(msg: Message) -> None:  # once per (session, seq), before the ack
    print(f"{msg.channel}: {msg.payload!r} (session {msg.session}, seq {msg.seq})", flush=True)


port = int(sys.argv[1]) if len(sys.argv) > 1 else 8765
if len(sys.argv) > 2:  # several nodes on one Redis are one service
    from tether_sync.server import RedisStore

    hub = Hub(store=RedisStore(sys.argv[2]), on_message=handle)
else:
    hub = Hub(store=MemoryStore(), on_message=handle)


async def main() -> None:
    async with serve(hub.serve_websockets, "127.0.0.1", port) as server:
        print(f"listening on ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/", flush=True)
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
