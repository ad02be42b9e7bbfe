"""Fixtures for client tests against the bundled server on 127.0.0.1."""

from __future__ import annotations

import ssl
import subprocess
import threading
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional

import pytest
from support.tls import localhost_tls

from tether_sync import TetherClient


@pytest.fixture
def make_client() -> Iterator[Callable[..., TetherClient]]:
    """Build clients that are closed (and their threads joined) after the test."""
    made: List[TetherClient] = []

    def factory(url: str, **options: Any) -> TetherClient:
        options.setdefault("reconnect", {"base_delay": 0.02, "max_delay": 0.2})
        options.setdefault("heartbeat", False)
        client = TetherClient(url, **options)
        made.append(client)
        return client

    yield factory
    for client in made:
        client.close(timeout=3)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs mounted at a fresh directory, unmounted afterwards (root only).

    For the full-disk tests (``test_disk_full.py``, ``test_durable_reopen_after_full.py``).
    """
    mnt = tmp_path / "small"
    mnt.mkdir()
    try:
        done = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(mnt)],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        pytest.skip(f"cannot mount a small tmpfs to fill ({exc}); run as root")
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill: {done.stderr.strip()}; run as root")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True, timeout=30)


@pytest.fixture(params=["ws", "wss"])
def echo(request: Any, tmp_path: Path) -> Iterator[Dict[str, Any]]:
    """A python-websockets echo server, plain or TLS (certificate from a test CA).

    Yields the client's ``url`` and ``sslopt`` (None for ws://). A test that
    needs one of them only says ``@pytest.mark.parametrize("echo", ["ws"], indirect=True)``.
    """
    from websockets.sync.server import ServerConnection, serve

    server_ctx: Optional[ssl.SSLContext] = None
    sslopt: Optional[Dict[str, str]] = None
    if request.param == "wss":
        server_ctx, ca_file, _ = localhost_tls(tmp_path)
        sslopt = {"ca_certs": str(ca_file)}

    def handler(conn: ServerConnection) -> None:
        for message in conn:
            conn.send(message)

    with serve(handler, "localhost", 0, ssl=server_ctx, max_size=None) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        port = server.socket.getsockname()[1]
        yield {"url": f"{request.param}://localhost:{port}/", "sslopt": sslopt}
        server.shutdown()
        thread.join(5)
