"""The documentation builds, names every public name, and its examples run and type-check.

* ``sphinx-build -W`` (warnings are errors) builds ``docs/`` into a temporary
  directory, and the API reference has an entry for every public name.
* Every ``.. code-block:: python`` in README.rst and docs/ passes ``mypy --strict``
  (the package ships ``py.typed``: what the docs show must type-check).
* Every such block in docs/ runs against the bundled server (the address
  ``ws://127.0.0.1:8765/`` becomes the test server's); README's run in
  tests/integration/test_readme.py.
* README.rst stays a front page: at most 150 lines, linking to the docs.
"""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, Iterator, List, Tuple

import pytest

import tether_sync

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
README = REPO / "README.rst"
ADDRESS = "ws://127.0.0.1:8765/"

NOT_RUN = {
    "import tkinter as tk": "run under Xvfb by test_the_tk_example_runs_under_xvfb",
}
"""Blocks the generic runner leaves to another test (matched by a line they contain)."""


def _python_blocks(path: Path) -> List[Tuple[str, int, str]]:
    """``(file, line, code)`` of every ``.. code-block:: python`` in ``path``."""
    text = path.read_text(encoding="utf-8")
    blocks = []
    for match in re.finditer(r"( *)\.\. code-block:: python\n\n((?:\1 +.*\n|\n)+)", text):
        body = match.group(2)
        indent = min(len(x) - len(x.lstrip()) for x in body.splitlines() if x.strip())
        code = "\n".join(line[indent:] for line in body.splitlines()).strip() + "\n"
        line = text[: match.start()].count("\n") + 1
        blocks.append((str(path.relative_to(REPO)), line, code))
    return blocks


def _doc_files() -> List[Path]:
    return sorted(DOCS.rglob("*.rst"))


def _all_blocks() -> List[Tuple[str, int, str]]:
    blocks = _python_blocks(README)
    for path in _doc_files():
        blocks += _python_blocks(path)
    return blocks


def _docs_blocks() -> List[Tuple[str, int, str]]:
    return [b for path in _doc_files() for b in _python_blocks(path)]


# ------------------------------------------------------------------------ the build


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docs-html")
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html", "docs", out],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stderr.strip() == "", proc.stderr  # no warning at all
    return out


@pytest.mark.timeout(240)
def test_the_docs_build_with_warnings_as_errors(built: Path) -> None:
    for page in ("index", "quickstart", "guarantees", "faq", "reference", "performance"):
        assert (built / f"{page}.html").is_file(), page
    for guide in ("scripts", "gui", "flask", "reliable", "own-server", "endpoints"):
        assert (built / "guides" / f"{guide}.html").is_file(), guide
    for guide in ("testing", "logging", "cli", "panel"):
        assert (built / "guides" / f"{guide}.html").is_file(), guide
    assert (built / "changelog.html").is_file()


def _public_names() -> Iterator[str]:
    from tether_sync import backoff, dispatchers, flask

    for name in tether_sync.__all__:
        yield f"tether_sync.{name}"
        obj = getattr(tether_sync, name)
        if isinstance(obj, type):
            for attr in vars(obj):
                if not attr.startswith("_") and not _is_enum_member(obj, attr):
                    yield f"tether_sync.{name}.{attr}"
    for module in (dispatchers, flask):
        for name in module.__all__:
            yield f"{module.__name__}.{name}"
    yield f"{backoff.__name__}.FullJitter"
    yield "tether_sync.server.TetherServer"
    yield "tether_sync.server.mint_token"
    yield "tether_sync.otel.instrument"
    for name in ("Hub", "MemoryStore", "RedisStore"):
        yield f"tether_sync.server.{name}"


def _is_enum_member(cls: type, attr: str) -> bool:
    import enum

    return issubclass(cls, enum.Enum) and attr in cls.__members__


@pytest.mark.timeout(240)
def test_every_public_name_is_in_the_reference(built: Path) -> None:
    html = (built / "reference.html").read_text(encoding="utf-8")
    anchors = set(re.findall(r'id="(tether_sync\.[\w.]+)"', html))
    missing = sorted(name for name in _public_names() if name not in anchors)
    assert not missing, f"not in docs/reference.rst: {missing}"


def test_the_reference_lists_every_event_name() -> None:
    from tether_sync.events import EVENT_NAMES

    text = (DOCS / "reference.rst").read_text(encoding="utf-8")
    assert not [name for name in EVENT_NAMES if f"``{name}``" not in text]


# ------------------------------------------------------------------------ the examples


def test_there_are_examples_everywhere_they_are_promised() -> None:
    files = {path for path, _, _ in _docs_blocks()}
    for page in ("quickstart", "guides/scripts", "guides/reliable", "guides/endpoints"):
        assert f"docs/{page}.rst" in files, page
    assert (
        len(_python_blocks(README)) >= 2
    )  # the Quick start and the options example; the rest is in docs/


@pytest.mark.timeout(300)
def test_every_example_passes_mypy_strict(tmp_path: Path) -> None:
    pytest.importorskip("mypy")
    names = []
    for index, (path, line, code) in enumerate(_all_blocks()):
        name = f"example_{index:02d}.py"
        (tmp_path / name).write_text(f"# {path}:{line}\n{code}", encoding="utf-8")
        names.append(name)
    env = dict(os.environ, MYPYPATH=str(REPO))
    proc = subprocess.run(
        [
            sys.executable, "-m", "mypy", "--strict", "--python-version", "3.10",
            "--cache-dir", str(tmp_path / ".mypy_cache"), "--config-file", os.devnull,
            "--follow-imports", "silent", *names,
        ],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=tmp_path,
        env=env,
    )  # fmt: skip
    if proc.returncode != 0:
        where = {
            f"example_{i:02d}.py": f"{p}:{line}" for i, (p, line, _) in enumerate(_all_blocks())
        }
        report = re.sub(r"example_\d\d\.py", lambda m: where[m.group(0)], proc.stdout)
        pytest.fail(f"mypy --strict on the docs' examples:\n{report}")


