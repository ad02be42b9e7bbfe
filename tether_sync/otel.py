"""OpenTelemetry metrics for a :class:`~tether_sync.TetherClient` (DESIGN §8).

Install with ``pip install tether-sync[otel]`` (``opentelemetry-api`` only: the
SDK and the exporter are the application's choice)::

    from tether_sync.otel import instrument

    client = TetherClient(url)
    metrics = instrument(client)          # the global MeterProvider, or pass one
    ...
    metrics.uninstrument()                # the instruments report nothing more

Every instrument is fed from the counters the I/O thread keeps anyway
(``stats()``): counters and gauges are *observable* instruments, read when the
SDK collects, so instrumentation adds no work per message. The two histograms
(round-trip time and connection-attempt duration) are recorded at collection
too, from the samples the I/O thread keeps once per heartbeat and per attempt
(at most :data:`~tether_sync.stats.SAMPLES` between two collections). One
collection takes one ``stats()`` snapshot, shared by all its callbacks.

Instruments (names follow OpenTelemetry's rules: lowercase, dot-separated,
units in UCUM, counts in ``{...}`` annotations, durations in seconds):

=========================================  ===============  ==========================
name                                       kind, unit       attributes
=========================================  ===============  ==========================
``tether.client.messages.sent``            counter          (data messages written)
``tether.client.messages.received``        counter          (handed to the application)
``tether.client.messages.acked``           counter          (server acknowledged, §5)
``tether.client.messages.resent``          counter          (written again after a reconnect)
``tether.client.messages.dropped``         counter          ``direction``, ``reason``
``tether.client.bytes.sent``               counter, By
``tether.client.bytes.received``           counter, By
``tether.client.reconnects``               counter          ``cause``
``tether.client.connection.attempts``      counter
``tether.client.connection.failures``      counter
``tether.client.connection.duration``      histogram, s     ``outcome``
``tether.client.round_trip_time``          histogram, s     (heartbeat ping to pong)
``tether.client.queue.depth``              updowncounter    (messages waiting)
``tether.client.in_flight``                updowncounter    (taken, not yet done)
``tether.client.buffered``                 updowncounter,   (``buffered_amount``)
                                           By
``tether.client.inbound.depth``            updowncounter    ``tether.channel`` (opt-in)
=========================================  ===============  ==========================

Every measurement carries ``url.full`` (the client's first endpoint, with
credentials and every query value redacted) and ``tether.protocol``. The
channel is an attribute only with ``channels=True`` (a channel per user or per
symbol would explode the number of series).

``reason`` of a dropped message is the overflow policy that dropped it
(``drop-oldest``, ``drop-newest``, ``reject``, ``sample-oldest``); ``cause`` of
a reconnect is what lost the link before it (``connection_lost``,
``server_close``, ``heartbeat``, ``protocol_error``, ...; see
:func:`tether_sync.stats.close_cause`).
"""

from __future__ import annotations

import threading
import weakref
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional

from tether_sync import Stats, __version__, redact_url

if TYPE_CHECKING:
    from opentelemetry.metrics import CallbackOptions, Histogram, MeterProvider, Observation

    from tether_sync import TetherClient


