"""The bundled server never shows a token that came in the URL's query (issue 18)."""

from __future__ import annotations

import logging

import pytest

from tether_sync import TetherClient
from tether_sync.server import TetherServer

SECRET = "s3cr3t-query-token-value"


@pytest.mark.timeout(30)
def test_a_token_in_the_query_is_in_no_server_log_line_or_repr(
    tether_server: TetherServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.DEBUG, logger="tether_sync"):
        client = TetherClient(f"{tether_server.url}ws?token={SECRET}&room=1")
        try:
            client.send("hi").result(timeout=10)
        finally:
            client.close(timeout=5)
    assert tether_server.all_connections, "the client never connected"
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "token=***" in text  # the path is still logged, redacted
    assert SECRET not in text
    assert not [c for c in tether_server.all_connections if SECRET in repr(c)]
