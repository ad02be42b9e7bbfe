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
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``tether-sync`` console script."""
    args = _build_parser().parse_args(argv)
    if args.command == "serve":
        from .server import serve_main

        return serve_main(
            host=args.host, port=args.port, require_auth=args.require_auth, verbose=args.verbose
        )
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
