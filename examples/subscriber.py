"""Subscribe to a channel and print every payload that arrives, one JSON line each.

Start the bundled server in one terminal::

    tether-sync serve                      # listens on ws://127.0.0.1:8765/

then, in another::

    python examples/subscriber.py ws://127.0.0.1:8765/ --channel news --count 1 --send hello

The bundled server echoes each client's own messages back and fans out what its
owner broadcasts (``TetherServer.broadcast("news", ...)``); ``--send`` publishes a
payload on the channel once subscribed, so its echo shows up here. A full Tether
server delivers what other clients publish on the channel.

The script stops after ``--count`` payloads (exit 0) or after ``--timeout``
seconds (exit 0 without ``--count``; 1 if fewer than ``--count`` arrived).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import List, Optional

from tether_sync import TetherClient, TetherError


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url", help="ws:// URL of a Tether server")
    parser.add_argument("--channel", default="news", help="channel (default news)")
    parser.add_argument("--count", type=int, default=None, help="stop after this many payloads")
    parser.add_argument("--timeout", type=float, default=30.0, help="stop after this many seconds")
    parser.add_argument(
        "--send", action="append", default=[], metavar="TEXT", help="publish TEXT once subscribed"
    )
    args = parser.parse_args(argv)

    deadline = time.monotonic() + args.timeout
    received = 0
    with TetherClient(args.url) as client:
        # Without a callback the subscription is a blocking queue. It is announced
        # now and again after every reconnect.
        inbox = client.subscribe(args.channel)
        try:
            client.wait_open(timeout=args.timeout)
        except TetherError:  # ConnectTimeout, or ClientClosed once the retries ran out
            print(f"could not connect to {args.url} within {args.timeout}s", file=sys.stderr)
            return 1
        print(f"subscribed to {args.channel!r} on {args.url}", file=sys.stderr, flush=True)
        for text in args.send:
            client.send(text, channel=args.channel)
        while args.count is None or received < args.count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                payload = inbox.get(timeout=remaining)
            except TimeoutError:
                break
            received += 1
            print(json.dumps(payload), flush=True)
    if args.count is not None and received < args.count:
        print(f"timed out: {received} of {args.count} payload(s)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
