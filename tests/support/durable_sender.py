"""A client process with a durable outbox: ``python durable_sender.py URL FILE START COUNT``.

Sends the numbers START..COUNT-1 on channel "d" and prints each one once
``send()`` returned (the message is committed to FILE), then closes. The test
kills it with SIGKILL at random moments and starts it again with the same file.
"""

from __future__ import annotations

import sys

from tether_sync import TetherClient


def main(url: str, path: str, start: int, count: int) -> int:
    client = TetherClient(
        url, queue={"path": path, "overflow": "block"}, reconnect={"base_delay": 0.05}
    )
    # A send() that committed just before the kill was never printed: the file
    # kept it and resends it, so start after it (white-box: what was restored).
    restored = [d.payload for d in client._loop.unfinished() if isinstance(d.payload, int)]
    start = max([start, *(n + 1 for n in restored)])
    client.connect()
    for n in range(start, count):
        client.send(n, channel="d")
        print(n, flush=True)
    ok = client.close(timeout=30)
    print("closed", ok, flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
