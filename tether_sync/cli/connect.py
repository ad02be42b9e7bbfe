"""``tether-sync connect URL``: an interactive client in the spirit of wscat.

Every line read from stdin is sent (queued while the link is down, replayed in
order after the reconnect); every inbound message is printed on stdout with its
channel; connection news (open, close, reconnect attempts, errors) goes to
stderr. With ``--json`` stdout carries one JSON object per line instead, for
piping: ``{"type": "message", "channel": ..., "payload": ...}`` and the same
news as ``{"type": "open" | "close" | "reconnecting" | "auth" | "error", ...}``.

With protocol ``tether`` (the default) a line that parses as JSON is sent as
that value and any other line as a string (``--text`` sends every line as a
string). ``--raw`` speaks plain WebSocket: each line is one text frame.

Piped input is never dropped: the outbound queue's policy is ``block``, so
reading stdin waits while the queue is full, and every line's ``Delivery`` is
followed to its end. EOF waits up to ``--wait`` seconds for every line to be
delivered and for the replies to stop (0.25 s without an inbound message),
optionally keeps printing for ``--linger`` seconds, closes, and exits
0 when every line was delivered; 1 when any line was not (the summary on stderr
says how many: ``N of M lines not delivered``), when the input stalled for
``--wait`` seconds, or when the client gave up; 2 for a usage error; 130 on Ctrl-C.

Like wscat and websocat, a first connection that cannot succeed (refused, no such
host, an HTTP answer, a refused subprotocol or TLS certificate, a failing
``--token-cmd``) ends the command at once with exit status 1 and one line that
says why; ``--retry`` keeps trying instead. Once a connection was open, a lost
link is always retried (``--max-attempts`` bounds it).

What this module owns, top to bottom: the command's options (:func:`add_arguments`
and the argparse types that validate each value, so that a bad value is a usage
error, exit 2, before anything connects); :func:`token_command` (``--token-cmd``);
the output (:class:`_Printer`: messages on stdout, news on stderr or as JSON);
the count of delivered lines (:class:`_Ledger`); and the run itself
(:class:`ConnectCommand`: build the client, read stdin, wait, shut down). The
parser and the other sub-commands are in ``cli/__init__.py``. The library is
imported when the command runs, not when the parser is built.
"""

from __future__ import annotations

import argparse
import base64
import collections
import json
import logging
import os
import subprocess
import sys
import threading
import time
from typing import IO, TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Set, Tuple
from urllib.parse import unquote, urlsplit

if TYPE_CHECKING:
    from ..client import TetherClient
    from ..delivery import Delivery
    from ..events import (
        AuthRefreshedEvent,
        CloseEvent,
        ErrorEvent,
        MessageEvent,
        OpenEvent,
        QueuedEvent,
        ReconnectingEvent,
        StateChangeEvent,
    )

__all__ = ["ConnectCommand", "add_arguments", "connect_main", "token_command"]

QUEUE = {"max_size": 1000, "overflow": "block"}
"""The outbound queue of ``connect``: lossless for piped input (``send()`` waits for room)."""

CERT_NONE = 0
"""``ssl.CERT_NONE`` (only loop.py and transport.py import ssl: tests/test_layers.py)."""

QUIET = 0.25
"""Seconds without an inbound message that end the wait for replies after EOF."""

INSECURE_WARNING = (
    "WARNING: --insecure: the server's TLS certificate and host name are NOT checked. "
    "Anyone on the network path can read and change this connection."
)


# ---------------------------------------------------------------------- argument types


def ws_url(text: str) -> str:
    """argparse type: a ``ws://`` or ``wss://`` URL with a host and a valid port.

    The error shows the URL with its password and secret query values
    redacted (argparse prints it, and it may end up in a CI log).
    """
    from ..redact import redact_url

    shown = repr(redact_url(text))
    try:
        parts = urlsplit(text)
        port = parts.port  # raises ValueError when out of range or not a number
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid URL {shown}: {exc}") from None
    if parts.scheme not in ("ws", "wss"):
        raise argparse.ArgumentTypeError(f"invalid URL {shown}: the scheme must be ws:// or wss://")
    if not parts.hostname:
        raise argparse.ArgumentTypeError(f"invalid URL {shown}: no host")
    if port == 0:
        raise argparse.ArgumentTypeError(f"invalid URL {shown}: port 0")
    return text


