"""Reliable sessions (DESIGN §5) on one connection: seq numbers, acks, resends, positions.

Owns everything the extension decides on one link: the ``tether:hello`` and
the reply that decides it (``hello-ok``, or any later reply: extension off),
the features granted, the ``seq`` each outbound message gets, the messages
written and not yet confirmed (by ``tether:ack``, or, without acks, by the
pong of a ping sent after a large message: the "barrier"), the messages carried
over from an earlier link and their resend, and each channel's position
(``epoch``, ``offset``) for resume and duplicate drops.

What outlives the link lives in a :class:`Continuity` (owned by the loop, handed
to every new session): the session id, the highest ``seq`` numbered, the last
position per channel.

Nothing is taken on trust (rule 12): an ack or a ``hello-ok`` ``acked`` must be
an integer from 0 to the highest ``seq`` numbered so far; a session id and an
epoch strings of 1 to 64 characters; an envelope's offset an integer >= 1 (a
``tether:subscribed`` offset >= 0: an empty channel). This module only judges:
its handlers return the problem as a short, value-free description, and the
session, which owns the link, fails it (1002) and believes nothing more. A
``tether:subscribed`` that comes again while subscribed (rule 13) raises
:class:`~tether_sync.protocol.events.Recovery` when it says ``recovered: false``.

Hot paths (one call per batch or per ack, never a layer per message): framing
a batch with ``seq`` numbers (:meth:`Reliability.write`), resolving an ack
(:meth:`Reliability.on_ack`), and what a write completed
(:meth:`Reliability.on_written`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Sequence, Set, Tuple, Union

from . import envelope
from .events import Acked, Output, Recovery, Written
from .writebuf import Item

log = logging.getLogger("tether_sync")

LARGE_MESSAGE = 64 * 1024  # bytes; without acks, such a message is confirmed by a ping barrier
FEATURES = ("ack", "resume")
MAX_ID_LENGTH = 64  # characters: the most a session id or an epoch may have (DESIGN §5)


@dataclasses.dataclass
class Position:
    """The last envelope seen on a channel (DESIGN §5 resume)."""

    epoch: Optional[str]
    offset: int


@dataclasses.dataclass
class Continuity:
    """What outlives one connection but belongs to the protocol.

    Owned by the loop (I/O thread), handed to every new session.

    Attributes:
        session_id: The §5 session id, kept for the client's whole life.
        last_seq: The highest ``seq`` given to a message so far.
        positions: Channel -> the last ``(epoch, offset)`` seen on it.
        resent: Messages written again on a later link (for stats).
    """

    session_id: str
    last_seq: int = 0
    positions: Dict[str, Position] = dataclasses.field(default_factory=dict)
    resent: int = 0


class Reliability:
    """The §5 extension on one link (see the module docstring).

    Args:
        output: Where the hello, subscribe envelopes, barrier pings and the
            ``Acked``/``Written``/``Recovery`` events go.
        continuity: What outlives the link (session id, ``seq``, positions).
        extensions: The features to ask for; empty: no hello, extension off.
    """

    __slots__ = (
        "_answered",
        "_asked_resume",
        "_barrier",
        "_continuity",
        "_extensions",
        "_hello_deadline",
        "_output",
        "_resend",
        "_serial",
        "_unacked",
        "ack",
        "confirmed",
        "decided",
        "features",
        "hello_ping",
        "pending",
        "resend_due",
        "resume",
    )

    def __init__(self, output: Output, continuity: Continuity, extensions: Tuple[str, ...]) -> None:
        self.pending = False
        """The hello is out and the reply that decides the extension has not come."""
        self.decided = False
        """That reply came (hello-ok, or any other: extension off); without auth, the link opens."""
        self.features: Tuple[str, ...] = ()
        """The features the server granted."""
        self.ack = False
        """``ack`` granted: a message is done when ``tether:ack`` covers its ``seq``."""
        self.resume = False
        """``resume`` granted: positions are sent on subscribe, and checked (rule 12)."""
        self.resend_due = False
        """The link is open and the carried-over messages are not framed yet."""
        self.confirmed = False
        """The peer confirmed a message on this link (an ack or a barrier pong)."""
        self.hello_ping: Optional[int] = None
        """``ts`` of the ping that follows the hello (rule 3: its pong decides)."""
        self._output = output
        self._continuity = continuity
        self._extensions = extensions
        self._unacked: List[Item] = []  # written, awaiting ack (seq order)
        self._resend: List[Item] = []  # carried over from earlier connections
        self._barrier: Deque[Tuple[int, List[Item]]] = deque()  # (ping ts, large items)
        self._serial = 0  # numbers the barrier pings (their ts is -serial)
        self._hello_deadline: Optional[float] = None
        self._asked_resume: Set[str] = set()  # channels subscribed with a position
        self._answered: Set[str] = set()  # channels a tether:subscribed came for (rule 13)

    # ------------------------------------------------------------ the hello

    def start(self, resend: Sequence[Item]) -> None:
        """Take the carried-over messages; send ``tether:hello`` if features are wanted."""
        self._resend = list(resend)
        if self._extensions:
            self.pending = True
            self._output.text(
                envelope.encode_json(
                    {
                        "type": "tether:hello",
                        "session": self._continuity.session_id,
                        "features": list(self._extensions),
                    }
                )
            )

    def await_reply(self, ping_ts: int, deadline: float) -> None:
        """No auth: the pong of ping ``ping_ts`` decides if no ``hello-ok`` comes first.

        The deadline is only a safety net for a peer that answers nothing at all.
        """
        self.hello_ping = ping_ts
        self._hello_deadline = deadline

    def decide(self, granted: Optional[Tuple[str, ...]], acked: int = 0) -> None:
        """The reply that decides the extension arrived (None: extension off).

        With ``ack`` granted, the carried-over messages that ``acked`` covers are
        done (the server had them) and are not resent.
        """
        if not self.pending:
            return
        self.pending = False
        self.decided = True
        self._hello_deadline = None
        if granted is None:
            log.debug("server does not speak the reliable-sessions extension")
            self.hello_ping = None
            return
        self.features = granted
        self.ack = "ack" in granted
        self.resume = "resume" in granted
        cont = self._continuity
        cont.last_seq = max(cont.last_seq, acked)
        log.debug("extension on: %s, acked %d", ",".join(granted) or "-", acked)
        if self._resend and self.ack:
            done = [i for i in self._resend if 0 < i._seq <= acked]
            self._resend = [i for i in self._resend if not 0 < i._seq <= acked]
            if done:
                self.confirmed = True
                self._output.emit(Acked(done))

    def deadline(self) -> Optional[float]:
        """The hello safety net, or None."""
        return self._hello_deadline

    def on_deadline(self, now: float) -> None:
        """No answer to the hello or its ping: decide the extension off."""
        if self._hello_deadline is not None and now >= self._hello_deadline:
            log.warning("no answer to tether:hello or its ping: extension off")
            self.decide(None)

    def stop(self) -> None:
        """The link is closing: nothing is timed (the hello safety net goes).

        The carried-over messages that were due stay unwritten (after our close
        frame nothing else may go out): :meth:`take_unfinished` hands them back.
        A hello reply that still arrives is believed (its ``acked`` resolves).
        """
        self._hello_deadline = None
        self.resend_due = False

    def on_lie(self) -> None:
        """The peer lied (rule 12): whatever it says next decides nothing."""
        self.pending = False
        self.hello_ping = None

    def open(self) -> None:
        """The link is open: carried-over messages go out with the next write.

        Not at once: the loop announces its subscriptions on ``Opened`` first
        (DESIGN §5 order), and the next :meth:`write` or ``data_to_send()``
        frames the resends ahead of anything else.
        """
        self.pending = False
        self.resend_due = bool(self._resend)

    # ------------------------------------------------------------ messages out

    def write(self, items: Sequence[Item]) -> None:
        """Frame application messages (after the resends, if those are due)."""
        if self.resend_due:
            self.write_resends()
        self._write(items)

    def write_resends(self) -> None:
        """Frame the carried-over messages, oldest first, with their old ``seq`` (rule 4)."""
        self.resend_due = False
        if self._resend:
            items, self._resend = self._resend, []
            self._continuity.resent += len(items)
            self._write(items)

    def _write(self, items: Sequence[Item]) -> None:
        if self.ack:
            cont = self._continuity
            seq = cont.last_seq
            framed: List[Tuple[Item, bytes]] = []
            append = framed.append
            for item in items:
                n = item._seq
                if n <= 0:
                    seq += 1
                    item._seq = n = seq
                elif n > seq:
                    seq = n  # numbered at send() time (the durable outbox)
                # The data envelope with "seq": n added (it ends with "}"). The
                # precision drops the "}" without a slice (one copy, not two).
                data = item._data
                append((item, b'%.*s,"seq":%d}' % (len(data) - 1, data, n)))
            cont.last_seq = seq
            self._output.buffer.add_framed(framed, track=False)
            self._unacked.extend(items)
            return
        self._output.buffer.add_messages(items)
        big = [i for i in items if len(i._data) >= LARGE_MESSAGE]
        if big:
            # No acks: a large message could be refused (1009) after the kernel
            # took it. Hold its Delivery until a ping sent after it is answered:
            # servers answer in order, so the pong proves it was taken.
            self._serial += 1
            ts = -self._serial  # negative: never a heartbeat's (those are epoch ms)
            self._output.ping(ts)
            self._barrier.append((ts, big))

    def on_written(self, done: List[Item]) -> None:
        """The kernel took the whole frames of ``done``: without acks, they are done."""
        if self._barrier:
            # Every large message framed here waits in the barrier until a pong
            # that follows it (see _write), so by size, not by a set of the held
            # ids rebuilt per write (O(held) each: quadratic in a burst).
            done = [i for i in done if len(i._data) < LARGE_MESSAGE]
        if done and not self.ack:
            self._output.emit(Written(done))

    def subscribe_text(self, channel: str, msg_id: str) -> str:
        """The subscribe envelope for ``channel``, resuming from its position if we may."""
        msg: Dict[str, Any] = {"channel": channel, "type": "subscribe", "id": msg_id}
        self._answered.discard(channel)  # its answer is the subscribe's, not rule 13's
        if self.resume:
            pos = self._continuity.positions.get(channel)
            if pos is not None:
                if pos.epoch is not None:
                    msg["epoch"] = pos.epoch
                msg["offset"] = pos.offset
                self._asked_resume.add(channel)
        return envelope.encode_json(msg)

    def unsubscribed(self, channel: str) -> None:
        """``channel`` is left: its position and pending answers are forgotten."""
        self._continuity.positions.pop(channel, None)
        self._asked_resume.discard(channel)
        self._answered.discard(channel)

    # ------------------------------------------------------------ confirmations in

    def on_ack(self, seq: Any) -> Optional[str]:
        """A ``tether:ack``: resolve every message up to ``seq``; the rule 12 problem, or None.

        Ignored unless ``ack`` was granted (an echo server may send anything).
        """
        if not self.ack:
            return None
        highest = self._continuity.last_seq
        if type(seq) is not int or not 0 <= seq <= highest:
            return f"tether:ack seq {_seq_problem(seq, highest)}"
        unacked = self._unacked
        if not unacked or unacked[0]._seq > seq:
            return None
        # Seqs grow by one (gaps only where a message was given up after its
        # number): the guess is exact or too far, never too short.
        n = min(len(unacked), seq - unacked[0]._seq + 1)
        while unacked[n - 1]._seq > seq:
            n -= 1
        done = unacked[:n]
        del unacked[:n]
        if done:
            self.confirmed = True
            events = self._output.events
            if events and type(events[-1]) is Acked:
                # Several acks in one read: one event, so one resolution pass
                # (and one release of queue room) for all of them.
                events[-1].items.extend(done)
            else:
                events.append(Acked(done))
        return None

    def on_pong(self, ts: int) -> bool:
        """A pong: True if it was ours (the hello's ping, or a barrier ping)."""
        if self.hello_ping is not None and ts == self.hello_ping:
            self.hello_ping = None
            self.decide(None)
            return True
        if ts >= 0:
            return False
        done: List[Item] = []
        while self._barrier and self._barrier[0][0] >= ts:
            # Barrier ts values decrease: everything up to this one was answered.
            done.extend(self._barrier.popleft()[1])
        if done:
            self.confirmed = True
            self._output.emit(Acked(done))
        return True

    def on_extension(self, value: Any) -> Union[bool, str]:
        """``hello``, ``hello-ok``, ``ack`` or ``subscribed``.

        Returns:
            A str: the rule 12 problem (the peer lied). Else True if ``value``
            was one of ours, False if it belongs to the message stream.
        """
        if type(value) is not dict:
            return False
        kind = value.get("type")
        if kind == "tether:ack":
            problem = self.on_ack(value.get("seq"))
            return True if problem is None else problem
        if kind == "tether:hello":
            # Our own hello came back: an echo server, no extension.
            self.decide(None)
            return False
        if kind == "tether:hello-ok":
            if not self.pending:
                return True
            cont = self._continuity
            problem = _hello_ok_problem(value, cont.last_seq, cont.session_id)
            if problem is not None:
                return f"tether:hello-ok {problem}"
            features = value["features"]
            self.decide(tuple(f for f in self._extensions if f in features), value["acked"])
            return True
        if kind == "tether:subscribed":
            problem = self._on_subscribed(value)
            return True if problem is None else f"tether:subscribed {problem}"
        return False

    def _on_subscribed(self, value: Dict[str, Any]) -> Optional[str]:
        """Take the position a ``tether:subscribed`` gives (rules 9, 10 and 13).

        It may come again while subscribed (rule 13: a server node that lost its
        position): ``recovered: false`` raises :class:`Recovery` and the position
        is taken; ``recovered: true`` means the replay from the offset asked for
        follows, as at subscribe time.
        """
        problem = _subscribed_problem(value)
        if problem is not None:
            return problem
        channel: str = value["channel"]
        epoch: str = value["epoch"]
        offset: int = value["offset"]
        recovered: bool = value["recovered"]
        asked = channel in self._asked_resume
        self._asked_resume.discard(channel)
        again = channel in self._answered  # rule 13: already subscribed on this link
        self._answered.add(channel)
        positions = self._continuity.positions
        last = positions.get(channel)
        # A replay that starts before what we saw keeps our position: the envelopes
        # up to it are then dropped as duplicates (rule 10), not delivered twice.
        if not (recovered and last is not None and last.epoch == epoch and last.offset > offset):
            positions[channel] = Position(epoch, offset)
        if not recovered and (asked or again):
            log.warning("channel %r could not be recovered: messages were missed", channel)
            self._output.emit(Recovery(channel, recovered, epoch, offset))
        return None

    def admit(self, channel: str, offset: Any, epoch: Any) -> Union[bool, str]:
        """Whether a data envelope at this position is new (False: a duplicate, dropped).

        Returns:
            A str: the rule 12 problem (with resume granted, a position must be
            one: it decides drops). Else True to deliver, False to drop.
        """
        if self.resume and offset is not None:
            problem = _position_problem(offset, epoch)
            if problem is not None:
                return f"a data envelope's {problem}"
        if type(offset) is int:
            ep = epoch if isinstance(epoch, str) else None
            positions = self._continuity.positions
            last = positions.get(channel)
            if last is not None and last.epoch == ep and offset <= last.offset:
                log.debug("dropping %s offset %d: already seen", channel, offset)
                return False
            positions[channel] = Position(ep, offset)
        return True

    # ------------------------------------------------------------ refusals

    def refuse(self, msg_id: str) -> Optional[Item]:
        """The server refused message ``msg_id`` (rule 6): it is no longer tracked."""
        tracked = [*self._unacked, *(i for _, items in self._barrier for i in items)]
        for item in tracked:
            if item.id == msg_id:
                self._drop(item)
                return item
        return None

    def refuse_largest(self) -> Optional[Item]:
        """The server closed with 1009: the largest unconfirmed message, untracked, or None.

        None when nothing of 1 KiB or more was in flight: not ours to blame.
        """
        candidates = [*self._unacked, *(i for _, items in self._barrier for i in items)]
        if not candidates:
            return None
        culprit = max(candidates, key=lambda i: len(i._data))
        if len(culprit._data) < 1024:
            return None
        self._drop(culprit)
        return culprit

    def _drop(self, item: Item) -> None:
        try:
            self._unacked.remove(item)
        except ValueError:
            pass
        self._output.buffer.forget(item)
        for _, held in self._barrier:
            if item in held:
                held.remove(item)

    # ------------------------------------------------------------ counts, and the end

    @property
    def unacked(self) -> int:
        """Messages written and awaiting the server's ack, plus those carried over."""
        return len(self._unacked) + len(self._resend)

    @property
    def held(self) -> int:
        """Messages written and awaiting an ack or a barrier pong."""
        return len(self._unacked) + sum(len(i) for _, i in self._barrier)

    def take_unfinished(self) -> List[Item]:
        """Every message not done, oldest first, to send again on the next link.

        Written-but-unacked messages keep their ``seq`` (rule 4), so the server's
        dedupe makes the resend safe.
        """
        out: List[Item] = list(self._resend)
        unacked = list(self._unacked)
        unwritten = self._output.buffer.reset()
        # Held (large, unconfirmed) messages that were written precede everything
        # still unwritten: written bytes are a prefix of what was framed.
        pending = {id(i) for i in unwritten}
        held = [i for _, items in self._barrier for i in items if id(i) not in pending]
        seen = set()
        for item in [*unacked, *held, *unwritten]:
            if id(item) not in seen:
                seen.add(id(item))
                out.append(item)
        self._resend = []
        self._unacked.clear()
        self._barrier.clear()
        out.sort(key=_resend_order)
        return out


# ---------------------------------------------------------------- rule 12 checks


def _describe(value: Any) -> str:
    """A short, value-free description of what a field held (for error messages)."""
    if value is None:
        return "null"
    if type(value) is bool:
        return "a boolean"
    if type(value) is int:
        return str(value) if abs(value) < 10**20 else f"an integer of {value.bit_length()} bits"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return f"a string of {len(value)} characters"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _seq_problem(seq: Any, highest: int) -> str:
    """What is wrong with an ack's ``seq`` or a ``hello-ok``'s ``acked`` (rule 12)."""
    if type(seq) is not int:
        return f"is {_describe(seq)}, not an integer"
    if seq < 0:
        return f"is {_describe(seq)}, below 0"
    return f"is {_describe(seq)}, above the highest seq numbered ({highest})"


def _id_problem(value: Any) -> Optional[str]:
    """What is wrong with a session id or an epoch, or None (rule 12)."""
    if not isinstance(value, str):
        return f"is {_describe(value)}, not a string"
    if not value:
        return "is an empty string"
    if len(value) > MAX_ID_LENGTH:
        return f"is {_describe(value)}, more than {MAX_ID_LENGTH}"
    return None


def _hello_ok_problem(value: Dict[str, Any], highest: int, ours: str) -> Optional[str]:
    """What is wrong with a ``tether:hello-ok``, or None if it can be believed (rule 12).

    Its ``session`` must be the one the hello named: the ``acked`` of another
    session's counter would resolve messages the server never accepted.
    """
    problem = _id_problem(value.get("session"))
    if problem is not None:
        return f"session {problem}"
    if value["session"] != ours:
        return "session is not the one the hello named"
    features = value.get("features")
    if type(features) is not list or not all(isinstance(f, str) for f in features):
        return f"features is {_describe(features)}, not a list of strings"
    acked = value.get("acked")
    if type(acked) is not int or not 0 <= acked <= highest:
        return f"acked {_seq_problem(acked, highest)}"
    return None


def _position_problem(offset: Any, epoch: Any) -> Optional[str]:
    """What is wrong with an envelope's ``offset`` and ``epoch``, or None (rule 12).

    The epoch may be absent (rule 9 reads that as an epoch of its own), never
    anything but a string of 1 to 64 characters.
    """
    if type(offset) is not int or offset < 1:
        return f"offset is {_describe(offset)}, not an integer >= 1"
    if epoch is not None:
        problem = _id_problem(epoch)
        if problem is not None:
            return f"epoch {problem}"
    return None


def _subscribed_problem(value: Dict[str, Any]) -> Optional[str]:
    """What is wrong with a ``tether:subscribed``, or None (rules 9 and 12).

    Its ``offset`` is the one the next envelope follows: 0 on a channel that
    has published nothing yet, so it may be 0 where an envelope's may not.
    """
    if not isinstance(value.get("channel"), str):
        return f"channel is {_describe(value.get('channel'))}, not a string"
    if type(value.get("recovered")) is not bool:
        return f"recovered is {_describe(value.get('recovered'))}, not a boolean"
    problem = _id_problem(value.get("epoch"))
    if problem is not None:
        return f"epoch {problem}"
    offset = value.get("offset")
    if type(offset) is not int or offset < 0:
        return f"offset is {_describe(offset)}, not an integer >= 0"
    return None


def _resend_order(item: Item) -> Tuple[int, int]:
    # Numbered messages first, by seq (they went out first), then the rest in order.
    return (0, item._seq) if item._seq > 0 else (1, 0)


__all__ = ["FEATURES", "LARGE_MESSAGE", "MAX_ID_LENGTH", "Continuity", "Position", "Reliability"]
