"""The distribution: an sdist that builds a working wheel, without build warnings.

Builds sdist and wheel (the wheel from the sdist, as pip does) into a temporary
directory with the installed setuptools (``--no-isolation``: no download), runs
``twine check --strict`` on both, checks what each carries, and imports the wheel
from a fresh target directory to run its console entry point.
"""

from __future__ import annotations

import email
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import List

import pytest

REPO = Path(__file__).resolve().parents[1]
PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    pytest.importorskip("build")
    out = tmp_path_factory.mktemp("dist")
    proc = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(out), str(REPO)],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=out,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    warnings = [
        line
        for line in (proc.stdout + proc.stderr).splitlines()
        if "warn" in line.lower() and "byte-compiling is disabled" not in line
    ]
    assert not warnings, "\n".join(warnings)
    return out


def _one(directory: Path, pattern: str) -> Path:
    (found,) = directory.glob(pattern)
    return found


@pytest.mark.timeout(300)
def test_twine_check_passes(dist: Path) -> None:
    pytest.importorskip("twine")
    files = [str(p) for p in dist.iterdir() if p.suffix in (".whl", ".gz")]
    proc = subprocess.run(
        [sys.executable, "-m", "twine", "check", "--strict", *files],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


def _repo_files(pattern: str) -> List[str]:
    return sorted(
        str(p.relative_to(REPO)) for p in REPO.glob(pattern) if "__pycache__" not in str(p)
    )


@pytest.mark.timeout(300)
def test_the_sdist_carries_tests_examples_docs_and_the_license(dist: Path) -> None:
    sdist = _one(dist, "*.tar.gz")
    with tarfile.open(sdist) as tar:
        names = {name.split("/", 1)[1] for name in tar.getnames() if "/" in name}
    for wanted in ("LICENSE", "README.rst", "tox.ini", "docs/conf.py", "docs/index.rst"):
        assert wanted in names, wanted
    for pattern in ("tests/**/*.py", "examples/*.py", "benchmarks/*.py"):
        missing = [f for f in _repo_files(pattern) if f not in names]
        assert not missing, f"not in the sdist: {missing}"


@pytest.mark.timeout(300)
def test_the_wheel_has_its_data_and_metadata(dist: Path) -> None:
    wheel = _one(dist, "*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        (meta_name,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        meta = email.message_from_bytes(zf.read(meta_name))
    assert "tether_sync/py.typed" in names
    for static in ("index.html", "panel.js", "panel.css", "favicon.svg"):
        assert f"tether_sync/demo/static/{static}" in names
    assert any(n.endswith(".dist-info/LICENSE") or "/licenses/LICENSE" in n for n in names)
    assert not [n for n in names if n.startswith(("tests/", "benchmarks/", "examples/"))]
    classifiers = meta.get_all("Classifier") or []
    for version in PYTHONS:
        assert f"Programming Language :: Python :: {version}" in classifiers
    assert meta["Author"] and meta["License"] == "MIT"
    urls = meta.get_all("Project-URL") or []
    assert {u.split(",")[0] for u in urls} >= {"Documentation", "Source", "Changelog"}


@pytest.mark.timeout(300)
def test_the_wheel_works_on_its_own(dist: Path, tmp_path: Path) -> None:
    wheel = _one(dist, "*.whl")
    target = tmp_path / "site"
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), wheel],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    env = dict(os.environ, PYTHONPATH=str(target))
    code = (
        "import tether_sync, tether_sync.demo, pathlib; "
        "print(tether_sync.__file__); "
        "static = pathlib.Path(tether_sync.demo.__file__).parent / 'static'; "
        "print((static / 'index.html').is_file())"
    )
    ran = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert ran.returncode == 0, ran.stderr
    where, static = ran.stdout.split()
    assert where.startswith(str(target)) and static == "True"
    version = subprocess.run(
        [sys.executable, "-m", "tether_sync", "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert re.fullmatch(r"tether-sync \d+\.\d+\.\d+\S*\n", version.stdout), version