def header(text: str) -> Tuple[str, str]:
    """argparse type: ``"Name: value"`` → ``(name, value)``.

    The error never shows the value (it is often a credential): only the name,
    where there is one.
    """
    name, sep, value = text.partition(":")
    name = name.strip()
    if not sep or not name or any(c in name for c in " \t\r\n") or "\n" in value or "\r" in value:
        shown = f" {name!r}" if sep and name and not any(c in name for c in " \t\r\n") else ""
        raise argparse.ArgumentTypeError(f"invalid header{shown}: expected 'Name: value'")
    return name, value.strip()


def seconds(text: str) -> float:
    """argparse type: a number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type: an integer of 1 or more."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return value


def positive_seconds(text: str) -> float:
    """argparse type: a number of seconds above 0."""
    value = seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return value


PROXY_SCHEMES = ("http", "socks4", "socks4a", "socks5", "socks5h")


def proxy_url(text: str) -> Dict[str, Any]:
    """argparse type: a proxy URL → websocket-client's proxy options."""
    try:
        parts = urlsplit(text if "://" in text else f"http://{text}")
        port = parts.port
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"invalid proxy {text!r}: {exc}") from None
    if parts.scheme not in PROXY_SCHEMES or not parts.hostname:
        raise argparse.ArgumentTypeError(
            f"invalid proxy {text!r}: expected http://host:port or socks5://host:port"
        )
    options: Dict[str, Any] = {
        "http_proxy_host": parts.hostname,
        "http_proxy_port": port or (1080 if parts.scheme.startswith("socks") else 8080),
        "proxy_type": parts.scheme,
    }
    if parts.username is not None:
        options["http_proxy_auth"] = (unquote(parts.username), unquote(parts.password or ""))
    return options


