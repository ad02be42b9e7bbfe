"""The scripts in ``examples/`` run against the bundled server and do what they say."""

from __future__ import annotations

import json
import shlex
from typing import Any, Callable, List

import pytest

from .conftest import REPO

EXAMPLES = "examples"


def test_send_messages_sends_n_messages_and_exits(
    tether_server: Any, spawn: Callable[..., Any]
) -> None:
    proc = spawn(
        f"{EXAMPLES}/send_messages.py", tether_server.url, "--count", "12", "--channel", "ex"
    )
    assert proc.wait(timeout=15) == 0
    proc.out.expect(lambda line: line == "sent 12 message(s) on channel 'ex'", timeout=2)
    assert tether_server.wait_for_data(12, channel="ex", timeout=5)
    assert tether_server.data_payloads("ex") == [
        {"n": n, "text": f"message {n}"} for n in range(12)
    ]


def test_send_messages_fails_without_a_server(dead_url: str, spawn: Callable[..., Any]) -> None:
    proc = spawn(f"{EXAMPLES}/send_messages.py", dead_url, "--count", "1", "--timeout", "1")
    assert proc.wait(timeout=15) == 1


def test_subscriber_prints_broadcasts_and_echoes_then_exits(
    tether_server: Any, spawn: Callable[..., Any]
) -> None:
    proc = spawn(
        f"{EXAMPLES}/subscriber.py",
        tether_server.url,
        "--channel",
        "news",
        "--count",
        "3",
        "--send",
        "hello",
        "--timeout",
        "20",
    )
    # The echo of --send arrives first; the broadcasts need the subscription in place.
    assert json.loads(proc.out.expect(lambda line: True, timeout=10)) == "hello"
    assert tether_server.wait_for(
        lambda: any("news" in conn.subscriptions for conn in tether_server.connections), 5
    )
    tether_server.broadcast("news", {"headline": "one"})
    tether_server.broadcast("news", {"headline": "two"})
    assert proc.wait(timeout=10) == 0
    lines = [json.loads(proc.out.expect(lambda line: True, timeout=2)) for _ in range(2)]
    assert lines == [{"headline": "one"}, {"headline": "two"}]


def test_subscriber_times_out_when_too_little_arrives(
    tether_server: Any, spawn: Callable[..., Any]
) -> None:
    proc = spawn(f"{EXAMPLES}/subscriber.py", tether_server.url, "--count", "1", "--timeout", "1")
    assert proc.wait(timeout=10) == 1
    proc.err.expect(lambda line: "timed out: 0 of 1" in line, timeout=2)


def _docstring_command(script: str) -> List[str]:
    """The ``python examples/SCRIPT ...`` line of a script's own docstring, as argv."""
    text = (REPO / EXAMPLES / script).read_text(encoding="utf-8")
    docstring = text.split('"""')[1]
    (line,) = [x.strip() for x in docstring.splitlines() if f"examples/{script}" in x]
    words = shlex.split(line, comments=True)
    assert words[0] in ("python", "python3") and words[1] == f"{EXAMPLES}/{script}"
    return words[1:]


@pytest.mark.parametrize("script", ["send_messages.py", "subscriber.py", "asyncio_bridge.py"])
def test_the_command_in_each_examples_docstring_works_as_printed(
    script: str, tether_server: Any, spawn: Callable[..., Any]
) -> None:
    argv = [
        w.replace("ws://127.0.0.1:8765/", tether_server.url) for w in _docstring_command(script)
    ]
    proc = spawn(*argv)
    proc.close_stdin()
    assert proc.wait(timeout=20) == 0, proc.err.seen
