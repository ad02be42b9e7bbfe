"""What the I/O loop is configured with, and the session config built from it.

Pure values (no threads, no I/O): the loop's :class:`LoopConfig`, its own
:class:`Timer` names, and :func:`session_config`, which turns the loop's
options into one connection's :class:`~tether_sync.protocol.session.SessionConfig`.

The client validates every option before it builds a :class:`LoopConfig`, so
the engine trusts these values (only what a ``headers()`` callable returns is
checked later, on the connector thread, at each connect). A
:class:`~tether_sync.protocol.session.SessionConfig` is made anew for each
connection, because what the handshake agreed (permessage-deflate) differs
from one connection to the next.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Any, Dict, List, Optional

from ..options import Auth, Backpressure, Heartbeat, Queue, Reconnect
from ..protocol.deflate import DeflateParams
from ..protocol.session import SessionConfig


class Timer(str, enum.Enum):
    """The loop's own timers (a session's deadlines come from the session).

    A ``str`` enum: the :class:`~tether_sync.engine.timers.TimerHeap` keys by
    name, and its log and test output reads as the name.
    """

    CONNECT_TIMEOUT = "connect_timeout"
    RECONNECT = "reconnect"
    CLOSE_DEADLINE = "close_deadline"
    KERNEL_POLL = "kernel_poll"
    LINGER = "linger"  # durable outbox: pick up sends that arrived without a wake-up


@dataclasses.dataclass(frozen=True)
class LoopConfig:
    """Everything the loop needs to know about the connection, already validated."""

    url: str  # the first (primary) endpoint
    urls: tuple[str, ...]  # every endpoint, in failover order (urls[0] == url)
    protocol: str
    reconnect: Optional[Reconnect]
    heartbeat: Optional[Heartbeat]
    queue: Optional[Queue]
    backpressure: Backpressure
    headers: Any
    subprotocols: Optional[List[str]]
    sslopt: Optional[Dict[str, Any]]
    connect_timeout: float
    max_message_size: int
    ws_options: Dict[str, Any]
    extensions: tuple[str, ...] = ("ack", "resume")
    compression: Optional[str] = None  # "deflate": offer permessage-deflate


def session_config(
    cfg: LoopConfig, auth: Optional[Auth], rotate: bool, deflate: Optional[DeflateParams]
) -> SessionConfig:
    """One connection's session config.

    Args:
        cfg: The loop's options.
        auth: The ``Auth`` options, or None.
        rotate: Whether the token is rotated in band (see ``AuthFlow.rotates_in_band``).
        deflate: The permessage-deflate parameters the handshake agreed, or None.
    """
    hb = cfg.heartbeat
    # auth_timeout covers one token fetch plus the server's answer (see
    # SessionConfig): Auth.timeout bounds the fetch, and as much again the answer.
    return SessionConfig(
        protocol=cfg.protocol,
        heartbeat=(hb.interval, hb.timeout) if hb else None,
        max_message_size=cfg.max_message_size,
        auth=rotate,
        auth_timeout=auth.timeout * 2 if auth else 20.0,
        refresh_before=auth.refresh_before if auth else 60.0,
        extensions=cfg.extensions if cfg.protocol == "tether" else (),
        deflate=deflate,
    )


__all__ = ["LoopConfig", "Timer", "session_config"]