def readable_file(text: str) -> str:
    """argparse type: the path of a file that exists and can be read."""
    if not os.path.isfile(text) or not os.access(text, os.R_OK):
        raise argparse.ArgumentTypeError(f"no readable file {text!r}")
    return text


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``connect`` options to ``parser``.

    Option names follow wscat and websocat where they have one: ``-H/--header``,
    ``-s/--subprotocol``, ``--ca`` (wscat), ``-k/--insecure`` (websocat, curl),
    ``-w/--wait``, ``--no-color``, ``-V/--version``, ``-v``, ``-q``.
    """
    from ..version import __version__

    parser.add_argument("url", type=ws_url, help="ws:// or wss:// URL")
    parser.add_argument(
        "-c", "--channel", default="default", help="channel to send on and subscribe to"
    )
    parser.add_argument(
        "--raw", action="store_true", help="plain WebSocket: lines are text frames, no envelope"
    )
    parser.add_argument(
        "--token-cmd",
        metavar="CMD",
        help="shell command that prints a token; run at every connect and before expiry",
    )
    parser.add_argument(
        "--json", action="store_true", dest="json_output", help="one JSON object per line on stdout"
    )
    parser.add_argument(
        "--text", action="store_true", help="send every line as a string, even valid JSON"
    )
    parser.add_argument(
        "-H",
        "--header",
        type=header,
        action="append",
        default=[],
        dest="headers",
        metavar="'NAME: VALUE'",
        help="extra handshake header; repeat for more",
    )
    parser.add_argument(
        "-s",
        "--subprotocol",
        action="append",
        default=[],
        dest="subprotocols",
        metavar="NAME",
        help="WebSocket subprotocol to offer; repeat for more",
    )
    parser.add_argument(
        "--compression",
        choices=("deflate", "none"),
        default="none",
        help="permessage-deflate (RFC 7692), if the server agrees",
    )
    parser.add_argument(
        "--ca-file",
        "--ca",
        type=readable_file,
        metavar="PEM",
        help="trust the CA certificates in this PEM file (wss://)",
    )
    parser.add_argument(
        "-k",
        "--insecure",
        action="store_true",
        help="do not check the server's TLS certificate or host name (dangerous)",
    )
    parser.add_argument(
        "-w",
        "--wait",
        type=seconds,
        default=30.0,
        metavar="SECONDS",
        help="after EOF, how long to wait for every line to be delivered; also how long "
        "input may stall on a full queue before giving up",
    )
    parser.add_argument(  # the old name of --wait
        "--flush-timeout", type=seconds, dest="wait", help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--linger",
        type=seconds,
        default=0.0,
        metavar="SECONDS",
        help="after the lines were delivered, keep printing inbound messages this long",
    )
    parser.add_argument(
        "--max-attempts",
        type=positive_int,
        default=None,
        metavar="N",
        help="give up after N reconnect attempts in a row (default: never)",
    )
    parser.add_argument(
        "--retry",
        action="store_true",
        help="keep trying when the first connection fails (default: exit 1 at once, as "
        "wscat and websocat do; after a connection was open, it always reconnects)",
    )
    parser.add_argument(
        "--origin", metavar="URL", help="the Origin header of the handshake (wscat -o)"
    )
    parser.add_argument(
        "--proxy",
        type=proxy_url,
        metavar="URL",
        help="connect through this proxy: http://[user:password@]host:port or socks5://host:port "
        "(default: the http_proxy / https_proxy environment)",
    )
    parser.add_argument(
        "--cert", type=readable_file, metavar="PEM", help="client certificate for wss:// (mTLS)"
    )
    parser.add_argument(
        "--key",
        type=readable_file,
        metavar="PEM",
        help="private key of --cert, if it is not in the same file",
    )
    parser.add_argument(
        "--ping-interval",
        type=positive_seconds,
        default=None,
        metavar="SECONDS",
        help="seconds between heartbeat pings (default 15)",
    )
    parser.add_argument(
        "--show-rtt",
        action="store_true",
        help="print the round-trip time of every heartbeat (see --ping-interval)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no status lines on stderr")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log the client's INFO lines on stderr; twice (-vv) for DEBUG",
    )
    parser.add_argument(
        "--no-color",
        action="store_true",
        help="no colours in status lines (they are off anyway when stderr is not a terminal "
        "or NO_COLOR is set)",
    )
    parser.add_argument("-V", "--version", action="version", version=f"tether-sync {__version__}")


def token_command(
    cmd: str, timeout: float = 10.0, on_failure: Optional[Callable[[str], None]] = None
) -> Callable[[], str]:
    """Return a ``get_token`` that runs the shell command ``cmd`` and returns its stdout.

    Args:
        cmd: A shell command that prints the token on stdout.
        timeout: Seconds the command may run.
        on_failure: Called with a one-line description (the exit status and the
            last line of the command's stderr; never its stdout, which may hold a
            token) each time the command fails.

    Raises (from the returned callable):
        AuthError: the command failed, timed out, or printed nothing.
    """
    from ..exceptions import AuthError

    def fail(text: str, cause: Optional[BaseException] = None) -> AuthError:
        if on_failure is not None:
            on_failure(text)
        error = AuthError(f"--token-cmd {text}")
        error.__cause__ = cause
        return error

    def get_token() -> str:
        try:
            proc = subprocess.run(
                cmd, shell=True, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise fail(f"did not finish within {timeout:g}s", exc) from exc
        if proc.returncode != 0:
            lines = proc.stderr.strip().splitlines()
            detail = f": {lines[-1].strip()[:200]}" if lines else " (nothing on stderr)"
            raise fail(f"exited with status {proc.returncode}{detail}")
        token = proc.stdout.strip()
        if not token:
            raise fail("printed no token (exit status 0, empty stdout)")
        return token

    return get_token


_COLORS = {
    "open": "32",  # green
    "auth": "32",
    "delivered": "32",
    "close": "33",  # yellow
    "reconnecting": "33",
    "error": "31",  # red
    "unsent": "31;1",
    "closed": "31;1",
    "stalled": "31;1",
    "warning": "31;1",
    "hint": "36",  # cyan
    "queued": "33",
}


def use_color(stream: IO[str], disabled: bool) -> bool:
    """Colour only on a terminal, unless ``--no-color`` or ``NO_COLOR`` (no-color.org)."""
    if disabled or os.environ.get("NO_COLOR"):
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


class _Printer:
    """Writes messages to stdout and news to stderr (and stdout with ``--json``).

    Called from the client's dispatcher and the main thread; one lock keeps
    lines whole. A closed pipe (``| head``) ends output instead of raising.
    """

    def __init__(
        self,
        out: IO[str],
        err: IO[str],
        json_output: bool,
        quiet: bool,
        color: bool,
        channels: bool = True,
    ) -> None:
        self._channels = channels  # False with --raw: no "[default]" before every line
        self._out = out
        self._err = err
        self._json = json_output
        self._quiet = quiet
        self._color = color
        self._lock = threading.Lock()
        self.broken = threading.Event()

    def _write(self, stream: IO[str], line: str) -> None:
        with self._lock:
            if self.broken.is_set():
                return
            try:
                stream.write(line + "\n")
                stream.flush()
            except (BrokenPipeError, ValueError):  # ValueError: the stream was closed
                self.broken.set()

    def message(self, channel: Optional[str], payload: Any) -> None:
        binary = isinstance(payload, (bytes, bytearray))
        if self._json:
            record: Dict[str, Any] = {"type": "message", "channel": channel}
            if binary:
                record["binary"] = True
                record["payload"] = base64.b64encode(bytes(payload)).decode("ascii")
            else:
                record["payload"] = payload
            self._write(self._out, json.dumps(record, ensure_ascii=False))
            return
        if binary:
            text = f"<binary, {len(payload)} bytes, base64 {base64.b64encode(payload).decode()}>"
        elif isinstance(payload, str):
            text = payload
        else:
            text = json.dumps(payload, ensure_ascii=False)
        prefix = channel is not None and self._channels
        self._write(self._out, f"[{channel}] {text}" if prefix else text)

    def news(self, kind: str, text: str, *, always: bool = False, **fields: Any) -> None:
        """A status line: ``* text`` on stderr (unless quiet), a record on stdout with --json.

        ``always``: shown even with ``--quiet`` (failures the exit status reports).
        """
        if self._json:
            self._write(self._out, json.dumps({"type": kind, **fields}, ensure_ascii=False))
        if self._quiet and not always:
            return
        line = f"* {text}"
        code = _COLORS.get(kind)
        if self._color and code:
            line = f"\x1b[{code}m{line}\x1b[0m"
        self._write(self._err, line)


def _payload(line: str, as_text: bool) -> Any:
    if as_text:
        return line
    try:
        return json.loads(line)
    except ValueError:
        return line


class _Ledger:
    """Follows every line's ``Delivery`` to its end (thread-safe).

    Deliveries that are done are counted and forgotten from the front (they finish
    in about the order they were sent), so memory stays bounded by what is pending.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: Deque[Delivery] = collections.deque()
        self.lines = 0
        self.delivered = 0
        self.failed = 0
        self.first_failure: Optional[str] = None

    def add(self, delivery: Delivery) -> None:
        with self._lock:
            self.lines += 1
            self._pending.append(delivery)

    def refused(self, reason: BaseException) -> None:
        """A line that ``send()`` did not take."""
        with self._lock:
            self.lines += 1
            self._fail(reason)

    def _fail(self, reason: BaseException) -> None:
        self.failed += 1
        if self.first_failure is None:
            self.first_failure = f"{type(reason).__name__}: {reason}"

    def _count(self, delivery: Delivery) -> None:
        exc = delivery.exception(timeout=0)
        if exc is None:
            self.delivered += 1
        else:
            self._fail(exc)

    def prune(self) -> None:
        """Count the finished deliveries at the front."""
        with self._lock:
            pending = self._pending
            while pending and pending[0].done():
                self._count(pending.popleft())

    def settle(self) -> None:
        """Final count (after ``close()``): anything not done is not delivered."""
        with self._lock:
            for delivery in self._pending:
                if delivery.done():
                    self._count(delivery)
                else:
                    self._fail(TimeoutError("still pending when the client closed"))
            self._pending.clear()


