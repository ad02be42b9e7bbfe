"""The tiers of DESIGN §4 are folders, and the import graph keeps to them.

=================  ==========================================================================
``protocol/``      sans-I/O: the session and its parts, frames, deflate, envelope, write buffer,
                   token expiry. Imports only ``protocol/`` and ``exceptions``; none of
                   ``threading``, ``socket``, ``selectors``, ``time`` (nor their relatives).
``engine/``        the I/O thread and the helper threads it starts. Imported by ``client.py``
                   alone (and by itself), through its interface only: ``engine/__init__.py``
                   (``Engine``) and the commands. Only ``engine/transport.py`` and
                   ``engine/poller.py`` touch ``socket``/``ssl``/``websocket``; only the poller
                   uses a selector.
top level          what user threads touch (client, options, events, exceptions, ...). Never
                   imports ``engine/``, except ``client.py``.
``cli/``           the ``tether-sync`` command, an application of the public API: no core module
                   imports it (``__main__`` runs it).
integrations       ``dispatchers``, ``flask``, ``otel``: on top of the public API; no core module
                   imports them.
=================  ==========================================================================

There is no import circle, ``if TYPE_CHECKING:`` imports included. The extras (``server/``,
``demo/``, ``testing/``) are not core; the core never imports them nor ``websockets``/``flask``,
and its only third-party import is websocket-client.
"""

from __future__ import annotations

import ast
import importlib.util
import os
import subprocess
import sys
import sysconfig
import textwrap
from pathlib import Path
from typing import Dict, FrozenSet, List, NamedTuple, Set

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG_DIR = ROOT / "tether_sync"
PKG = "tether_sync"

EXTRA_SUBPACKAGES = frozenset({"server", "demo", "testing"})
TIERS = frozenset({"protocol", "engine", "cli"})
INTEGRATIONS = frozenset({"tether_sync.dispatchers", "tether_sync.flask", "tether_sync.otel"})
CLIENT = "tether_sync.client"

THREADS = frozenset({"threading", "_thread", "queue", "concurrent", "multiprocessing"})
IO = frozenset({"socket", "ssl", "selectors", "select", "asyncio", "subprocess", "websocket"})
PROTOCOL_FORBIDDEN = THREADS | IO | {"time"}
SOCKET_OWNERS = frozenset({"tether_sync.engine.transport", "tether_sync.engine.poller"})
SELECTOR_OWNERS = frozenset({"tether_sync.engine.poller"})
EXTRAS = frozenset({"websockets", "flask", "werkzeug"})
THIRD_PARTY_ALLOWED = frozenset({"websocket"})  # runtime dependency: websocket-client only


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def core_files() -> Dict[str, Path]:
    """Every core module (not the extras), by dotted name."""
    found: Dict[str, Path] = {}
    for path in sorted(PKG_DIR.rglob("*.py")):
        rel = path.relative_to(PKG_DIR).parts
        if len(rel) > 1 and rel[0] in EXTRA_SUBPACKAGES:
            continue
        found[_module_name(path)] = path
    return found


CORE = core_files()


