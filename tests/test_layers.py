"""The import graph of tether_sync follows the layers of STYLE.md §5.

Every core module (``tether_sync/*.py`` except ``cli.py`` and ``__main__.py``; the
``server/`` and ``demo/`` extras are not core) has a layer, and its imports, found by
walking the ``ast`` (imports inside functions included), only go downwards:

=====  =========================================  ===========================================
L0     events, clock, exceptions, version         stdlib only
L1     options, backoff, state, envelope,         stdlib + L0. Pure: no threads, no I/O, no
       buffers, tokens, timers, stats, frames,    clock (not threading, socket, selectors,
       writebuf, session (sans-I/O protocol)      time, websocket, nor their relatives below)
L2     auth, subscription, delivery, outbox,      L0-L1, threading, queue, concurrent; no socket
       dispatch, commands, routing, handoff
L3     transport                                  only transport may use socket/ssl/websocket
L3     loop                                       everything below; the only selectors user
L4     client                                     everything below
L5     __init__                                   re-exports only, no logic
L6     connect_cli (``tether-sync connect``)      an application of the public API, lazily
                                                  imported by cli.py; no core module imports it
=====  =========================================  ===========================================

Imports under ``if TYPE_CHECKING:`` make no runtime edge, so they are exempt from the
direction rule (the loop's mixins name ``LoopConfig`` that way), not from the others.
Nothing in the core imports ``tether_sync.server``/``tether_sync.demo``, ``websockets``
or ``flask``; ``import tether_sync`` works without them.
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
from typing import Dict, FrozenSet, List, NamedTuple

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG_DIR = ROOT / "tether_sync"
PKG = "tether_sync"

# Integrations (issue 12) sit on top of the public API, import their toolkit (tkinter,
# Qt, asyncio, flask) lazily, and no core module imports them: see the test below.
INTEGRATIONS = frozenset({"dispatchers.py", "flask.py", "otel.py"})  # otel: issue 21
NOT_CORE_FILES = frozenset({"cli.py", "__main__.py"}) | INTEGRATIONS
EXTRA_SUBPACKAGES = frozenset({"server", "demo", "testing"})  # testing: the pytest plugin

# The rank of each core module: a runtime import must go to a strictly lower rank.
# int(rank) is the layer; inside L3 the loop's helpers are ordered below the loop.
RANK: Dict[str, float] = {
    # L0
    "events": 0,
    "clock": 0,
    "exceptions": 0,
    "version": 0,
    # L1
    "options": 1,
    "backoff": 1,
    "state": 1,
    "envelope": 1,
    "buffers": 1,
    "tokens": 1,
    "timers": 1,
    "stats": 1,
    "frames": 1,
    "deflate": 1,  # permessage-deflate codec (zlib only)
    "redact": 1,  # credentials out of a URL before it is shown (urllib.parse only)
    "heartbeat": 1,  # planned in STYLE §5
    "router": 1,  # planned in STYLE §5
    "writebuf": 1.2,  # framed bytes waiting for the socket, pure bookkeeping
    "session": 1.5,  # one connection's protocol, sans I/O (DESIGN §4)
    "flow": 1,  # outbound high-water-mark policy
    "shutdown": 1,  # close()/flush() policy: drain until the deadline, flush waiters
    "interest": 1,  # the socket's selector registration, as bookkeeping
    "poller": 3.05,  # the selector and the wake pair: where the I/O thread blocks
    "loopconfig": 1.6,  # LoopConfig, the loop's Timer names, the SessionConfig built from it
    # L2
    "auth": 2,
    "subscription": 2,
    "delivery": 2,
    "outbox": 2,
    "durable": 2,  # the durable outbox store (sqlite3, fcntl; no socket)
    "dispatch": 2.1,
    "commands": 2.5,
    "routing": 2.6,
    "handoff": 2.7,
    "authflow": 2.8,
    "mailbox": 2.55,  # the loop's command inbox (lock, wake byte, refusal once ended)
    "logfields": 2,  # log records' structured fields (a thread-local), URL redaction
    "lifecycle": 3.4,  # State, attempts, backoff, close() and the end, across connections
    "aftermath": 2.9,  # a lost link / failed attempt: carry, give back, retry or give up
    # L3: the socket adapter, then the loop
    "transport": 3.0,
    "connector": 3.1,  # one attempt's handshake, as run on a connector thread
    "connection": 3.2,  # one open connection: its session, its link, the bytes between
    "dialer": 3.3,  # connection attempts, each on a connector thread
    "loop": 3.5,
    # L4
    "client": 4,
    # L5
    "__init__": 5,
    # L6: command-line applications on top of the package (cli.py itself is not walked)
    "connect_cli": 6,
}
LOOP = "loop"
POLLER = "poller"  # the loop's selector and wake pair (where its thread blocks)
DIALER = "dialer"  # starts the connector threads (the handshake is blocking)

THREADS = frozenset({"threading", "_thread", "queue", "concurrent", "multiprocessing"})
IO = frozenset({"socket", "ssl", "selectors", "select", "asyncio", "subprocess", "websocket"})
L1_FORBIDDEN = THREADS | IO | {"time"}
L2_FORBIDDEN = IO
L3_HELPER_FORBIDDEN = THREADS | {"selectors", "select", "asyncio"}
EXTRAS = frozenset({"websockets", "flask", "werkzeug"})
THIRD_PARTY_ALLOWED = frozenset({"websocket"})  # runtime dependency: websocket-client only


class Import(NamedTuple):
    importer: str  # short name of the core module, e.g. "loop"
    name: str  # absolute dotted module name, e.g. "tether_sync.clock" or "json"
    line: int
    type_only: bool  # under "if TYPE_CHECKING:"

    @property
    def top(self) -> str:
        return self.name.split(".")[0]

    @property
    def internal(self) -> bool:
        return self.top == PKG

    @property
    def target(self) -> str:
        """For an internal import: the core module's short name ("__init__" for the package)."""
        parts = self.name.split(".")
        return parts[1] if len(parts) > 1 else "__init__"

    def __str__(self) -> str:
        return f"tether_sync/{self.importer}.py:{self.line} imports {self.name}"