def _configure_logging(verbose: int, stream: IO[str]) -> None:
    logger = logging.getLogger("tether_sync")
    if verbose <= 0:
        # The status lines and the summary say what went wrong; without -v the
        # library's warnings would repeat it in another format.
        logger.addHandler(logging.NullHandler())
        return
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG if verbose > 1 else logging.INFO)


def _client_options(args: argparse.Namespace) -> Dict[str, Any]:
    """TetherClient keyword arguments from the command line."""
    options: Dict[str, Any] = {}
    if args.headers:
        headers: Dict[str, str] = {}
        for name, value in args.headers:
            # A repeated header becomes one comma-separated field (RFC 9110 §5.3).
            headers[name] = f"{headers[name]}, {value}" if name in headers else value
        options["headers"] = headers
    if args.subprotocols:
        options["subprotocols"] = list(args.subprotocols)
    sslopt: Dict[str, Any] = {}
    if args.ca_file:
        sslopt["ca_certs"] = args.ca_file
    if args.insecure:
        sslopt["cert_reqs"] = CERT_NONE
        sslopt["check_hostname"] = False
    if args.cert:
        sslopt["certfile"] = args.cert
    if args.key:
        sslopt["keyfile"] = args.key
    if sslopt:
        options["sslopt"] = sslopt
    if args.compression != "none":
        options["compression"] = args.compression
    ws_options: Dict[str, Any] = {}
    if args.origin:
        ws_options["origin"] = args.origin
    if args.proxy:
        ws_options.update(args.proxy)
    if ws_options:
        options["ws_options"] = ws_options
    if args.ping_interval is not None:
        options["heartbeat"] = {"interval": args.ping_interval}
    return options