@pytest.mark.timeout(300)
def test_every_example_file_passes_mypy_strict(tmp_path: Path) -> None:
    """examples/*.py (shown in the docs, run by tests/demo and tests/server) type-check."""
    pytest.importorskip("mypy")
    files = sorted(str(p) for p in (REPO / "examples").glob("*.py"))
    proc = subprocess.run(
        [
            sys.executable, "-m", "mypy", "--strict", "--python-version", "3.10",
            "--cache-dir", str(tmp_path / ".mypy_cache"), "--config-file", os.devnull,
            "--follow-imports", "silent", "--ignore-missing-imports", *files,
        ],
        capture_output=True,
        text=True,
        timeout=280,
        cwd=REPO,
    )  # fmt: skip
    assert proc.returncode == 0, f"mypy --strict on examples/:\n{proc.stdout}"


@pytest.fixture
def quiet_logging() -> Iterator[None]:
    """An example may configure logging; the session's settings come back after it."""
    logger = logging.getLogger("tether_sync")
    level, handlers = logger.level, list(logger.handlers)
    root_handlers = list(logging.getLogger().handlers)
    yield
    logger.setLevel(level)
    logger.handlers[:] = handlers
    logging.getLogger().handlers[:] = root_handlers


def _run_flask_app(namespace: Dict[str, Any]) -> None:
    app = namespace["create_app"]()
    response = app.test_client().post("/orders")
    assert response.status_code == 202
    with app.app_context():
        assert namespace["tether"].client.flush(timeout=10)
        namespace["tether"].close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "block", _docs_blocks(), ids=[f"{p}:{line}" for p, line, _ in _docs_blocks()]
)
def test_every_docs_example_runs(
    block: Tuple[str, int, str], tether_server: Any, quiet_logging: None, capsys: Any
) -> None:
    path, line, code = block
    skip = [why for marker, why in NOT_RUN.items() if marker in code]
    if skip:
        pytest.skip(skip[0])
    code = code.replace(ADDRESS, tether_server.url)
    namespace: Dict[str, Any] = {"__name__": "__docs_example__"}
    exec(compile(code, f"{path}:{line}", "exec"), namespace)
    if "create_app" in namespace:
        _run_flask_app(namespace)
    for name, value in list(namespace.items()):
        if name.startswith("test_") and callable(value):
            value()
    # No example may leave a client running: each closes what it opened.
    client = namespace.get("client")
    if isinstance(client, tether_sync.TetherClient):
        assert client.state.value in ("closed", "idle"), f"{path}:{line} left a client open"
    capsys.readouterr()


TK_HARNESS = """
import tkinter

_mainloop = tkinter.Misc.mainloop


def _checked_mainloop(self, n=0):
    # In place of a user: once the state shows "open", send one line on the
    # channel; quit once the window lists its echo (or after 20 s).
    sent = []

    def check():
        names = globals()
        if names["status"].get() == "open" and not sent:
            sent.append(names["client"].send("hi from the docs", channel="chat"))
        if names["lines"].size():
            print("shown:", names["lines"].get(0))
            print("state:", names["status"].get())
            self.quit()
            return
        self.after(20, check)

    self.after(20, check)
    self.after(20000, self.quit)
    _mainloop(self, n)


tkinter.Misc.mainloop = _checked_mainloop
"""


@pytest.mark.timeout(60)
def test_the_tk_example_runs_under_xvfb(tether_server: Any) -> None:
    import shutil

    if shutil.which("xvfb-run") is None:
        if os.environ.get("CI"):
            pytest.fail("CI is set but xvfb-run is missing (apt-get install xvfb)")
        pytest.skip("xvfb-run is missing (apt-get install xvfb)")
    pytest.importorskip("tkinter")
    ((path, line, code),) = [b for b in _docs_blocks() if "import tkinter as tk" in b[2]]
    script = TK_HARNESS + code.replace(ADDRESS, tether_server.url)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run(
        ["xvfb-run", "-a", sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=50,
        cwd=REPO,
        env=env,
    )
    assert proc.returncode == 0, f"{path}:{line}\n{proc.stdout}\n{proc.stderr}"
    assert "shown: hi from the docs" in proc.stdout.splitlines(), proc.stdout + proc.stderr
    assert "state: open" in proc.stdout.splitlines()


# ------------------------------------------------------------------------ the front page


def test_readme_is_a_front_page_that_links_to_the_docs() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    for heading in (
        "Two commands on a fresh machine",
        "Quick start",
        "Reliable delivery on your own server",
        "Testing your app",
        "Performance",
    ):
        assert f"\n{heading}\n{'-' * len(heading)}\n" in text, heading
    assert 'python3 -m pip install -e ".[test]" && python3 -m pytest' in text
    assert 'python3 -m pip install -e ".[demo]" && tether-sync demo' in text
    for link in re.findall(r"<(docs/[^>]+\.rst)>`_", text):
        assert (REPO / link).is_file(), link
    assert "<docs/reference.rst>" in text and "<docs/guarantees.rst>" in text
