"""``tether-sync connect`` flags from issue 13, against real servers in this process.

A websockets server that records each handshake (headers, the subprotocol it chose)
and echoes, on ws:// and on wss:// with a certificate from a test CA (trustme).
"""

# NEEDS THE NEW CORE: every ``connect`` uses queue={"overflow": "block"} (issue 10); until
# the core accepts it, connect exits 1 ("queue.overflow must be one of ...") and the tests
# that run connect fail. The lead runs them after merging the core.

from __future__ import annotations

import argparse
import io
import os
import ssl
import subprocess
import sys
import threading
from typing import Any, Dict, Iterator, List

import pytest
from support.tls import localhost_tls

from tether_sync import cli
from tether_sync.cli.connect import CERT_NONE, INSECURE_WARNING, _Printer, use_color

from .conftest import REPO


def _env() -> Dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def _connect(*argv: str, stdin: str = "", timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tether_sync", "connect", *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env=_env(),
    )


class Recorder:
    def __init__(self) -> None:
        self.handshakes: List[Dict[str, Any]] = []


def _serve(tls: Any = None, subprotocols: Any = None) -> Iterator[Dict[str, Any]]:
    from websockets.sync.server import ServerConnection, serve

    recorder = Recorder()

    def handler(conn: ServerConnection) -> None:
        assert conn.request is not None
        recorder.handshakes.append(
            {"headers": conn.request.headers, "subprotocol": conn.subprotocol}
        )
        for message in conn:
            conn.send(message)

    host = "localhost" if tls is not None else "127.0.0.1"
    with serve(handler, host, 0, ssl=tls, subprotocols=subprotocols) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        port = server.socket.getsockname()[1]
        scheme = "wss" if tls is not None else "ws"
        yield {"url": f"{scheme}://{host}:{port}/", "recorder": recorder}
        server.shutdown()
        thread.join(5)


@pytest.fixture
def echo() -> Iterator[Dict[str, Any]]:
    yield from _serve()


@pytest.fixture
def chat_echo() -> Iterator[Dict[str, Any]]:
    yield from _serve(subprotocols=["chat.v2", "chat.v1"])


@pytest.fixture
def tls_echo(tmp_path: Any) -> Iterator[Dict[str, Any]]:
    ctx, ca_file, _ = localhost_tls(tmp_path)
    for info in _serve(ctx):
        info["ca"] = str(ca_file)
        yield info


def test_headers_and_subprotocols_reach_the_handshake(chat_echo: Dict[str, Any]) -> None:
    echo = chat_echo
    proc = _connect(
        echo["url"], "--raw", "--wait", "10",
        "-H", "X-Trace: abc 123", "--header", "X-Multi: one", "-H", "X-Multi: two",
        "-s", "chat.v1", "--subprotocol", "chat.v3",
        stdin="ping\n",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["ping"]  # --raw: no channel prefix
    (handshake,) = echo["recorder"].handshakes
    assert handshake["headers"]["X-Trace"] == "abc 123"
    assert handshake["headers"]["X-Multi"] == "one, two"
    assert handshake["subprotocol"] == "chat.v1"


def test_ca_file_trusts_a_private_ca_without_a_warning(tls_echo: Dict[str, Any]) -> None:
    proc = _connect(tls_echo["url"], "--raw", "--ca-file", tls_echo["ca"], stdin="secure\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["secure"]  # --raw: no channel prefix
    assert "WARNING" not in proc.stderr


def test_an_untrusted_certificate_is_refused_and_insecure_accepts_it_loudly(
    tls_echo: Dict[str, Any],
) -> None:
    refused = _connect(tls_echo["url"], "--raw", "-q", stdin="x\n")
    assert refused.returncode == 1
    assert "Traceback" not in refused.stderr
    # The first connection cannot succeed: one line says why, even with --quiet.
    assert f"* cannot connect to {tls_echo['url']}: " in refused.stderr
    assert "CERTIFICATE_VERIFY_FAILED" in refused.stderr

    proc = _connect(tls_echo["url"], "--raw", "-k", "-q", stdin="anyway\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["anyway"]  # --raw: no channel prefix
    assert CERT_NONE == ssl.CERT_NONE
    # Loud: first on stderr, even with --quiet.
    assert proc.stderr.splitlines()[0] == f"* {INSECURE_WARNING}"


def test_compression_is_passed_on_or_refused_clearly(echo: Dict[str, Any]) -> None:
    proc = _connect(echo["url"], "--raw", "--compression", "deflate", stdin="z\n")
    assert "Traceback" not in proc.stderr
    if proc.returncode == 1:  # a core without compression= (before issue 13's codec)
        assert "--compression deflate is not supported" in proc.stderr
    else:
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.splitlines() == ["z"]  # --raw: no channel prefix


def test_version_and_verbose(echo: Dict[str, Any]) -> None:
    from tether_sync.version import __version__

    for argv in (["--version"], ["-V"], ["connect", "--version"]):
        proc = subprocess.run(
            [sys.executable, "-m", "tether_sync", *argv],
            capture_output=True, text=True, timeout=20, cwd=REPO, env=_env(),
        )  # fmt: skip
        assert proc.returncode == 0
        assert proc.stdout.strip() == f"tether-sync {__version__}"
    proc = _connect(echo["url"], "--raw", "-v", stdin="hi\n")
    assert proc.returncode == 0
    assert " tether_sync INFO " in proc.stderr
    quiet = _connect(echo["url"], "--raw", stdin="hi\n")
    assert " tether_sync " not in quiet.stderr  # no log lines without -v


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_colour_only_on_a_terminal_and_never_with_no_color(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("NO_COLOR", raising=False)
    assert use_color(_Tty(), disabled=False)
    assert not use_color(_Tty(), disabled=True)  # --no-color
    assert not use_color(io.StringIO(), disabled=False)  # a pipe or a file
    monkeypatch.setenv("NO_COLOR", "1")
    assert not use_color(_Tty(), disabled=False)

    err = _Tty()
    _Printer(io.StringIO(), err, False, False, color=True).news("error", "boom")
    assert err.getvalue() == "\x1b[31m* boom\x1b[0m\n"
    err = _Tty()
    _Printer(io.StringIO(), err, False, False, color=False).news("error", "boom")
    assert err.getvalue() == "* boom\n"


def _subcommands() -> Dict[str, argparse.ArgumentParser]:
    parser = cli._build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {"": parser, **sub.choices}


@pytest.mark.parametrize("name", ["", "serve", "demo", "connect"])
def test_help_is_plain_text_and_shows_every_default(name: str) -> None:
    parser = _subcommands()[name]
    text = parser.format_help()
    assert "``" not in text
    assert ":class:" not in text and ":func:" not in text
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or action.nargs == 0:
            continue
        default = action.default
        if default is None or default == [] or isinstance(default, bool):
            continue
        assert action.help and "default" in parser._get_formatter()._expand_help(action), (
            f"{name} {action.option_strings[0]} does not show its default"
        )


def test_a_missing_extra_names_the_extra_to_install() -> None:
    code = (
        "import sys; sys.modules['websockets'] = None; "  # as if not installed
        "from tether_sync.cli import main; sys.exit(main(['serve', '--port', '0']))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=20,
        cwd=REPO, env=_env(),
    )  # fmt: skip
    assert proc.returncode == 1
    assert "pip install 'tether-sync[server]'" in proc.stderr
    assert "Traceback" not in proc.stderr
