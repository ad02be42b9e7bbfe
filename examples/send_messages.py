"""Send N messages to a Tether server, wait until they are on the wire, and exit.

Start the bundled server in one terminal::

    tether-sync serve                      # listens on ws://127.0.0.1:8765/

then, in another::

    python examples/send_messages.py ws://127.0.0.1:8765/ --count 10 --channel chat

Each message is ``{"n": <index>, "text": "message <index>"}`` on the channel. The
script exits 0 once every message was handed to the socket, 1 if that did not
happen within ``--timeout`` seconds (the server is unreachable, for instance).
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from tether_sync import TetherClient, TetherError


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="ws:// URL of a Tether server")
    parser.add_argument("--count", type=int, default=10, help="messages to send (default 10)")
    parser.add_argument("--channel", default="chat", help="channel (default chat)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds allowed (default 10)")
    args = parser.parse_args(argv)

    # Closing (the with block's end) drains the queue and closes with 1000.
    with TetherClient(args.url, reconnect={"max_attempts": 3}) as client:
        try:
            client.wait_open(timeout=args.timeout)
        except TetherError:  # ConnectTimeout, or ClientClosed once the retries ran out
            print(f"could not connect to {args.url} within {args.timeout}s", file=sys.stderr)
            return 1
        for n in range(args.count):
            # send() never blocks on the network: it queues, and the I/O thread writes.
            client.send({"n": n, "text": f"message {n}"}, channel=args.channel)
        if not client.flush(timeout=args.timeout):
            print(f"{client.queue_depth} message(s) still queued", file=sys.stderr)
            return 1
    print(f"sent {args.count} message(s) on channel {args.channel!r}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
