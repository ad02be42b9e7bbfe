"""``tether-sync connect`` run in this process: ``ConnectCommand`` with in-memory streams.

The subprocess tests (test_connect_cli.py and friends) cover the command as a
user runs it; these show that the command is an object a program can run with
its own streams, and that it leaves nothing running when it returns.
"""

from __future__ import annotations

import argparse
import io
import threading
from typing import Any, List

from support.recorder import client_threads

from tether_sync.cli.connect import ConnectCommand, add_arguments


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def _reader_threads() -> List[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "tether-connect-stdin"]


def test_lines_from_a_stream_are_echoed_and_the_run_leaves_no_thread(tether_server: Any) -> None:
    out, err = io.StringIO(), io.StringIO()
    stdin = io.StringIO('hello\n{"n": 1}\n\n')
    code = ConnectCommand(_args(tether_server.url, "--no-color"), stdin, out, err).run()
    assert code == 0, err.getvalue()
    assert out.getvalue().splitlines() == ["[default] hello", '[default] {"n": 1}']
    assert "* all 2 lines delivered" in err.getvalue().splitlines()
    assert client_threads() == [] and _reader_threads() == []


def test_a_refused_first_connection_returns_1_with_one_line(dead_url: str) -> None:
    out, err = io.StringIO(), io.StringIO()
    code = ConnectCommand(_args(dead_url, "--no-color"), io.StringIO("x\n"), out, err).run()
    assert code == 1
    lines = err.getvalue().splitlines()
    assert lines[0].startswith(f"* cannot connect to {dead_url}: "), lines
    assert out.getvalue() == ""
    assert client_threads() == []
