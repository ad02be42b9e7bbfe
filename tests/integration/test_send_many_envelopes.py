"""``send_many()`` builds its envelopes in one loop: the same text ``send()`` makes.

``send_many`` encodes a batch with the channel's prefix and the id quoting done
once (issue 22); what the server receives must be exactly the envelopes, ids and
payloads of ``encode_data``, for any channel and payload, with or without a
durable outbox (whose rows get the ids too).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, List

import pytest

from tether_sync import Queue, TetherClient
from tether_sync.durable import DurableStore
from tether_sync.protocol.envelope import encode_data

if TYPE_CHECKING:
    from tether_sync.server import TetherServer

CHANNELS = ["plain", 'q"uote', "null", "~tilde~", "é ✓ 通道", "back\\slash", "nl\nx"]
PAYLOADS: List[Any] = [
    "text",
    None,
    0,
    -1.5,
    True,
    [1, "two", None],
    {"k": "v", "null": None, "n": 3},
    'a "quoted" ~ string null',
    "é ✓ 通道 \u2028",
    "",
]


@pytest.mark.parametrize("durable", [False, True])
def test_the_server_gets_exactly_what_send_would_have_sent(
    tether_server: TetherServer, tmp_path: Path, durable: bool
) -> None:
    path = str(tmp_path / "outbox.sqlite")
    client = TetherClient(tether_server.url, queue=Queue(path=path) if durable else Queue())
    made = []
    try:
        client.connect(wait=True, timeout=10)
        for channel in CHANNELS:
            made += [(channel, d) for d in client.send_many(PAYLOADS, channel=channel)]
        assert client.flush(timeout=10) is True
    finally:
        assert client.close(timeout=10) is True
    for channel, d in made:
        assert d._data == encode_data(channel, d.payload, d.id).encode()
    got = [r.message for r in tether_server.received() if r.is_json and "payload" in r.message]
    want = [(channel, d.payload, d.id) for channel, d in made]
    assert [(m["channel"], m["payload"], m["id"]) for m in got] == want
    assert len({d.id for _, d in made}) == len(made)


def test_offline_the_outbox_rows_carry_each_envelopes_id(tmp_path: Path) -> None:
    path = str(tmp_path / "outbox.sqlite")
    client = TetherClient("ws://127.0.0.1:9/", queue=Queue(path=path))  # nobody listens
    try:
        made = client.send_many(PAYLOADS, channel="~off line~")
    finally:
        client.close(timeout=0.5)  # False: nothing was delivered; the file keeps it all
    store = DurableStore(path)
    try:
        rows = [(m.msg_id, m.channel, m.data) for m in store.pending()]
    finally:
        assert store.close()
    assert rows == [(d.id, "~off line~", d._data) for d in made]


def test_a_payload_too_large_fails_the_whole_batch(tether_server: TetherServer) -> None:
    client = TetherClient(tether_server.url, max_message_size=200)
    try:
        client.connect(wait=True, timeout=10)
        with pytest.raises(ValueError, match="max_message_size"):
            client.send_many(["small", "x" * 300, "small"], channel="big")
        assert client.queue_depth == 0
    finally:
        assert client.close(timeout=10) is True
