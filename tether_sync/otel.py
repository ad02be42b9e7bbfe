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
collection takes one ``stats()`` snapshot per client, shared by all its callbacks.

The instruments are created once per meter provider (OpenTelemetry keeps the
first instrument of a name and would ignore a second one's callbacks); every
client instrumented on the provider is reported through them.

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
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterable, List, Optional, Tuple

from tether_sync import Stats, __version__, redact_url

if TYPE_CHECKING:
    from opentelemetry.metrics import (
        CallbackOptions,
        Histogram,
        Meter,
        MeterProvider,
        Observation,
    )

    from tether_sync import TetherClient


Measure = Callable[["Instrumentation", Stats], Iterable[Tuple[int, Dict[str, Any]]]]
"""One client's ``(value, attributes)`` pairs for one instrument, from its snapshot."""


class Instrumentation:
    """What :func:`instrument` registered for one client.

    OpenTelemetry's API cannot unregister an observable instrument; after
    :meth:`uninstrument` this client is no longer reported, and it is no
    longer referenced (it can be garbage collected).

    Args:
        client: The client to observe.
        channels: Add ``tether.channel`` to the inbound depth.
    """

    def __init__(self, client: TetherClient, channels: bool = False, fresh: bool = True) -> None:
        self._client: Optional[weakref.ReferenceType[TetherClient]] = weakref.ref(client)
        # The I/O thread's counters (tether_sync.stats.Counters): read-only here,
        # but for the sample deques, which this drains.
        self._counters: Any = client._loop.counters
        self._channels = channels
        self.base: Dict[str, Any] = {
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
        if fresh:  # samples taken before instrumenting are not reported as new ones
            self._counters.rtt_samples.clear()
            self._counters.attempt_samples.clear()

    @property
    def active(self) -> bool:
        """False once :meth:`uninstrument` was called (or the client was collected)."""
        return self._client is not None and self._client() is not None

    def uninstrument(self) -> None:
        """Stop reporting: this client's measurements end from now on (idempotent)."""
        with self._lock:
            self._client = None
            self._snapshot = None
            self._taken_for = None

    def _observes(self, client: TetherClient) -> bool:
        ref = self._client
        return ref is not None and ref() is client

    # ------------------------------------------------------------------ per collection

    def _stats(self, collection: object, instruments: _Instruments) -> Optional[Stats]:
        """One ``stats()`` snapshot per collection, whatever thread collects."""
        with self._lock:
            ref = self._client
            client = ref() if ref is not None else None
            if client is None:
                return None
            if self._snapshot is None or self._taken_for is not collection:
                self._snapshot = client.stats()
                self._taken_for = collection
                self._record_samples(instruments)
            return self._snapshot

    def _record_samples(self, instruments: _Instruments) -> None:
        # The I/O thread appends, we pop: deque operations are atomic.
        counters = self._counters
        rtt, attempts = counters.rtt_samples, counters.attempt_samples
        for _ in range(len(rtt)):
            instruments.rtt.record(rtt.popleft(), self.base)
        for _ in range(len(attempts)):
            seconds, opened = attempts.popleft()
            outcome = "success" if opened else "failure"
            instruments.attempt.record(seconds, {**self.base, "outcome": outcome})

    def _dropped(self, stats: Stats) -> Iterable[Tuple[int, Dict[str, Any]]]:
        client = self._client() if self._client is not None else None
        out = []
        if client is not None:
            policy = client._loop.outbox.overflow
            out.append(
                (stats.dropped_outbound, {**self.base, "direction": "outbound", "reason": policy})
            )
        for policy, count in stats.dropped_inbound_by_policy.items():
            out.append((count, {**self.base, "direction": "inbound", "reason": policy}))
        return out

    def _reconnects(self, stats: Stats) -> Iterable[Tuple[int, Dict[str, Any]]]:
        return [
            (count, {**self.base, "cause": cause})
            for cause, count in stats.reconnects_by_cause.items()
        ]

    def _inbound(self, stats: Stats) -> Iterable[Tuple[int, Dict[str, Any]]]:
        if not self._channels:
            return [(sum(stats.inbound_depth.values()), self.base)]
        return [
            (depth, {**self.base, "tether.channel": channel})
            for channel, depth in stats.inbound_depth.items()
        ]


def _one(value: Callable[[Stats], int]) -> Measure:
    def measure(inst: Instrumentation, stats: Stats) -> Iterable[Tuple[int, Dict[str, Any]]]:
        return [(value(stats), inst.base)]

    return measure


COUNTERS: List[Tuple[str, str, str, Measure]] = [
    (
        "tether.client.messages.sent",
        "{message}",
        "Data messages written to the socket.",
        _one(lambda s: s.sent),
    ),
    (
        "tether.client.messages.received",
        "{message}",
        "Inbound messages handed to the application.",
        _one(lambda s: s.received),
    ),
    (
        "tether.client.messages.acked",
        "{message}",
        "Messages the server acknowledged.",
        _one(lambda s: s.acked),
    ),
    (
        "tether.client.messages.resent",
        "{message}",
        "Messages written again after a reconnect because no ack came.",
        _one(lambda s: s.resent),
    ),
    (
        "tether.client.messages.dropped",
        "{message}",
        "Messages dropped by an overflow policy, by direction and policy.",
        lambda inst, stats: inst._dropped(stats),
    ),
    (
        "tether.client.bytes.sent",
        "By",
        "Bytes the kernel accepted (WebSocket frames after the handshake).",
        _one(lambda s: s.bytes_sent),
    ),
    (
        "tether.client.bytes.received",
        "By",
        "Bytes read from the socket after the handshake.",
        _one(lambda s: s.bytes_received),
    ),
    (
        "tether.client.reconnects",
        "{reconnect}",
        "Connections opened after the first, by what lost the link before.",
        lambda inst, stats: inst._reconnects(stats),
    ),
    (
        "tether.client.connection.attempts",
        "{attempt}",
        "Connection attempts started.",
        _one(lambda s: s.connect_attempts),
    ),
    (
        "tether.client.connection.failures",
        "{attempt}",
        "Connection attempts that ended before the link opened.",
        _one(lambda s: s.connect_failures),
    ),
]
"""The observable counters: name, unit, description, measure."""

GAUGES: List[Tuple[str, str, str, Measure]] = [
    (
        "tether.client.queue.depth",
        "{message}",
        "Messages waiting in the outbound queue.",
        _one(lambda s: s.queue_depth),
    ),
    (
        "tether.client.in_flight",
        "{message}",
        "Messages taken from the queue and not yet done.",
        _one(lambda s: s.in_flight),
    ),
    (
        "tether.client.buffered",
        "By",
        "Bytes framed but not yet sent by the kernel (buffered_amount).",
        _one(lambda s: s.buffered_amount),
    ),
    (
        "tether.client.inbound.depth",
        "{message}",
        "Inbound payloads waiting for the application.",
        lambda inst, stats: inst._inbound(stats),
    ),
]
"""The observable up-down counters: name, unit, description, measure."""


SECONDS_BUCKETS: Tuple[float, ...] = (
    *(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1),
    *(0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 30.0, 60.0),
)
"""Bucket boundaries advised for the histograms, in seconds.

The SDK's default boundaries (0, 5, 10, 25, ... 10000) suit milliseconds: a
round trip of 1 ms would fall in the first bucket with everything else. These
are OpenTelemetry's advice for request durations (semantic conventions), with
sub-millisecond ones for a loopback or LAN round trip and longer ones for a
connection attempt that waits out a timeout.
"""


def _histogram(meter: Meter, name: str, description: str) -> Histogram:
    """A histogram in seconds, with :data:`SECONDS_BUCKETS` where the API takes advice."""
    try:
        return meter.create_histogram(
            name,
            unit="s",
            description=description,
            explicit_bucket_boundaries_advisory=SECONDS_BUCKETS,
        )
    except TypeError:  # opentelemetry-api < 1.23: no advisory parameter
        return meter.create_histogram(name, unit="s", description=description)


class _Instruments:
    """The instruments of one meter provider, and the clients they report.

    OpenTelemetry keeps the first instrument of a name (a second one with the
    same name gets no callback), so each provider gets its instruments once,
    and their callbacks report every client instrumented on it. Clients whose
    attributes are the same (the same endpoint) are reported as one series,
    their values added.
    """

    def __init__(self, meter_provider: MeterProvider) -> None:
        from opentelemetry.metrics import Observation

        self._observation = Observation
        # Guards _members (its one purpose: instrument() and collections race).
        self._lock = threading.Lock()
        self._members: List[Instrumentation] = []
        meter = meter_provider.get_meter("tether_sync", __version__)
        self.rtt: Histogram = _histogram(
            meter,
            "tether.client.round_trip_time",
            "Heartbeat round-trip time, ping to pong.",
        )
        self.attempt: Histogram = _histogram(
            meter,
            "tether.client.connection.duration",
            "How long each connection attempt took until the link opened or failed.",
        )
        for name, unit, text, measure in COUNTERS:
            meter.create_observable_counter(
                name, callbacks=[self._callback(measure)], unit=unit, description=text
            )
        for name, unit, text, measure in GAUGES:
            meter.create_observable_up_down_counter(
                name, callbacks=[self._callback(measure)], unit=unit, description=text
            )

    def add(self, client: TetherClient, channels: bool) -> Instrumentation:
        """A new handle of ``client`` (counted once however many handles it has)."""
        with self._lock:
            self._members = [m for m in self._members if m.active]
            fresh = not any(m._observes(client) for m in self._members)
            member = Instrumentation(client, channels, fresh)
            self._members.append(member)
            return member

    def _callback(self, measure: Measure) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            with self._lock:
                members = list(self._members)
            totals: Dict[Tuple[Tuple[str, Any], ...], Tuple[int, Dict[str, Any]]] = {}
            counted = set()  # clients (by their counters) already counted: once each
            for member in members:
                if id(member._counters) in counted:
                    continue
                stats = member._stats(options, self)
                if stats is None:  # uninstrumented, or its client was collected
                    with self._lock:
                        if member in self._members:
                            self._members.remove(member)
                    continue
                counted.add(id(member._counters))
                for value, attrs in measure(member, stats):
                    key = tuple(sorted(attrs.items()))
                    before = totals.get(key)
                    totals[key] = (value + (before[0] if before else 0), attrs)
            return [self._observation(value, attrs) for value, attrs in totals.values()]

        return callback


# Guards _providers and _global (their one purpose): one _Instruments per meter provider.
_providers_lock = threading.Lock()
_providers: weakref.WeakKeyDictionary[Any, _Instruments] = weakref.WeakKeyDictionary()
# The instruments of the global provider: made on the API's proxy when a client
# is instrumented before the application sets its provider (the proxy then
# hands them to it), else on that provider; every later global instrument()
# uses them, so no second instrument of a name is made there.
_global: Optional[_Instruments] = None


def _instruments_for(meter_provider: Optional[MeterProvider]) -> _Instruments:
    from opentelemetry import metrics

    global _global
    with _providers_lock:
        current = metrics.get_meter_provider()
        if meter_provider is None or meter_provider is current:
            if _global is None:
                _global = _providers.get(current)
                if _global is None:
                    _global = _providers[current] = _Instruments(current)
            return _global
        instruments = _providers.get(meter_provider)
        if instruments is None:
            instruments = _providers[meter_provider] = _Instruments(meter_provider)
        return instruments


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
            (``opentelemetry.metrics.get_meter_provider()``) by default, also
            when the application sets it only later.
        channels: Report the inbound depth per channel (``tether.channel``).
            Off by default: channels are often unbounded in number.

    Several clients can be instrumented on one provider: each is reported
    (clients with the same endpoint as one series, their values added). Called
    again for a client already instrumented on the provider, it returns another
    handle, and the client is still counted once, as long as any of its
    handles is active.

    Returns:
        A handle whose :meth:`~Instrumentation.uninstrument` stops the reporting.

    Raises:
        ImportError: ``opentelemetry-api`` is not installed (``tether-sync[otel]``).
    """
    try:
        import opentelemetry.metrics  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "tether_sync.otel needs opentelemetry-api: pip install tether-sync[otel]"
        ) from exc
    return _instruments_for(meter_provider).add(client, channels)


__all__ = ["Instrumentation", "instrument"]
