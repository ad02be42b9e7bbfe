"""The ``tether-sync`` command line: ``serve``, ``demo`` and ``connect``.

Each sub-command imports what it needs only when it runs, so that the plain
client keeps websocket-client as its only dependency.
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tether-sync", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the bundled Tether-protocol server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument(
        "--require-auth", action="store_true", help="refuse data until a valid token was sent"
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="log every connection")

    demo = sub.add_parser(
        "demo",
        help="run the bundled server and a web control panel driving a real client",
        description="Start the bundled server, one TetherClient and a web control panel "
        "in one process; open the printed URL. Ctrl-C stops everything.",
    )
    demo.add_argument("--host", default="127.0.0.1", help="interface for both servers")
    demo.add_argument("--port", type=int, default=8000, help="the panel's HTTP port (0: any)")
    demo.add_argument(
        "--server-port", type=int, default=0, help="the WebSocket server's port (0: any)"
    )
    demo.add_argument("-v", "--verbose", action="store_true", help="log connections and requests")

    from .connect_cli import add_arguments

    connect = sub.add_parser(
        "connect",
        help="interactive client: send stdin lines, print what arrives",
        description="Connect to URL, send every line read from stdin (queued while "
        "offline), print inbound messages with their channel. Status goes to stderr. "
        "EOF on stdin flushes and exits.",
    )
    add_arguments(connect)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``tether-sync`` console script."""
    args = _build_parser().parse_args(argv)
    if args.command == "serve":
        from .server import serve_main

        return serve_main(
            host=args.host, port=args.port, require_auth=args.require_auth, verbose=args.verbose
        )
    if args.command == "demo":
        try:
            from .demo import demo_main
        except ImportError as exc:
            print(
                f"tether-sync demo needs the demo extra (pip install 'tether-sync[demo]'): {exc}",
                file=sys.stderr,
            )
            return 1
        return demo_main(
            host=args.host, port=args.port, server_port=args.server_port, verbose=args.verbose
        )
    if args.command == "connect":
        from .connect_cli import connect_main

        return connect_main(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
