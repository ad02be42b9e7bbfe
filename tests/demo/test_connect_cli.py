"""``tether-sync connect`` driven through pipes, as a script or another program would."""

# NEEDS THE NEW CORE: every ``connect`` uses queue={"overflow": "block"} (issue 10); until
# the core accepts it, connect exits 1 ("queue.overflow must be one of ...") and the tests
# that run connect fail. The lead runs them after merging the core.

from __future__ import annotations

import json
import shlex
import sys
from typing import Any, Callable, Dict

TOKEN_CMD = f"{shlex.quote(sys.executable)} -c " + shlex.quote(
    "from tether_sync.server import mint_token; print(mint_token('cli', 60))"
)


def _record(line: str) -> Dict[str, Any]:
    record = json.loads(line)
    assert isinstance(record, dict)
    return record


def _is(kind: str, **fields: Any) -> Callable[[str], bool]:
    def match(line: str) -> bool:
        record = _record(line)
        return record.get("type") == kind and all(record.get(k) == v for k, v in fields.items())

    return match


def test_connect_sends_receives_and_survives_a_server_restart(
    make_server: Callable[..., Any], spawn: Callable[..., Any]
) -> None:
    server = make_server(require_auth=True)
    proc = spawn(
        "-m", "tether_sync", "connect", server.url, "--channel", "chat", "--json",
        "--token-cmd", TOKEN_CMD,
    )  # fmt: skip
    proc.out.expect(_is("open"), timeout=10)

    proc.send_line("hello")
    proc.send_line('{"n": 1}')
    proc.out.expect(_is("message", channel="chat", payload="hello"))
    # The echo of the last message before the kill: everything before it arrived.
    proc.out.expect(_is("message", channel="chat", payload={"n": 1}))

    server.stop(abrupt=True)
    proc.out.expect(_is("close", code=1006))
    proc.out.expect(_is("reconnecting"))
    proc.err.expect(lambda line: line.startswith("* reconnecting: attempt"))
    proc.send_line("while down 1")
    proc.send_line("while down 2")
    server.start()

    proc.out.expect(_is("open"), timeout=15)
    proc.out.expect(_is("message", channel="chat", payload="while down 1"), timeout=10)
    proc.out.expect(_is("message", channel="chat", payload="while down 2"))
    assert server.data_payloads("chat") == ["hello", {"n": 1}, "while down 1", "while down 2"]
    # Auth again on the new connection, from --token-cmd, before any data.
    assert server.connections[-1].authenticated

    proc.close_stdin()
    assert proc.wait(timeout=10) == 0


def test_connect_plain_output_and_eof(tether_server: Any, spawn: Callable[..., Any]) -> None:
    proc = spawn("-m", "tether_sync", "connect", tether_server.url, "-c", "room", "--text")
    proc.err.expect(lambda line: line.startswith("* connected to"), timeout=10)
    proc.send_line("[1, 2]")
    proc.out.expect(lambda line: line == "[room] [1, 2]")
    proc.close_stdin()
    assert proc.wait(timeout=10) == 0
    assert tether_server.data_payloads("room") == ["[1, 2]"]


def test_connect_raw_sends_frames_as_they_are(
    tether_server: Any, spawn: Callable[..., Any]
) -> None:
    proc = spawn("-m", "tether_sync", "connect", tether_server.url, "--raw", "--json")
    proc.out.expect(_is("open"), timeout=10)
    # A Tether envelope typed by hand: the server echoes it, the raw client shows it as is.
    envelope = {"channel": "c", "type": "data", "payload": 7}
    proc.send_line(json.dumps(envelope))
    line = proc.out.expect(_is("message", channel="default"))
    assert json.loads(_record(line)["payload"]) == envelope
    proc.close_stdin()
    assert proc.wait(timeout=10) == 0


def test_connect_eof_with_lines_unsent_exits_1(dead_url: str, spawn: Callable[..., Any]) -> None:
    proc = spawn("-m", "tether_sync", "connect", dead_url, "--retry", "--wait", "0.5", "--json")
    proc.send_line("nobody listens")
    proc.send_line("nor here")
    proc.close_stdin()
    assert proc.wait(timeout=10) == 1
    proc.out.expect(_is("unsent", count=2, lines=2), timeout=2)
    proc.err.expect(lambda line: line.startswith("* 2 of 2 lines not delivered"), timeout=2)


def test_connect_gives_up_after_max_attempts(dead_url: str, spawn: Callable[..., Any]) -> None:
    proc = spawn(
        "-m", "tether_sync", "connect", dead_url, "--retry", "--max-attempts", "2", "--json"
    )  # fmt: skip
    proc.out.expect(_is("reconnecting", attempt=2), timeout=10)
    assert proc.wait(timeout=10) == 1
    proc.out.expect(_is("closed"), timeout=2)
