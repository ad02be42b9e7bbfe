"""Every command under "Try it by hand" (docs/quickstart.rst) runs as printed.

The lines are taken from the page, split like a shell splits them (comments
dropped) and run in order, each bounded by a timeout. Two substitutions, so that the
test can run beside others on a shared machine and against this checkout:

* port 8765 becomes a free port (``serve`` gets ``--port`` for it);
* ``tether-sync`` becomes ``python -m tether_sync`` and ``python3`` this interpreter.

``CMD &`` starts CMD in the background (it must print that it listens); ``kill %N``
stops job N, which must then exit 0; ``connect`` (the interactive line) gets one typed
line and Ctrl-D (EOF) on stdin and must print that line's echo.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
from typing import Callable, List

import pytest

from .conftest import REPO, Proc

README = REPO / "README.rst"
QUICKSTART = REPO / "docs" / "quickstart.rst"


def try_it_by_hand() -> List[str]:
    """The command lines of the literal block after "Try it by hand"."""
    text = QUICKSTART.read_text(encoding="utf-8")
    start = text.index("\nTry it by hand")
    body = text[text.index("::\n\n", start) + 3 :]
    lines: List[str] = []
    for line in body.splitlines():
        if line and not line.startswith("    "):
            break  # the end of the literal block
        if line.strip():
            lines.append(line.strip())
    return lines


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _argv(words: List[str], port: int) -> List[str]:
    words = [w.replace("8765", str(port)) for w in words]
    if words[0] == "tether-sync":
        words = ["-m", "tether_sync", *words[1:]]
        if words[2] == "serve" and "--port" not in words:
            words += ["--port", str(port)]
    elif words[0] in ("python3", "python"):
        words = words[1:]
    else:
        raise AssertionError(f"not a tether-sync or python3 command: {words}")
    return words


def test_the_block_has_the_commands_it_should() -> None:
    lines = try_it_by_hand()
    assert lines[0].startswith("tether-sync serve &")
    assert any(line.startswith("tether-sync connect ") for line in lines)
    assert lines[-1].startswith("kill %1")


# NEEDS THE NEW CORE for its connect line (connect uses queue overflow "block").
@pytest.mark.timeout(120)
def test_every_command_runs_as_printed(spawn: Callable[..., Proc]) -> None:
    port = _free_port()
    jobs: List[Proc] = []
    for line in try_it_by_hand():
        words = shlex.split(line, comments=True)
        if words[0] == "kill":
            (job,) = words[1:]
            proc = jobs[int(job.lstrip("%")) - 1]
            proc.popen.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0, (line, proc.err.seen)
            continue
        background = words[-1] == "&"
        if background:
            words = words[:-1]
        argv = _argv(words, port)
        if background:
            proc = spawn(*argv)
            jobs.append(proc)
            proc.out.expect(lambda text: "listening on" in text, timeout=15)
            continue
        if "connect" in argv:
            proc = spawn(*argv)
            proc.send_line("typed by hand")  # then Ctrl-D
            proc.close_stdin()
            assert proc.wait(timeout=40) == 0, (line, proc.err.seen)
            proc.out.expect(lambda text: text.endswith("] typed by hand"), timeout=5)
            continue
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
        done = subprocess.run(
            [sys.executable, *argv],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=40,
            cwd=REPO,
            env=env,
        )
        assert done.returncode == 0, (line, done.stdout, done.stderr)
        assert "Traceback" not in done.stderr, line


def test_the_venv_step_is_shown_before_the_first_pip_install() -> None:
    text = README.read_text(encoding="utf-8")
    venv = text.index("python3 -m venv .venv && . .venv/bin/activate")
    assert venv < text.index("python3 -m pip install")
    assert "python3-venv" in text[:venv]


def test_no_readme_command_uses_a_bare_python() -> None:
    # Debian has no `python` command without python-is-python3.
    assert not [line for line in try_it_by_hand() if line.startswith("python ")]
