"""The ``tether-sync`` command line: ``serve``, ``demo`` and ``connect``.

Each sub-command imports what it needs only when it runs, so that the plain
client keeps websocket-client as its only dependency.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any, List, Optional

DESCRIPTION = (
    "tether_sync's command line: run the bundled server (serve), the control panel "
    "demo (demo), or an interactive client (connect). 'tether-sync COMMAND --help' "
    "shows each command's options."
)

EXTRAS = {"websockets": "server", "flask": "demo", "werkzeug": "demo", "redis": "redis"}
"""Optional dependency (top-level module) → the extra that installs it."""


class HelpFormatter(argparse.HelpFormatter):
    """Help in plain text: every option shows its default, and no reST ````markup````."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = (action.help or "").replace("``", "")
        default = action.default
        if (
            "%(default)" not in text
            and "default" not in text
            and action.option_strings
            and not any(default is nothing for nothing in (None, False, True, argparse.SUPPRESS))
            and default != []
            and action.nargs != 0
        ):
            text += " (default: %(default)s)"
        return text

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        return super()._fill_text(text.replace("``", ""), width, indent)


def port(text: str) -> int:
    """argparse type: a TCP port, 0 (any free port) to 65535."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535, got {text!r}")
    return value


def _build_parser() -> argparse.ArgumentParser:
    from ..version import __version__

    parser = argparse.ArgumentParser(
        prog="tether-sync", description=DESCRIPTION, formatter_class=HelpFormatter
    )
    parser.add_argument("-V", "--version", action="version", version=f"tether-sync {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="run the bundled Tether-protocol server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument(
        "--require-auth", action="store_true", help="refuse data until a valid token was sent"
    )
    serve.add_argument("-v", "--verbose", action="store_true", help="log every connection")
    serve.add_argument(
        "--broadcast",
        action="store_true",
        help="publish what a client sends on a channel to every subscriber of it "
        "(default: echo it back to the sender)",
    )
    serve.add_argument(
        "--no-extensions",
        dest="extensions",
        action="store_false",
        help="speak only the reference protocol: ignore tether:hello, seq and resume",
    )
    serve.add_argument(
        "--session-ttl",
        type=float,
        default=600.0,
        metavar="SECONDS",
        help="keep a session's highest seq this long after its last connection (default 600)",
    )
    serve.add_argument(
        "--history-size",
        type=int,
        default=1000,
        metavar="N",
        help="published messages kept per channel for resume (default 1000)",
    )
    serve.add_argument(
        "--history-max-age",
        type=float,
        default=300.0,
        metavar="SECONDS",
        help="how long a published message stays in the history (default 300)",
    )
    serve.add_argument(
        "--record",
        metavar="PATH",
        help="append every accepted data message to PATH as a JSON line, written before its ack",
    )
    serve.add_argument(
        "--store",
        metavar="URL",
        help="keep sessions and channel history in Redis (redis://HOST:PORT/DB): "
        "nodes on one Redis are one service (default: in this process)",
    )
    serve.add_argument(
        "--node",
        metavar="NAME",
        help="this node's name on a shared store, stable across restarts "
        "(default: from --record, else host and pid)",
    )
    serve.add_argument(
        "--compression",
        choices=("none", "deflate"),
        default="none",
        help="permessage-deflate for clients that offer it (default none)",
    )

    demo = sub.add_parser(
        "demo",
        help="run the bundled server and a web control panel driving a real client",
        description="Start the bundled server, one TetherClient and a web control panel "
        "in one process; open the printed URL. Ctrl-C stops everything.",
    )
    demo.add_argument("--host", default="127.0.0.1", help="interface for both servers")
    demo.add_argument("--port", type=port, default=8000, help="the panel's HTTP port (0: any)")
    demo.add_argument(
        "--server-port", type=port, default=0, help="the WebSocket server's port (0: any)"
    )
    demo.add_argument("-v", "--verbose", action="store_true", help="log connections and requests")

    from .connect import add_arguments

    connect = sub.add_parser(
        "connect",
        help="interactive client: send stdin lines, print what arrives",
        description="Connect to URL, send every line read from stdin (queued while "
        "offline), print inbound messages with their channel. Status goes to stderr. "
        "At EOF it waits (--wait) until every line was delivered; the exit status is 1 "
        "if any line was not, and the summary says how many. A first connection that "
        "fails exits 1 at once with the reason (--retry keeps trying).",
    )
    add_arguments(connect)
    for command in sub.choices.values():
        command.formatter_class = HelpFormatter
        for action in command._actions:  # an option without help still shows its default
            if action.help is None and action.option_strings and action.nargs != 0:
                action.help = "(default: %(default)s)"
            if action.dest.endswith("port") and action.type is int:
                action.type = port  # a bad port is a usage error, not a traceback
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    """Entry point of the ``tether-sync`` console script."""
    args = _build_parser().parse_args(argv)
    try:
        return _run(args)
    except ModuleNotFoundError as exc:
        top = (exc.name or "").partition(".")[0]
        extra = EXTRAS.get(top)
        if extra is None:
            raise
        print(
            f"tether-sync {args.command} needs the {top} package, from the {extra} extra: "
            f"pip install 'tether-sync[{extra}]'",
            file=sys.stderr,
        )
        return 1


def _run(args: Any) -> int:
    if args.command == "serve":
        from ..server import serve_main

        return serve_main(
            host=args.host,
            port=args.port,
            require_auth=args.require_auth,
            verbose=args.verbose,
            extensions=args.extensions,
            broadcast=args.broadcast,
            session_ttl=args.session_ttl,
            history_size=args.history_size,
            history_max_age=args.history_max_age,
            record_path=args.record,
            compression=None if args.compression == "none" else args.compression,
            store=args.store,
            node=args.node,
        )
    if args.command == "demo":
        try:
            from ..demo import demo_main
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
        from .connect import connect_main

        return connect_main(args)
    return 2  # pragma: no cover - argparse rejects unknown commands


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
