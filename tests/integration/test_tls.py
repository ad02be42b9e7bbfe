"""wss://: the handshake through websocket-client's TLS, then non-blocking TLS I/O."""

from __future__ import annotations

from typing import Any, Callable, Dict

import pytest

from tether_sync import TetherClient

pytest.importorskip("trustme")


# The server: ``conftest.py``'s ``echo`` fixture, on wss:// (a certificate from a test CA).
WSS = pytest.mark.parametrize("echo", ["wss"], indirect=True)


@pytest.mark.timeout(60)
@WSS
def test_wss_echo_small_and_large_messages_in_order(
    echo: Dict[str, Any], make_client: Callable[..., TetherClient]
) -> None:
    client = make_client(
        echo["url"],
        protocol="raw",
        sslopt=echo["sslopt"],
        queue={"max_size": 10_000},
        backpressure={"inbound_overflow": "block"},  # nothing dropped: hold the reads
    )
    inbox = client.subscribe("default")
    client.connect(wait=True, timeout=10)
    # Small frames coalesced into TLS records, and frames far larger than a
    # TLS record (16 KiB) and than the socket buffers: partial writes, and
    # decrypted bytes waiting inside the SSL object (SSLSocket.pending()).
    big = "B" * (2 * 2**20)
    sent = [f"small-{i}" for i in range(2000)] + [big, "after-big", big, "end"]
    for message in sent:
        client.send(message)
    received = [inbox.get(timeout=20) for _ in sent]
    assert received == sent
    assert client.flush(timeout=10)


@pytest.mark.timeout(30)
@WSS
def test_wss_with_an_unknown_ca_fails_through_the_reconnect_path(
    echo: Dict[str, Any], make_client: Callable[..., TetherClient]
) -> None:
    from support.recorder import Recorder

    from tether_sync import TetherError

    client = make_client(
        echo["url"], protocol="raw", reconnect={"base_delay": 0.01, "max_attempts": 1}
    )
    errors = Recorder()
    client.on("error", errors)
    with pytest.raises(TetherError):
        client.connect(wait=True, timeout=10)
    assert errors.wait_count(1)
    # Each failed attempt's cause is reported (once per distinct cause), with the
    # reason; the final error chains it.
    assert "CERTIFICATE_VERIFY_FAILED" in repr(errors.snapshot()[0].error)
    assert errors.wait_count(2)
    assert "CERTIFICATE_VERIFY_FAILED" in repr(errors.snapshot()[-1].error.__cause__)
