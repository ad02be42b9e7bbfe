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

EOF on stdin flushes the queue (bounded by ``--flush-timeout``), optionally
keeps printing for ``--wait`` seconds, closes, and exits 0; 1 if messages were
left unsent or the client gave up; 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import base64
import json
import subprocess
import sys
import threading
from typing import IO, Any, Callable, Dict, Optional

__all__ = ["add_arguments", "connect_main", "token_command"]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``connect`` options to ``parser``."""
    parser.add_argument("url", help="ws:// or wss:// URL")
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
        "-w",
        "--wait",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="after EOF and the flush, keep printing inbound messages this long",
    )
    parser.add_argument(
        "--flush-timeout",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="after EOF, how long to wait for queued lines to go out (default 5)",
    )
    parser.add_argument(
        "--max-attempts",
        type=int,
        default=None,
        metavar="N",
        help="give up after N reconnect attempts in a row (default: never)",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="no status lines on stderr")


def token_command(cmd: str, timeout: float = 10.0) -> Callable[[], str]:
    """Return a ``get_token`` that runs the shell command ``cmd`` and returns its stdout.

    Raises (from the returned callable):
        AuthError: the command failed, timed out, or printed nothing.
    """
    from .exceptions import AuthError

    def get_token() -> str:
        try:
            proc = subprocess.run(
                cmd, shell=True, capture_output=True, text=True, timeout=timeout, check=False
            )
        except subprocess.TimeoutExpired as exc:
            raise AuthError(f"--token-cmd did not finish within {timeout:g}s") from exc
        if proc.returncode != 0:
            detail = proc.stderr.strip().splitlines()[-1:] or [""]
            raise AuthError(f"--token-cmd exited with status {proc.returncode}: {detail[0]}")
        token = proc.stdout.strip()
        if not token:
            raise AuthError("--token-cmd printed no token")
        return token

    return get_token


class _Printer:
    """Writes messages to stdout and news to stderr (and stdout with ``--json``).

    Called from the client's dispatcher and the main thread; one lock keeps
    lines whole. A closed pipe (``| head``) ends output instead of raising.
    """

    def __init__(self, out: IO[str], err: IO[str], json_output: bool, quiet: bool) -> None:
        self._out = out
        self._err = err
        self._json = json_output
        self._quiet = quiet
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
        self._write(self._out, text if channel is None else f"[{channel}] {text}")

    def news(self, kind: str, text: str, **fields: Any) -> None:
        if self._json:
            self._write(self._out, json.dumps({"type": kind, **fields}, ensure_ascii=False))
        if not self._quiet:
            self._write(self._err, f"* {text}")


def _payload(line: str, as_text: bool) -> Any:
    if as_text:
        return line
    try:
        return json.loads(line)
    except ValueError:
        return line


def connect_main(
    args: argparse.Namespace,
    stdin: Optional[IO[str]] = None,
    stdout: Optional[IO[str]] = None,
    stderr: Optional[IO[str]] = None,
) -> int:
    """Run ``tether-sync connect`` with parsed ``args`` (see :func:`add_arguments`).

    Returns:
        The exit code: 0 after EOF with everything sent, 1 if lines were left unsent
        or the client gave up (auth refused, ``--max-attempts`` reached, bad
        options), 130 on Ctrl-C.
    """
    from .client import TetherClient
    from .events import (
        AuthRefreshedEvent,
        CloseEvent,
        ErrorEvent,
        MessageEvent,
        OpenEvent,
        ReconnectingEvent,
        StateChangeEvent,
    )
    from .exceptions import ClientClosed, TetherError

    stdin = sys.stdin if stdin is None else stdin
    printer = _Printer(
        sys.stdout if stdout is None else stdout,
        sys.stderr if stderr is None else stderr,
        args.json_output,
        args.quiet,
    )
    try:
        client = TetherClient(
            args.url,
            protocol="raw" if args.raw else "tether",
            auth=token_command(args.token_cmd) if args.token_cmd else None,
            reconnect={"max_attempts": args.max_attempts},
            # An interactive client must not lose what it prints: a full buffer
            # stops reading, and TCP makes the server wait.
            backpressure={"inbound_buffer_size": 1000, "inbound_overflow": "block"},
            exit_flush_timeout=0,
        )
    except (TypeError, ValueError) as exc:
        print(f"tether-sync connect: {exc}", file=sys.stderr)
        return 1

    finished = threading.Event()  # EOF on stdin, or the client gave up
    gave_up = threading.Event()

    def on_message(event: MessageEvent) -> None:
        printer.message(event.channel, event.payload)

    def on_open(event: OpenEvent) -> None:
        printer.news("open", f"connected to {event.url}", url=event.url)

    def on_close(event: CloseEvent) -> None:
        reason = f" {event.reason!r}" if event.reason else ""
        printer.news(
            "close",
            f"connection closed: {event.code}{reason}{'' if event.was_clean else ' (unclean)'}",
            code=event.code,
            reason=event.reason,
            was_clean=event.was_clean,
        )

    def on_reconnecting(event: ReconnectingEvent) -> None:
        printer.news(
            "reconnecting",
            f"reconnecting: attempt {event.attempt} in {event.delay:.2f}s",
            attempt=event.attempt,
            delay=round(event.delay, 3),
        )

    def on_auth(event: AuthRefreshedEvent) -> None:
        printer.news("auth", "token accepted", expires_at=event.expires_at)

    def on_error(event: ErrorEvent) -> None:
        error = event.error
        printer.news(
            "error",
            f"error: {type(error).__name__}: {error}",
            error=f"{type(error).__name__}: {error}",
        )

    def on_state(event: StateChangeEvent) -> None:
        if event.current == "closed" and not finished.is_set():
            gave_up.set()
            finished.set()

    client.on("message", on_message)
    client.on("open", on_open)
    client.on("close", on_close)
    client.on("reconnecting", on_reconnecting)
    client.on("auth_refreshed", on_auth)
    client.on("error", on_error)
    client.on("state_change", on_state)
    if not args.raw:
        # Announce the channel so that the server's broadcasts on it reach us; the
        # message handler above prints them (in arrival order with everything else).
        client.subscribe(args.channel, lambda payload: None)

    def read_stdin() -> None:
        try:
            for line in stdin:
                text = line.rstrip("\r\n")
                if not text or finished.is_set():
                    continue
                payload = text if args.raw else _payload(text, args.text)
                try:
                    client.send(payload, channel=args.channel)
                except ClientClosed:
                    return
                except (TetherError, TypeError, ValueError) as exc:
                    printer.news("error", f"not sent: {exc}", error=str(exc))
        finally:
            finished.set()

    client.connect()
    reader = threading.Thread(target=read_stdin, name="tether-connect-stdin", daemon=True)
    reader.start()
    try:
        # A timed wait keeps the main thread responsive to Ctrl-C everywhere.
        while not finished.wait(0.5):
            pass
        if gave_up.is_set():
            printer.news("closed", "the client gave up (see the errors above)")
            client.close(timeout=1.0)
            return 1
        sent = client.flush(timeout=args.flush_timeout)
        if args.wait > 0:
            gave_up.wait(args.wait)
        left = client.queue_depth
        client.close(timeout=2.0)
        if not sent:
            printer.news("unsent", f"{left} line(s) could not be sent in time", count=left)
            return 1
        return 0
    except KeyboardInterrupt:
        client.close(timeout=1.0)
        return 130
