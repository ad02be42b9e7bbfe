"""The control path into the I/O thread: typed commands, and the mailbox they wait in.

User threads (``flush()``, ``close()``, ``subscribe()``, ``refresh_auth()``) and
helper threads (a connector handing a socket over, the token thread answering)
never call into the loop: they post a command (DESIGN §4, STYLE §5). Two parts:

* **The commands**: frozen values, one class per request; the loop's table maps
  each class to the method that runs it on the I/O thread. A command carries
  its own way back (a callback, a buffer), so the poster never needs the loop.
  :func:`refuse` answers one that will not run: posted after the loop ended, or
  one whose handler failed (the commands after it in its batch are put back and
  run in the next iteration). So no caller ever waits on a command that nobody
  will run.
* **The** :class:`Mailbox`: the queue between the posters and the I/O thread,
  and the wake-up protocol that keeps the loop from sleeping on a posted
  command without writing a wake byte per command. Data (``send()``) does not
  come this way: it has its own bounded queue, the
  :class:`~tether_sync.engine.outbox.Outbox`.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import deque
from typing import Any, Callable, Deque, List, Optional, Tuple, Union

from ..exceptions import ClientClosed
from ..protocol.deflate import DeflateParams
from ..subscription import InboundBuffer


@dataclasses.dataclass(frozen=True)
class Connected:
    """A connector finished the handshake of ``attempt`` (the socket is now the loop's)."""

    attempt: int  # the Attempts number: an answer for an abandoned attempt is stale
    sock: Any  # the connected socket.socket (from here on the I/O thread's alone)
    header_expiry: Optional[float] = None
    deflate: Optional[DeflateParams] = None  # permessage-deflate agreed, or None


@dataclasses.dataclass(frozen=True)
class ConnectFailed:
    """A connector's handshake failed."""

    attempt: int
    error: BaseException


@dataclasses.dataclass(frozen=True)
class Token:
    """The token helper's answer to a token request of ``round``."""

    round: int
    token: Optional[str]
    expires_at: Optional[float]
    error: Optional[BaseException]
    frame: Optional[Tuple[int, bytes]] = None


@dataclasses.dataclass(frozen=True)
class Flush:
    """flush(): call ``done()`` once the queue, buffers and kernel are empty."""

    done: Callable[[], None]


@dataclasses.dataclass(frozen=True)
class Close:
    """close(): drain until ``deadline`` (monotonic seconds), then close."""

    deadline: Optional[float]


@dataclasses.dataclass(frozen=True)
class Subscribe:
    """subscribe(): route ``channel`` to ``buffer`` too (announced if it is the first)."""

    channel: str
    buffer: InboundBuffer


@dataclasses.dataclass(frozen=True)
class Unsubscribe:
    """Subscription.close(): stop routing to ``buffer`` (announced if it was the last)."""

    channel: str
    buffer: InboundBuffer


@dataclasses.dataclass(frozen=True)
class ResumeInbound:
    """A ``block`` consumer made room: hand over what was held, read again."""


@dataclasses.dataclass(frozen=True)
class Refresh:
    """refresh_auth(): ``waiter(error)`` once the server confirmed (``None``) or not."""

    waiter: Callable[[Optional[BaseException]], None]


Command = Union[
    Connected, ConnectFailed, Token, Flush, Close, Subscribe, Unsubscribe, ResumeInbound, Refresh
]


def refuse(command: Any, error: BaseException) -> None:
    """Answer ``command`` without running it (the loop has ended, or it failed)."""
    # Each kind that someone waits on gets its answer: flush() returns (it then
    # checks what was left), refresh_auth() raises, a subscription's get() raises
    # ClientClosed, and a socket handed over is closed (its connector is done).
    try:
        if isinstance(command, Flush):
            command.done()
        elif isinstance(command, Refresh):
            command.waiter(error)
        elif isinstance(command, Subscribe):
            command.buffer.close()
        elif isinstance(command, Connected):
            command.sock.close()
    except Exception:  # pragma: no cover - answering must never raise
        pass


class Mailbox:
    """Commands for the I/O thread: posted from any thread, taken by the I/O thread.

    The wake-up protocol: ``waiting`` says that commands were posted since the
    I/O thread last took them. Only the poster that turns it on writes the wake
    byte; posters after it find it on and add their command without one. The
    I/O thread turns it off, under the lock, in the same step that takes the
    commands, so a command posted after that step writes a new byte: none is
    ever left waiting for a wake-up that will not come. The loop also reads
    ``waiting`` without the lock before it sleeps (a stale True costs one empty
    take; a stale False is covered by the wake byte its poster writes).

    Args:
        wake: Wakes the loop's selector (writes one byte to the wake pair).
    """

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        # _lock guards _commands, waiting and _refusing: what user threads
        # post. Held only for deque operations, never while doing I/O or calling out.
        self._lock = threading.Lock()
        self._commands: Deque[Command] = deque()
        self.waiting = False  # commands posted since the last take() (read unlocked)
        self._refusing = False  # the loop ended: commands are answered at once

    def post(self, command: Command) -> None:
        """Queue a command for the loop and wake it (any thread)."""
        with self._lock:
            refused = self._refusing
            if not refused:
                self._commands.append(command)
                wake = not self.waiting
                self.waiting = True
        if refused:
            refuse(command, ClientClosed("the client is closed"))
        elif wake:
            self._wake()

    def take(self) -> List[Command]:
        """Every command posted so far, oldest first (the I/O thread)."""
        # Unlocked peek: posters set waiting under the lock before writing
        # the wake byte, so a command missed here wakes the selector again.
        if not self.waiting:
            return []
        with self._lock:
            # Clear the flag before taking the commands: a command posted after
            # this point writes a new wake byte, so nothing is left unseen.
            self.waiting = False
            commands = list(self._commands)
            self._commands.clear()
        return commands

    def put_back(self, commands: List[Command]) -> None:
        """Return ``commands`` (not yet run) to the front, to be taken next time."""
        # No wake byte is written for them: the loop is the caller, and it does
        # not sleep while ``waiting`` is set.
        with self._lock:
            self._commands.extendleft(reversed(commands))
            self.waiting = True

    def close(self, error: BaseException) -> None:
        """Refuse later commands and answer the pending ones with ``error`` (idempotent)."""
        with self._lock:
            self._refusing = True
            left = list(self._commands)
            self._commands.clear()
        for command in left:
            refuse(command, error)
