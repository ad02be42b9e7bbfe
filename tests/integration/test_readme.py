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


def test_readme_has_examples() -> None:
    assert (
        len(_python_blocks()) >= 2
    )  # a front page: the other examples live in docs/ (tests/test_docs.py runs them)


@pytest.mark.timeout(30)
@pytest.mark.parametrize("index", range(len(_python_blocks())))
def test_readme_example_runs(index: int, tether_server: TetherServer) -> None:
    code = _python_blocks()[index]
    assert 'URL = "ws://127.0.0.1:8765/"' in code
    code = code.replace('URL = "ws://127.0.0.1:8765/"', f"URL = {tether_server.url!r}")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, f"README.rst example {index}", "exec"), {"__name__": "__readme__"})
    if index == 0:
        assert "{'text': 'hello'}" in out.getvalue()
    if index == 1:
        assert out.getvalue().strip().splitlines()[-1] == "3"


def test_readme_renders_without_errors() -> None:
    """A malformed table or directive would show as raw text on the package page."""
    docutils_core = pytest.importorskip("docutils.core")
    from docutils.writers.null import Writer as NullWriter

    docutils_core.publish_string(
        README.read_text(),
        writer=NullWriter(),
        settings_overrides={"report_level": 2, "halt_level": 2},  # warnings fail
    )