def core_modules() -> List[str]:
    return sorted(p.stem for p in PKG_DIR.glob("*.py") if p.name not in NOT_CORE_FILES)


def _is_submodule(name: str) -> bool:
    return (PKG_DIR / f"{name}.py").exists() or (PKG_DIR / name / "__init__.py").exists()


def _from_targets(node: ast.ImportFrom) -> List[str]:
    """Absolute module names that ``from X import a, b`` makes use of."""
    if node.level == 0:
        base = node.module or ""
    elif node.level == 1:  # core modules sit directly in the package
        base = PKG + ("." + node.module if node.module else "")
    else:  # above the package: not ours, but report it as written
        base = "." * node.level + (node.module or "")
    if base == PKG:  # "from . import a, b" / "from tether_sync import a": maybe submodules
        return [f"{PKG}.{a.name}" if _is_submodule(a.name) else PKG for a in node.names]
    return [base]


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


class _Collector(ast.NodeVisitor):
    def __init__(self, module: str) -> None:
        self.module = module
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
        for name in _from_targets(node):
            self._add(name, node.lineno)


def imports_of(module: str) -> List[Import]:
    path = PKG_DIR / f"{module}.py"
    collector = _Collector(module)
    collector.visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return collector.found


ALL_IMPORTS: List[Import] = [imp for m in core_modules() for imp in imports_of(m)]


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


def _layer(module: str) -> int:
    return int(RANK[module])


def _is_loop_helper(module: str) -> bool:
    return module in RANK and _layer(module) == 3 and module != LOOP


def _fail(violations: List[str]) -> None:
    if violations:
        pytest.fail("layer rule broken:\n  " + "\n  ".join(violations), pytrace=False)


# -- the walker itself ------------------------------------------------------------------------


def test_import_walker_sees_known_edges() -> None:
    """Guard against a walker that silently finds nothing."""
    assert {"threading", "tether_sync.connection"} <= {i.name for i in imports_of("loop")}
    assert "selectors" in {i.name for i in imports_of("poller")}
    assert "tether_sync.loop" in {i.name for i in imports_of("client")}
    assert all(i.name.startswith("tether_sync.") for i in imports_of("__init__"))


def test_import_walker_marks_type_checking_imports() -> None:
    tree = ast.parse(
        textwrap.dedent(
            """
            import json
            from typing import TYPE_CHECKING
            if TYPE_CHECKING:
                from .loop import LoopConfig
            else:
                import time
            def f():
                from . import clock
            """
        )
    )
    collector = _Collector("probe")
    collector.visit(tree)
    got = {(i.name, i.type_only) for i in collector.found}
    assert got == {
        ("json", False),
        ("typing", False),
        ("tether_sync.loop", True),
        ("time", False),
        ("tether_sync.clock", False),
    }


