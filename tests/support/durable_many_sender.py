"""``durable_sender.py`` with ``send_many()``: ``durable_many_sender.py URL FILE START COUNT``.

Sends the numbers START..COUNT-1 on channel "d" in calls of ``send_many()``
of up to :data:`BATCH` and prints the last number of each call once it
returned (the call's messages are committed to FILE, one batch row each),
then closes. The test kills it with SIGKILL at random moments and starts it
again with the same file.
"""

from __future__ import annotations

import sys

from tether_sync import TetherClient

BATCH = 100


def main(url: str, path: str, start: int, count: int) -> int:
    client = TetherClient(
        url, queue={"path": path, "overflow": "block"}, reconnect={"base_delay": 0.05}
    )
    # A call that committed just before the kill was never printed: the file
    # kept it and resends it, so start after it (white-box: what was restored).
    restored = [d.payload for d in client._loop.unfinished() if isinstance(d.payload, int)]
    start = max([start, *(n + 1 for n in restored)])
    client.connect()
    for n in range(start, count, BATCH):
        numbers = list(range(n, min(n + BATCH, count)))
        client.send_many(numbers, channel="d")
        print(numbers[-1], flush=True)
    ok = client.close(timeout=30)
    print("closed", ok, flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])))
