"""Reliable delivery in a FastAPI app (docs/guides/own-server.rst, README).

Run: ``uvicorn own_server_fastapi:app --app-dir examples --port 8000`` (``pip install
fastapi uvicorn``); clients connect to ``ws://127.0.0.1:8000/ws``.
"""

from fastapi import FastAPI, WebSocket

from tether_sync.server import Hub

# Called once per (session, seq), before the client's ack; MemoryStore by default,
# Hub(RedisStore("redis://..."), ...) to run several nodes as one service.
hub = Hub(on_message=lambda msg: print(msg.channel, msg.payload, msg.seq, flush=True))
app = FastAPI()


@app.websocket("/ws")
async def tether(websocket: WebSocket) -> None:
    await hub.serve_asgi(websocket)


@app.post("/publish/{channel}")
def publish(channel: str, text: str) -> int:  # to every subscriber, resumable
    return hub.publish(channel, text)