def describe(error: BaseException, subprotocols: Optional[List[str]] = None) -> str:
    """One line that says what went wrong, for a status line (never a whole HTTP page).

    Args:
        error: What ended a connection attempt, or an ``error`` event's exception.
        subprotocols: The subprotocols offered (``-s``), to name them when the
            server accepted none.
    """
    status = getattr(error, "status_code", None)
    if isinstance(status, int):
        first = str(error).split(" -+-+- ", 1)[0]  # websocket-client: status, headers, body
        reason = first.replace("Handshake status ", "", 1).strip()
        text = f"HTTP {reason or status}: the server refused the WebSocket handshake"
        if status == 400 and subprotocols:
            text += f" (offered subprotocols: {', '.join(subprotocols)})"
        elif status in (404, 200, 301, 302):
            text += " (is the path a WebSocket endpoint?)"
        return text
    message = str(error)
    if subprotocols and message == "Invalid WebSocket Header":
        return f"the server accepted none of the offered subprotocols ({', '.join(subprotocols)})"
    if not message:
        return type(error).__name__
    line = message.strip().splitlines()[0] if message.strip() else message
    if len(line) > 200:
        line = line[:197] + "..."
    return f"{type(error).__name__}: {line}"


def _is_own_protocol(payload: Any) -> bool:
    """Whether an unrouted inbound message is one of our own protocol frames (an echo)."""
    if isinstance(payload, str):
        try:
            payload = json.loads(payload)
        except ValueError:
            return False
    if not isinstance(payload, dict):
        return False
    kind = payload.get("type")
    return (isinstance(kind, str) and kind.startswith("tether:")) or (
        kind in ("subscribe", "unsubscribe") and "channel" in payload
    )