def tier(module: str) -> str:
    """ "protocol", "engine", "cli" or "top" (the package's own level)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in TIERS else "top"


class Import(NamedTuple):
    importer: str  # dotted name of the importing module
    name: str  # absolute dotted module name imported, e.g. "tether_sync.clock" or "json"
    line: int
    type_only: bool  # under "if TYPE_CHECKING:"

    @property
    def top(self) -> str:
        return self.name.split(".")[0]

    @property
    def internal(self) -> bool:
        return self.top == PKG

    def __str__(self) -> str:
        return f"{self.importer}:{self.line} imports {self.name}"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Collector(ast.NodeVisitor):
    """Every import of one module (inside functions too), as absolute module names."""

    def __init__(self, module: str, is_package: bool) -> None:
        self.module = module
        self.package = module if is_package else module.rsplit(".", 1)[0]
        self.found: List[Import] = []
        self._type_only = 0

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):
            self._type_only += 1
            for child in node.body:
                self.visit(child)
            self._type_only -= 1
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def _add(self, name: str, line: int) -> None:
        self.found.append(Import(self.module, name, line, self._type_only > 0))

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(alias.name, node.lineno)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level:
            base_parts = self.package.split(".")
            base_parts = base_parts[: len(base_parts) - (node.level - 1)]
            base = ".".join(base_parts + ([node.module] if node.module else []))
        else:
            base = node.module or ""
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            # "from . import frames": the submodule is what is used
            self._add(sub if sub in CORE or _is_extra(sub) else base, node.lineno)


def _is_extra(name: str) -> bool:
    parts = name.split(".")
    return len(parts) == 2 and parts[0] == PKG and parts[1] in EXTRA_SUBPACKAGES


def imports_of(module: str) -> List[Import]:
    path = CORE[module]
    collector = _Collector(module, path.name == "__init__.py")
    collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return collector.found


ALL_IMPORTS: List[Import] = [imp for m in CORE for imp in imports_of(m)]


def _internal_target(imp: Import) -> str:
    """The core module an internal import lands in (a package counts as its __init__)."""
    name = imp.name
    while name not in CORE and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def _is_stdlib(top: str) -> bool:
    names: FrozenSet[str] = getattr(sys, "stdlib_module_names", frozenset())
    if names:
        return top in names
    # Python 3.9 has no sys.stdlib_module_names: judge by where the module lives.
    if top in sys.builtin_module_names:
        return True
    spec = importlib.util.find_spec(top)
    if spec is None or spec.origin is None:
        return False
    if spec.origin in ("built-in", "frozen"):
        return True
    origin = os.path.realpath(spec.origin)
    stdlib_dirs = {os.path.realpath(sysconfig.get_paths()[k]) for k in ("stdlib", "platstdlib")}
    in_stdlib = any(origin.startswith(d + os.sep) for d in stdlib_dirs)
    return in_stdlib and "site-packages" not in origin and "dist-packages" not in origin


def _fail(violations: List[str]) -> None:
    if violations:
        pytest.fail("layer rule broken:\n  " + "\n  ".join(violations), pytrace=False)


# -- the walker itself ------------------------------------------------------------------------


def test_the_walker_sees_known_edges() -> None:
    """Guard against a walker that silently finds nothing."""
    loop = {i.name for i in imports_of("tether_sync.engine.loop")}
    assert {"threading", "tether_sync.engine.connection"} <= loop
    assert "selectors" in {i.name for i in imports_of("tether_sync.engine.poller")}
    assert "tether_sync.engine" in {i.name for i in imports_of(CLIENT)}
    assert all(i.name.startswith("tether_sync.") for i in imports_of("tether_sync"))
    assert {"protocol", "engine", "cli", "top"} == {tier(m) for m in CORE}


def test_the_walker_resolves_relative_and_type_checking_imports() -> None:
    tree = ast.parse(
        textwrap.dedent(
            """
            import json
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from .loop import IoLoop
            else:
                import time
            def f():
                from ..protocol import frames
                from .. import clock
            """
        )
    )
    collector = _Collector("tether_sync.engine.probe", is_package=False)
    collector.visit(tree)
    got = {(i.name, i.type_only) for i in collector.found}
    assert got == {
        ("json", False),
        ("typing", False),
        ("tether_sync.engine.loop", True),
        ("time", False),
        ("tether_sync.protocol.frames", False),
        ("tether_sync.clock", False),
    }


def test_no_module_is_left_outside_the_tiers() -> None:
    subpackages = {p.parent.name for p in PKG_DIR.glob("*/__init__.py")}
    assert subpackages <= EXTRA_SUBPACKAGES | TIERS, (
        f"new subpackage(s) {sorted(subpackages - EXTRA_SUBPACKAGES - TIERS)}: place them in a tier"
    )


# -- the tiers ---------------------------------------------------------------------------------


def test_protocol_is_sans_io() -> None:
    _fail(
        [
            f"{imp} (protocol/ is sans-I/O: no threads, sockets, selectors or time)"
            for imp in ALL_IMPORTS
            if tier(imp.importer) == "protocol"
            and not imp.internal
            and (imp.top in PROTOCOL_FORBIDDEN or not _is_stdlib(imp.top))
        ]
    )


def test_protocol_imports_only_protocol_and_exceptions() -> None:
    _fail(
        [
            f"{imp} (protocol/ may import protocol/ and tether_sync.exceptions only)"
            for imp in ALL_IMPORTS
            if tier(imp.importer) == "protocol"
            and imp.internal
            and tier(_internal_target(imp)) != "protocol"
            and _internal_target(imp) != "tether_sync.exceptions"
        ]
    )


def test_only_the_client_imports_the_engine() -> None:
    _fail(
        [
            f"{imp} (engine/ is reached through client.py only)"
            for imp in ALL_IMPORTS
            if imp.internal
            and tier(_internal_target(imp)) == "engine"
            and tier(imp.importer) != "engine"
            and imp.importer != CLIENT
        ]
    )


# What client.py may import of the engine: the interface (engine/__init__.py: Engine and
# what the client needs before any thread runs) and the commands it posts.
ENGINE_INTERFACE = frozenset({"tether_sync.engine", "tether_sync.engine.commands"})


def test_the_client_reaches_the_engine_through_its_interface() -> None:
    _fail(
        [
            f"{imp} (client.py uses the Engine interface: tether_sync.engine, its commands)"
            for imp in imports_of(CLIENT)
            if imp.internal
            and tier(_internal_target(imp)) == "engine"
            and _internal_target(imp) not in ENGINE_INTERFACE
        ]
    )


def test_the_engine_does_not_import_the_client_or_the_applications() -> None:
    _fail(
        [
            f"{imp} (the engine sits below client.py, the CLI and the integrations)"
            for imp in ALL_IMPORTS
            if tier(imp.importer) == "engine"
            and imp.internal
            and (
                _internal_target(imp) in {CLIENT, PKG} | INTEGRATIONS
                or tier(_internal_target(imp)) == "cli"
            )
        ]
    )


def test_no_core_module_imports_the_cli_or_the_integrations() -> None:
    _fail(
        [
            f"{imp} (the CLI and the integrations are applications of the public API)"
            for imp in ALL_IMPORTS
            if imp.internal
            and tier(imp.importer) != "cli"
            and imp.importer not in INTEGRATIONS | {"tether_sync.__main__"}
            and (tier(_internal_target(imp)) == "cli" or _internal_target(imp) in INTEGRATIONS)
        ]
    )


def test_only_the_transport_and_the_poller_touch_the_socket() -> None:
    _fail(
        [
            f"{imp} (only engine/transport.py and engine/poller.py touch the socket)"
            for imp in ALL_IMPORTS
            if imp.top in ("socket", "ssl", "websocket")
            and imp.importer not in SOCKET_OWNERS
            and tier(imp.importer) != "cli"
        ]
    )


def test_only_the_poller_uses_a_selector() -> None:
    _fail(
        [
            f"{imp} (the I/O thread blocks in one place: engine/poller.py)"
            for imp in ALL_IMPORTS
            if imp.top in ("selectors", "select") and imp.importer not in SELECTOR_OWNERS
        ]
    )


# -- the whole graph ---------------------------------------------------------------------------


def _cycles() -> List[List[str]]:
    graph: Dict[str, Set[str]] = {m: set() for m in CORE}
    for imp in ALL_IMPORTS:
        if imp.internal and not _is_extra(imp.name):
            target = _internal_target(imp)
            # a package's __init__ re-exporting its modules is not an edge back into it
            if target != imp.importer and target in CORE and target != PKG:
                graph[imp.importer].add(target)
    found: List[List[str]] = []
    state: Dict[str, int] = {}
    stack: List[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


# Cycles tolerated for now. Empty, and meant to stay so: where two parts need each
# other, one of them is handed a small callable or a typed event (STYLE §5).
KNOWN_CYCLES: FrozenSet[str] = frozenset()


def test_no_import_circle_not_even_for_type_checking() -> None:
    _fail([c for c in (" -> ".join(cycle) for cycle in _cycles()) if c not in KNOWN_CYCLES])


def test_the_core_never_imports_the_extras() -> None:
    _fail(
        [
            f"{imp} (the core must not import the server/demo/testing extras)"
            for imp in ALL_IMPORTS
            if (_is_extra(imp.name) or imp.top in EXTRAS)
            and imp.importer not in INTEGRATIONS
            and tier(imp.importer) != "cli"  # ``serve`` and ``demo`` import them lazily
        ]
    )


def test_core_third_party_imports_are_websocket_client_only() -> None:
    _fail(
        [
            f"{imp} (only the stdlib and websocket-client are runtime dependencies)"
            for imp in ALL_IMPORTS
            if not imp.internal
            and not _is_stdlib(imp.top)
            and imp.top not in THIRD_PARTY_ALLOWED
            and imp.importer not in INTEGRATIONS
        ]
    )


def test_the_top_level_stays_small() -> None:
    top = sorted(m for m in CORE if tier(m) == "top" and m not in {PKG, "tether_sync.__main__"})
    assert len(top) <= 20, f"{len(top)} modules at the top level: {top}"


def test_package_init_only_re_exports() -> None:
    tree = ast.parse((PKG_DIR / "__init__.py").read_text(encoding="utf-8"))
    logic: List[str] = []
    for i, node in enumerate(tree.body):
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            continue
        targets = node.targets if isinstance(node, ast.Assign) else []
        if [t.id for t in targets if isinstance(t, ast.Name)] == ["__all__"]:
            continue
        logic.append(f"tether_sync/__init__.py:{node.lineno} {type(node).__name__}")
    _fail([f"{where} (__init__ re-exports only; no logic)" for where in logic])


# -- the extras really are optional ------------------------------------------------------------


def test_import_works_without_websockets_and_flask() -> None:
    code = textwrap.dedent(
        """
        import sys
        for name in ("websockets", "flask", "werkzeug"):
            sys.modules[name] = None  # any import of them now raises ImportError
        import tether_sync
        from tether_sync import TetherClient, Auth, Reconnect, Heartbeat, Queue, Backpressure
        loaded = sorted(
            m for m in sys.modules
            if m.startswith(("tether_sync.server", "tether_sync.demo"))
            or (m.split(".")[0] in ("websockets", "flask", "werkzeug")
                and sys.modules[m] is not None)
        )
        assert not loaded, loaded
        print("ok", tether_sync.__version__)
        """
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=str(ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok ")


def test_integrations_use_the_public_api_and_nothing_imports_them() -> None:
    problems = []
    for name in sorted(INTEGRATIONS):
        for imp in imports_of(name):
            if imp.internal and imp.name != PKG:
                problems.append(f"{imp} (integrations import the public API: from tether_sync)")
    _fail(problems)


def test_integrations_import_without_their_toolkits() -> None:
    code = textwrap.dedent(
        """
        import sys
        for name in ("tkinter", "PySide6", "PyQt6", "PyQt5", "PySide2", "flask"):
            sys.modules[name] = None  # any import of them now raises ImportError
        import tether_sync.dispatchers
        print("ok")
        """
    )
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=str(ROOT),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr
