"""Reliable delivery on your own python-websockets server (docs/guides/own-server.rst, README).

Run: ``python examples/own_server_websockets.py [PORT]``.
"""

import asyncio
import sys

from websockets.asyncio.server import serve

from tether_sync.server import Hub

hub = Hub(on_message=lambda msg: print(msg.channel, msg.payload, msg.seq, flush=True))


async def main(port: int) -> None:
    async with serve(hub.serve_websockets, "127.0.0.1", port) as server:
        print(f"listening on ws://127.0.0.1:{server.sockets[0].getsockname()[1]}/", flush=True)
        await server.serve_forever()


asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 8765))