class ConnectCommand:
    """One run of ``tether-sync connect``: a client, a stdin reader and a supervisor.

    Three threads take part, each through its own methods:

    - the main thread runs :meth:`run`: it builds the client (:meth:`_build_client`),
      starts the reader, then supervises (:meth:`_supervise`): it counts finished
      deliveries, prints round trips, notices an input stalled on a full queue or a
      client that gave up, and after EOF waits for delivery and for the replies;
      the shutdown (:meth:`_finish`, :meth:`_give_up`) runs here too;
    - the reader thread (:meth:`_read_stdin`) sends every line read from stdin;
    - the client's dispatcher thread runs the ``_on_*`` event handlers, which
      print the news and set the flags the supervisor waits on.

    Flags that one thread sets and another waits on are ``threading.Event`` s. The
    few plain attributes shared between threads are grouped below by the thread
    that writes them; each write is one assignment (atomic in CPython), and a
    reader needs only a recent value. Output goes through :class:`_Printer`, whose
    lock keeps lines whole.

    Args:
        args: Parsed options (see :func:`add_arguments`).
        stdin: Where lines come from (default ``sys.stdin``).
        stdout: Where messages go (default ``sys.stdout``).
        stderr: Where status lines go (default ``sys.stderr``).
    """

    def __init__(
        self,
        args: argparse.Namespace,
        stdin: Optional[IO[str]] = None,
        stdout: Optional[IO[str]] = None,
        stderr: Optional[IO[str]] = None,
    ) -> None:
        self.args = args
        self._stdin = sys.stdin if stdin is None else stdin
        self._err = sys.stderr if stderr is None else stderr
        self._printer = _Printer(
            sys.stdout if stdout is None else stdout,
            self._err,
            args.json_output,
            args.quiet,
            use_color(self._err, args.no_color),
            channels=not args.raw,
        )
        self._interactive = bool(getattr(self._stdin, "isatty", lambda: False)())
        self._ledger = _Ledger()
        self._client: Optional[TetherClient] = None
        self._reader: Optional[threading.Thread] = None

        # Set by the reader thread.
        self._reader_done = threading.Event()  # EOF on stdin (or the reader stopped)
        self._eof = threading.Event()  # the input was read to its end
        self._blocked_since: Optional[float] = None  # when the pending send() began

        # Set by the event handlers (the dispatcher thread).
        self._opened = threading.Event()  # a connection was open at least once
        self._settled = threading.Event()  # the first connection opened, or the client gave up
        self._gave_up = threading.Event()  # the client reached state closed on its own
        self._queued_notice = threading.Event()  # "lines are queued" said in this offline episode
        # Why the first connection failed (or, from the main thread, that none opened
        # within --wait: _await_first_connection).
        self._first_failure: Optional[str] = None
        self._hints: Set[str] = set()  # hints given (each once)
        # When the last message arrived (the main thread moves it forward once, when
        # the wait for replies begins: see _await_replies).
        self._last_inbound = time.monotonic()

        # Set by the thread that runs get_token() (the client's token thread): the
        # last --token-cmd failure in the command's own words (the client's AuthError
        # says only that get_token() failed: it never repeats what a token source raised).
        self._token_failure: Optional[str] = None

        # Set by the main thread.
        self._stopping = threading.Event()  # we are closing: the reader stops
        self._last_rtt: Optional[float] = None  # the round trip printed last

    # ------------------------------------------------------------------ the main thread

    def run(self) -> int:
        """Connect, send stdin, print what arrives; the exit code (see :func:`connect_main`)."""
        _configure_logging(self.args.verbose, self._err)
        if self.args.insecure:
            self._printer.news("warning", INSECURE_WARNING, always=True)
        client = self._build_client()
        if client is None:
            return 1
        self._client = client
        self._watch(client)
        client.connect()
        self._reader = threading.Thread(
            target=self._read_stdin, name="tether-connect-stdin", daemon=True
        )
        self._reader.start()
        try:
            return self._supervise()
        except KeyboardInterrupt:
            return self._finish(130, 1.0)

    def _build_client(self) -> Optional[TetherClient]:
        """The client the options describe, or None (the reason printed) if they are refused."""
        from ..client import TetherClient

        args = self.args
        options = _client_options(args)
        try:
            return TetherClient(
                args.url,
                protocol="raw" if args.raw else "tether",
                auth=token_command(args.token_cmd, on_failure=self._on_token_failure)
                if args.token_cmd
                else None,
                reconnect={"max_attempts": args.max_attempts},
                queue=dict(QUEUE),
                # An interactive client must not lose what it prints: a full buffer
                # stops reading, and TCP makes the server wait.
                backpressure={"inbound_buffer_size": 1000, "inbound_overflow": "block"},
                exit_flush_timeout=0,
                **options,
            )
        except TypeError as exc:
            if "compression" in options and "compression" in str(exc):
                print(
                    "tether-sync connect: --compression deflate is not supported by this "
                    "version of tether_sync",
                    file=self._err,
                )
            else:
                print(f"tether-sync connect: {exc}", file=self._err)
            return None
        except ValueError as exc:
            print(f"tether-sync connect: {exc}", file=self._err)
            return None

    def _watch(self, client: TetherClient) -> None:
        """Route the client's events to the ``_on_*`` handlers; subscribe to the channel."""
        client.on("message", self._on_message)
        client.on("open", self._on_open)
        client.on("close", self._on_close)
        client.on("reconnecting", self._on_reconnecting)
        client.on("queued", self._on_queued)
        client.on("auth_refreshed", self._on_auth)
        client.on("error", self._on_error)
        client.on("state_change", self._on_state)
        if not self.args.raw:
            # Announce the channel so that the server's broadcasts on it reach us; the
            # message handler prints them (in arrival order with everything else).
            client.subscribe(self.args.channel, lambda payload: None)

    def _supervise(self) -> int:
        """From the start of input to the exit code: the order of the waits after EOF."""
        if not self._watch_input():
            return self._stalled()
        if self._gave_up.is_set():
            return self._give_up()
        # One budget of --wait for everything after EOF, bar the first connection.
        deadline = time.monotonic() + self.args.wait
        if not self._await_first_connection():
            return self._give_up()
        if not self._flush(deadline):
            return self._give_up()
        self._await_replies(deadline)
        if self.args.linger > 0:
            self._gave_up.wait(self.args.linger)
        return self._finish(0, max(1.0, deadline - time.monotonic()))

    def _watch_input(self) -> bool:
        """Wait while the reader reads; False if a ``send()`` waited for room over ``--wait``.

        Returns True at EOF, when the reader stopped, or when the client gave up.
        """
        # A timed wait keeps the main thread responsive to Ctrl-C everywhere.
        while not self._reader_done.wait(0.2):
            self._ledger.prune()
            if self.args.show_rtt:
                self._show_rtt()
            if self._gave_up.is_set():
                break
            since = self._blocked_since
            if since is not None and time.monotonic() - since > self.args.wait:
                return False
        return True

    def _show_rtt(self) -> None:
        assert self._client is not None
        rtt = self._client.stats().last_rtt
        if rtt is not None and rtt != self._last_rtt:
            self._last_rtt = rtt
            self._printer.news("rtt", f"round trip {rtt * 1000:.2f} ms", rtt=rtt)

    def _await_first_connection(self) -> bool:
        """Whether a connection was open, waiting up to ``--wait`` for the first one.

        Even with nothing to send, the end of input is no success before a
        connection opened: wait for the first one to open or fail.
        """
        if self._opened.is_set():
            return True
        self._settled.wait(self.args.wait)
        if self._opened.is_set():
            return True
        if not self._gave_up.is_set() and self._first_failure is None:
            self._first_failure = f"no connection within {self.args.wait:g}s"
        return False

    def _flush(self, deadline: float) -> bool:
        """Wait until every line left or ``deadline``; False if the client gave up meanwhile."""
        assert self._client is not None
        # Flush in slices, so that a client that gives up meanwhile ends the wait.
        while not self._gave_up.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._client.flush(timeout=min(0.2, remaining)):
                break
        return not self._gave_up.is_set()

    def _await_replies(self, deadline: float) -> None:
        """Keep printing until inbound was quiet for ``QUIET`` seconds (or ``deadline``).

        Replies to the last lines may still be on their way (an echo server answers
        each line). The quiet is counted from the flush at the earliest: a reply
        cannot come before its line left.
        """
        self._last_inbound = max(self._last_inbound, time.monotonic())
        while not self._gave_up.is_set():
            quiet_for = time.monotonic() - self._last_inbound
            wait = min(QUIET - quiet_for, deadline - time.monotonic())
            if wait <= 0:
                break
            self._gave_up.wait(wait)

    # ------------------------------------------------------------------ the shutdown

    def _stalled(self) -> int:
        """The input waited for room over ``--wait``: say so, close, exit 1."""
        self._printer.news(
            "stalled",
            f"no room in the queue for {self.args.wait:g}s (the server is not taking "
            "messages): giving up",
            always=True,
            seconds=self.args.wait,
        )
        return self._finish(1, 1.0)

    def _give_up(self) -> int:
        """The client gave up (or never connected): say why, close, exit 1."""
        if self._first_failure is not None and not self._opened.is_set():
            self._printer.news(
                "closed",
                f"cannot connect to {self.args.url}: {self._first_failure}",
                always=True,
                error=self._first_failure,
            )
        else:
            self._printer.news("closed", "the client gave up (see the errors above)", always=True)
        return self._finish(1, 1.0)

    def _finish(self, code: int, close_timeout: float) -> int:
        """Close the client, stop the reader, print the summary; the exit code.

        Args:
            code: The exit code if every line was delivered.
            close_timeout: Seconds ``close()`` may take to deliver what is queued.
        """
        assert self._client is not None and self._reader is not None
        self._stopping.set()
        self._client.close(timeout=close_timeout)
        # A send() that waited for room fails with ClientClosed now: count it too.
        self._reader.join(0.5)
        return self._summarise(code)

    def _summarise(self, code: int) -> int:
        """Print how many lines were (not) delivered; ``code``, or 1 if any line was not."""
        ledger = self._ledger
        ledger.settle()
        if ledger.failed:
            first = f" (first: {ledger.first_failure})" if ledger.first_failure else ""
            unread = "" if self._eof.is_set() else "; the rest of the input was not read"
            self._printer.news(
                "unsent",
                f"{ledger.failed} of {ledger.lines} lines not delivered{first}{unread}",
                always=True,
                count=ledger.failed,
                lines=ledger.lines,
            )
            return max(code, 1)
        if ledger.lines:
            self._printer.news(
                "delivered", f"all {ledger.lines} lines delivered", count=ledger.lines
            )
        return code

    # ------------------------------------------------------------------ the reader thread

    def _read_stdin(self) -> None:
        """Send every non-empty line of stdin until EOF, or until we stop or the client gave up."""
        try:
            for line in self._stdin:
                if self._stopping.is_set() or self._gave_up.is_set():
                    return
                text = line.rstrip("\r\n")
                if text and not self._send_line(text):
                    return
            self._eof.set()
        finally:
            self._reader_done.set()

    def _send_line(self, text: str) -> bool:
        """Send one line and follow its delivery; False once the client is closed."""
        from ..exceptions import ClientClosed, TetherError

        assert self._client is not None
        payload = text if self.args.raw else _payload(text, self.args.text)
        # With overflow "block", send() waits here while the queue is full; the
        # supervisor watches how long (--wait).
        self._blocked_since = time.monotonic()
        try:
            delivery = self._client.send(payload, channel=self.args.channel)
        except ClientClosed as exc:
            self._ledger.refused(exc)
            return False
        except (TetherError, TypeError, ValueError) as exc:
            self._ledger.refused(exc)
            self._printer.news("error", f"not sent: {exc}", error=str(exc))
        else:
            self._ledger.add(delivery)
        finally:
            self._blocked_since = None
        return True

    # ------------------------------------------------------------------ the event handlers

    def _on_token_failure(self, text: str) -> None:
        self._token_failure = text

    def _hint(self, key: str, text: str) -> None:
        """Print a hint, once per ``key``."""
        if key not in self._hints:
            self._hints.add(key)
            self._printer.news("hint", text, hint=key)

    def _reason(self, error: Optional[BaseException]) -> str:
        """One line that says why an attempt failed (a --token-cmd failure in its own words)."""
        from ..exceptions import AuthError

        if isinstance(error, AuthError) and self._token_failure:
            return f"--token-cmd {self._token_failure}"
        if error is None:
            return "unknown reason"
        return describe(error, self.args.subprotocols)

    def _first_attempt_failing(self) -> bool:
        """Whether events are about a first connection that failed (exit at once, no news).

        Like wscat and websocat; ``--retry`` waits for it instead.
        """
        return not self._opened.is_set() and not self.args.retry

    def _on_message(self, event: MessageEvent) -> None:
        self._last_inbound = time.monotonic()
        if not self.args.raw and event.channel is None and _is_own_protocol(event.payload):
            self._hint(
                "raw",
                "the server sent our own Tether protocol message back: it does not speak "
                "the Tether protocol (an echo server?); use --raw for plain WebSocket",
            )
        self._printer.message(event.channel, event.payload)

    def _on_open(self, event: OpenEvent) -> None:
        self._opened.set()
        self._settled.set()
        self._queued_notice.clear()
        self._printer.news("open", f"connected to {event.url}", url=event.url)

    def _on_queued(self, event: QueuedEvent) -> None:
        if not self._opened.is_set():
            return  # still connecting for the first time: not news
        if self._interactive:
            assert self._client is not None
            depth = self._client.queue_depth
            self._printer.news(
                "queued",
                f"not connected: queued ({depth} waiting), sent once connected",
                depth=depth,
            )
        elif not self._queued_notice.is_set():
            self._queued_notice.set()
            self._printer.news("queued", "not connected: lines are queued and sent once connected")

    def _on_close(self, event: CloseEvent) -> None:
        if self._first_attempt_failing():
            return  # the "cannot connect" line says why
        reason = f" {event.reason!r}" if event.reason else ""
        self._printer.news(
            "close",
            f"connection closed: {event.code}{reason}{'' if event.was_clean else ' (unclean)'}",
            code=event.code,
            reason=event.reason,
            was_clean=event.was_clean,
        )

    def _on_reconnecting(self, event: ReconnectingEvent) -> None:
        if self._first_attempt_failing():
            if self._first_failure is None:
                self._first_failure = self._reason(event.cause)
            self._gave_up.set()
            self._settled.set()
            return
        self._printer.news(
            "reconnecting",
            f"reconnecting: attempt {event.attempt} in {event.delay:.2f}s",
            attempt=event.attempt,
            delay=round(event.delay, 3),
        )

    def _on_auth(self, event: AuthRefreshedEvent) -> None:
        self._printer.news("auth", "token accepted", expires_at=event.expires_at)

    def _on_error(self, event: ErrorEvent) -> None:
        from ..exceptions import ServerError

        error = event.error
        if self._first_attempt_failing():
            # The one "cannot connect" line says why.
            self._first_failure = self._first_failure or self._reason(error)
            return
        text = self._reason(error)
        self._printer.news("error", f"error: {text}", error=text)
        if isinstance(error, ServerError) and "auth" in str(error).lower():
            if not self.args.token_cmd:
                self._hint(
                    "token",
                    "the server wants a token first: pass --token-cmd CMD, a command "
                    "that prints one",
                )

    def _on_state(self, event: StateChangeEvent) -> None:
        if event.current == "closed" and not self._stopping.is_set():
            self._gave_up.set()
            self._settled.set()


def connect_main(
    args: argparse.Namespace,
    stdin: Optional[IO[str]] = None,
    stdout: Optional[IO[str]] = None,
    stderr: Optional[IO[str]] = None,
) -> int:
    """Run ``tether-sync connect`` with parsed ``args`` (see :func:`add_arguments`).

    Args:
        args: Parsed options.
        stdin: Where lines come from (default ``sys.stdin``).
        stdout: Where messages go (default ``sys.stdout``).
        stderr: Where status lines go (default ``sys.stderr``).

    Returns:
        The exit code: 0 after EOF with every line delivered; 1 if the first
        connection failed (without ``--retry``), any line was not delivered, the
        input stalled on a full queue for ``--wait`` seconds, or the client gave
        up (auth refused, ``--max-attempts`` reached, bad options); 130 on Ctrl-C.
    """
    return ConnectCommand(args, stdin, stdout, stderr).run()