# -- every module has a layer ----------------------------------------------------------------


def test_every_core_module_has_a_layer() -> None:
    missing = [m for m in core_modules() if m not in RANK]
    assert not missing, f"assign a layer (STYLE §5) in tests/test_layers.py to: {missing}"


def test_only_the_extras_are_subpackages() -> None:
    subpackages = {p.parent.name for p in PKG_DIR.glob("*/__init__.py")}
    assert subpackages <= EXTRA_SUBPACKAGES, (
        f"new subpackage(s) {sorted(subpackages - EXTRA_SUBPACKAGES)}: give them a layer"
    )


# -- direction -------------------------------------------------------------------------------


def test_internal_imports_only_go_down() -> None:
    _fail(
        [
            f"{imp} (L{_layer(imp.importer)} {imp.importer} may only import modules ranked"
            f" below it; {imp.target} is L{_layer(imp.target)})"
            for imp in ALL_IMPORTS
            if imp.internal
            and not imp.type_only
            and imp.importer in RANK
            and imp.target in RANK
            and RANK[imp.target] >= RANK[imp.importer]
        ]
    )


def test_core_never_imports_the_extras() -> None:
    _fail(
        [
            f"{imp} (the core must not import the server/demo extras)"
            for imp in ALL_IMPORTS
            if (imp.internal and imp.target in EXTRA_SUBPACKAGES) or imp.top in EXTRAS
        ]
    )


def test_core_third_party_imports_are_websocket_client_only() -> None:
    _fail(
        [
            f"{imp} (only the stdlib and websocket-client are runtime dependencies)"
            for imp in ALL_IMPORTS
            if not imp.internal and not _is_stdlib(imp.top) and imp.top not in THIRD_PARTY_ALLOWED
        ]
    )


# -- per layer -------------------------------------------------------------------------------


def test_l0_is_stdlib_only() -> None:
    _fail(
        [
            f"{imp} (L0 imports the stdlib only)"
            for imp in ALL_IMPORTS
            if RANK.get(imp.importer) == 0 and (imp.internal or not _is_stdlib(imp.top))
        ]
    )


def test_l1_is_pure() -> None:
    _fail(
        [
            f"{imp} (L1 is pure policy: no threads, no I/O, no clock)"
            for imp in ALL_IMPORTS
            if RANK.get(imp.importer) == 1
            and not imp.internal
            and (imp.top in L1_FORBIDDEN or not _is_stdlib(imp.top))
        ]
    )


def test_l2_has_no_socket() -> None:
    _fail(
        [
            f"{imp} (L2 may use threads but no socket, selectors or websocket)"
            for imp in ALL_IMPORTS
            if RANK.get(imp.importer) == 2 and imp.top in L2_FORBIDDEN
        ]
    )


def test_loop_helpers_have_no_threads_or_selector() -> None:
    _fail(
        [
            f"{imp} (the loop's helpers run on its thread; only loop.py starts it)"
            for imp in ALL_IMPORTS
            if _is_loop_helper(imp.importer)
            and imp.top in L3_HELPER_FORBIDDEN
            and not (imp.importer == POLLER and imp.top in ("selectors", "select"))
            and not (imp.importer == DIALER and imp.top == "threading")
        ]
    )


def test_only_loop_imports_selectors() -> None:
    _fail(
        [
            f"{imp} (only loop.py and its poller may use a selector)"
            for imp in ALL_IMPORTS
            if imp.top in ("selectors", "select") and imp.importer not in (LOOP, POLLER)
        ]
    )


def test_only_loop_and_transport_import_socket_and_websocket() -> None:
    _fail(
        [
            f"{imp} (only loop.py and its transport touch the socket)"
            for imp in ALL_IMPORTS
            if imp.top in ("socket", "ssl", "websocket")
            and imp.importer not in (LOOP, POLLER, "transport")
        ]
    )


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
    integrations = {name[: -len(".py")] for name in INTEGRATIONS}
    _fail(
        [
            f"{imp} (the core must not import the integrations)"
            for imp in ALL_IMPORTS
            if imp.internal and imp.target in integrations
        ]
    )
    problems = []
    for name in sorted(integrations):
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