class Instrumentation:
    """The instruments :func:`instrument` registered for one client.

    OpenTelemetry's API cannot unregister an observable instrument; after
    :meth:`uninstrument` its callbacks report nothing, and the client is no
    longer referenced (it can be garbage collected).

    Args:
        client: The client to observe.
        meter_provider: Where the instruments are created.
        channels: Add ``tether.channel`` to the inbound depth.
    """

    def __init__(
        self, client: TetherClient, meter_provider: MeterProvider, channels: bool = False
    ) -> None:
        from opentelemetry.metrics import Observation

        self._observation = Observation
        self._client: Optional[weakref.ReferenceType[TetherClient]] = weakref.ref(client)
        # The I/O thread's counters (tether_sync.stats.Counters): read-only here,
        # but for the sample deques, which this drains.
        self._counters: Any = client._loop.counters
        self._channels = channels
        self._base: Dict[str, Any] = {
            "url.full": redact_url(client.url, every_value=True),
            "tether.protocol": client._config.protocol,
        }
        # Guards the snapshot cache (one stats() per collection, whatever thread collects).
        self._lock = threading.Lock()
        self._snapshot: Optional[Stats] = None
        # The SDK hands every callback of one collection the same CallbackOptions
        # object: a snapshot serves the collection that took it (the reference
        # is kept so that its id cannot be reused by a later collection's).
        self._taken_for: Optional[object] = None
        # Samples taken before instrumenting are not reported as new ones.
        self._counters.rtt_samples.clear()
        self._counters.attempt_samples.clear()

        meter = meter_provider.get_meter("tether_sync", __version__)
        self._rtt: Histogram = meter.create_histogram(
            "tether.client.round_trip_time",
            unit="s",
            description="Heartbeat round-trip time, ping to pong.",
        )
        self._attempt: Histogram = meter.create_histogram(
            "tether.client.connection.duration",
            unit="s",
            description="How long each connection attempt took until the link opened or failed.",
        )
        counters: List[tuple[str, str, str, Callable[[Stats], Iterable[Observation]]]] = [
            (
                "tether.client.messages.sent",
                "{message}",
                "Data messages written to the socket.",
                self._one(lambda s: s.sent),
            ),
            (
                "tether.client.messages.received",
                "{message}",
                "Inbound messages handed to the application.",
                self._one(lambda s: s.received),
            ),
            (
                "tether.client.messages.acked",
                "{message}",
                "Messages the server acknowledged.",
                self._one(lambda s: s.acked),
            ),
            (
                "tether.client.messages.resent",
                "{message}",
                "Messages written again after a reconnect because no ack came.",
                self._one(lambda s: s.resent),
            ),
            (
                "tether.client.messages.dropped",
                "{message}",
                "Messages dropped by an overflow policy, by direction and policy.",
                self._dropped,
            ),
            (
                "tether.client.bytes.sent",
                "By",
                "Bytes the kernel accepted (WebSocket frames after the handshake).",
                self._one(lambda s: s.bytes_sent),
            ),
            (
                "tether.client.bytes.received",
                "By",
                "Bytes read from the socket after the handshake.",
                self._one(lambda s: s.bytes_received),
            ),
            (
                "tether.client.reconnects",
                "{reconnect}",
                "Connections opened after the first, by what lost the link before.",
                self._reconnects,
            ),
            (
                "tether.client.connection.attempts",
                "{attempt}",
                "Connection attempts started.",
                self._one(lambda s: s.connect_attempts),
            ),
            (
                "tether.client.connection.failures",
                "{attempt}",
                "Connection attempts that ended before the link opened.",
                self._one(lambda s: s.connect_failures),
            ),
        ]
        for name, unit, text, fn in counters:
            meter.create_observable_counter(
                name, callbacks=[self._callback(fn)], unit=unit, description=text
            )
        gauges: List[tuple[str, str, str, Callable[[Stats], Iterable[Observation]]]] = [
            (
                "tether.client.queue.depth",
                "{message}",
                "Messages waiting in the outbound queue.",
                self._one(lambda s: s.queue_depth),
            ),
            (
                "tether.client.in_flight",
                "{message}",
                "Messages taken from the queue and not yet done.",
                self._one(lambda s: s.in_flight),
            ),
            (
                "tether.client.buffered",
                "By",
                "Bytes framed but not yet sent by the kernel (buffered_amount).",
                self._one(lambda s: s.buffered_amount),
            ),
            (
                "tether.client.inbound.depth",
                "{message}",
                "Inbound payloads waiting for the application.",
                self._inbound,
            ),
        ]
        for name, unit, text, fn in gauges:
            meter.create_observable_up_down_counter(
                name, callbacks=[self._callback(fn)], unit=unit, description=text
            )

    @property
    def active(self) -> bool:
        """False once :meth:`uninstrument` was called (or the client was collected)."""
        return self._client is not None and self._client() is not None

    def uninstrument(self) -> None:
        """Stop reporting: every callback returns nothing from now on (idempotent)."""
        with self._lock:
            self._client = None
            self._snapshot = None
            self._taken_for = None

    # ------------------------------------------------------------------ callbacks

    def _stats(self, collection: object) -> Optional[Stats]:
        """One ``stats()`` snapshot per collection, whatever thread collects."""
        with self._lock:
            ref = self._client
            client = ref() if ref is not None else None
            if client is None:
                return None
            if self._snapshot is None or self._taken_for is not collection:
                self._snapshot = client.stats()
                self._taken_for = collection
                self._record_samples()
            return self._snapshot

    def _record_samples(self) -> None:
        # The I/O thread appends, we pop: deque operations are atomic.
        counters = self._counters
        rtt, attempts = counters.rtt_samples, counters.attempt_samples
        for _ in range(len(rtt)):
            self._rtt.record(rtt.popleft(), self._base)
        for _ in range(len(attempts)):
            seconds, opened = attempts.popleft()
            outcome = "success" if opened else "failure"
            self._attempt.record(seconds, {**self._base, "outcome": outcome})

    def _callback(
        self, fn: Callable[[Stats], Iterable[Observation]]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            stats = self._stats(options)
            return () if stats is None else list(fn(stats))

        return callback

    def _one(self, value: Callable[[Stats], int]) -> Callable[[Stats], Iterable[Observation]]:
        def observe(stats: Stats) -> Iterable[Observation]:
            return [self._observation(value(stats), self._base)]

        return observe

    def _dropped(self, stats: Stats) -> Iterable[Observation]:
        client = self._client() if self._client is not None else None
        out = []
        if client is not None:
            policy = client._loop.outbox.overflow
            out.append(
                self._observation(
                    stats.dropped_outbound,
                    {**self._base, "direction": "outbound", "reason": policy},
                )
            )
        for policy, count in stats.dropped_inbound_by_policy.items():
            attrs = {**self._base, "direction": "inbound", "reason": policy}
            out.append(self._observation(count, attrs))
        return out

    def _reconnects(self, stats: Stats) -> Iterable[Observation]:
        return [
            self._observation(count, {**self._base, "cause": cause})
            for cause, count in stats.reconnects_by_cause.items()
        ]

    def _inbound(self, stats: Stats) -> Iterable[Observation]:
        if not self._channels:
            return [self._observation(sum(stats.inbound_depth.values()), self._base)]
        return [
            self._observation(depth, {**self._base, "tether.channel": channel})
            for channel, depth in stats.inbound_depth.items()
        ]


def instrument(
    client: TetherClient,
    meter_provider: Optional[MeterProvider] = None,
    *,
    channels: bool = False,
) -> Instrumentation:
    """Register OpenTelemetry instruments that report ``client``'s counters.

    Args:
        client: The client to observe (connected or not).
        meter_provider: Where to create the instruments; the global one
            (``opentelemetry.metrics.get_meter_provider()``) by default.
        channels: Report the inbound depth per channel (``tether.channel``).
            Off by default: channels are often unbounded in number.

    Returns:
        A handle whose :meth:`~Instrumentation.uninstrument` stops the reporting.

    Raises:
        ImportError: ``opentelemetry-api`` is not installed (``tether-sync[otel]``).
    """
    try:
        from opentelemetry import metrics
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "tether_sync.otel needs opentelemetry-api: pip install tether-sync[otel]"
        ) from exc
    provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
    return Instrumentation(client, provider, channels)


__all__ = ["Instrumentation", "instrument"]
