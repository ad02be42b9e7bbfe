"""Reliable delivery in a FastAPI app (docs/guides/own-server.rst).

Run: ``python examples/own_server_fastapi.py [PORT]`` (or ``uvicorn own_server_fastapi:app``).
"""

import sys
from typing import Any, Dict

from fastapi import FastAPI, WebSocket

from tether_sync.server import Hub, Message


def handle(msg: Message) -> None:  # once per (session, seq), before the ack
    print(f"{msg.channel}: {msg.payload!r} (session {msg.session}, seq {msg.seq})", flush=True)


hub = Hub(on_message=handle)  # default MemoryStore; RedisStore(url) for several nodes
app = FastAPI()


@app.websocket("/ws")
async def tether(websocket: WebSocket) -> None:
    await hub.serve_asgi(websocket)


@app.post("/publish/{channel}")
def publish(channel: str, payload: Dict[str, Any]) -> Dict[str, int]:  # to all, with resume
    return {"local_subscribers": hub.publish(channel, payload)}


if __name__ == "__main__":
    import uvicorn

    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    print(f"listening on ws://127.0.0.1:{port}/ws", flush=True)
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
