"""The README's examples run, unchanged but for the server URL."""

from __future__ import annotations

import contextlib
import io
import pathlib
import re
from typing import List

import pytest

from tether_sync.server import TetherServer

README = pathlib.Path(__file__).resolve().parents[2] / "README.rst"


def _python_blocks() -> List[str]:
    text = README.read_text()
    blocks = []
    for match in re.finditer(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", text):
        lines = [line[4:] for line in match.group(1).splitlines()]
        blocks.append("\n".join(lines).strip() + "\n")
    return blocks


def _client_blocks() -> List[str]:
    """The client examples: they run against the bundled server (below)."""
    return [code for code in _python_blocks() if 'URL = "ws://127.0.0.1:8765/"' in code]


def test_readme_has_examples() -> None:
    # a front page: the other examples live in docs/ (tests/test_docs.py runs them)
    assert len(_client_blocks()) >= 1
    assert len(_python_blocks()) >= 3


@pytest.mark.timeout(30)
@pytest.mark.parametrize("index", range(len(_client_blocks())))
def test_readme_example_runs(index: int, tether_server: TetherServer) -> None:
    code = _client_blocks()[index]
    code = code.replace('URL = "ws://127.0.0.1:8765/"', f"URL = {tether_server.url!r}")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"README.rst example {index}", "exec"), {"__name__": "__readme__"})
    if index == 0:
        assert "{'text': 'hello'}" in out.getvalue()


@pytest.mark.parametrize("name", ["own_server_fastapi.py", "own_server_websockets.py"])
def test_the_own_server_examples_are_the_files_a_test_runs(name: str) -> None:
    """README's "Reliable delivery on your own server" shows each example file as it is
    (tests/server/test_own_server_examples.py runs the files), each at most 20 lines."""
    source = (README.parent / "examples" / name).read_text(encoding="utf-8")
    body = source.split('"""', 2)[2].strip() + "\n" if source.startswith('"""') else source
    assert body in _python_blocks(), f"README's copy of examples/{name} differs from the file"
    assert len(body.splitlines()) <= 20
    section = README.read_text(encoding="utf-8").split("Reliable delivery on your own server")[1]
    assert f"examples/{name}" in section.split("Testing your app")[0]


def test_readme_renders_without_errors() -> None:
    """A malformed table or directive would show as raw text on the package page."""
    docutils_core = pytest.importorskip("docutils.core")
    from docutils.writers.null import Writer as NullWriter

    docutils_core.publish_string(
        README.read_text(),
        writer=NullWriter(),
        settings_overrides={"report_level": 2, "halt_level": 2},  # warnings fail
    )
