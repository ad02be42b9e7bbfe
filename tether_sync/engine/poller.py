"""What the I/O thread blocks on: the selector over the socket and the wake pair.

The I/O thread blocks in one place only, :meth:`Poller.wait`. User threads
interrupt it by writing one byte to a socketpair (:meth:`Poller.wake`; the
mailbox and the outbox ask for a wake-up only when none is pending). The byte
is written only while the I/O thread is in (or entering) the selector: a
wake-up asked for while it is busy is only recorded, and its next
:meth:`Poller.wait` does not sleep. In a run of round trips the caller's next
``send()`` comes while the I/O thread is still finishing the iteration that
handed over the reply (nearly always, measured), so that send made a system
call for nothing, and the loop a second, empty iteration to read the byte
(``benchmarks/bench_rtt_breakdown.py``). The socket's
registration is kept exactly as the loop asks (STYLE §3.4): reading unless
inbound is held, writing only while framed bytes wait; :class:`Interest`
(in :mod:`.transport`, beside the
socket it describes) records what is registered so the selector is called only on a change.

On Linux the poller calls ``select.epoll`` itself: a round trip waits twice,
and the generic :mod:`selectors` wrapper costs a few microseconds of Python
each time. Elsewhere it uses :class:`selectors.DefaultSelector`.
"""

from __future__ import annotations

import math
import select
import selectors
import socket
import threading
from typing import List, Optional, Tuple

from .transport import Change, Link

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE

_EPOLL = hasattr(select, "epoll")
_POLL = getattr(select, "poll", None)  # wait_socket (not on Windows)


class Poller:
    """The selector and the wake pair of one loop (closed with it).

    Args:
        epoll: Use ``select.epoll`` directly (default: where it exists).
    """

    def __init__(self, epoll: bool = _EPOLL) -> None:
        # A socketpair, not a pipe: selectable on every platform (Windows
        # included), and both ends non-blocking so neither side ever waits.
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._wake_fd = self._wake_r.fileno()
        # _state_lock guards _polling and _asked, the wake-up handshake between
        # wakers and the I/O thread (see wake()); held for two attribute
        # accesses, never across a system call.
        self._state_lock = threading.Lock()
        self._polling = False  # the I/O thread is in, or entering, the selector
        self._asked = False  # a wake-up was asked for while the I/O thread was busy
        # One socket at most is registered beside the wake pair: the loop has
        # one connection at a time (the next one registers after release).
        self._sock_fd = -1  # the socket registered (epoll keys by fd), and for what
        self._sock_mask = 0
        self._epoll: Optional[select.epoll] = None
        self._selector: Optional[selectors.BaseSelector] = None
        if epoll:
            self._epoll = select.epoll()
            self._epoll.register(self._wake_fd, select.EPOLLIN)
        else:
            self._selector = selectors.DefaultSelector()
            self._selector.register(self._wake_r, READ, None)

    def wake(self) -> None:
        """Interrupt :meth:`wait`, or keep the next one from sleeping (any thread)."""
        # Busy (not polling): only record it; the I/O thread reads _asked under
        # the same lock in the step that sets _polling, before it sleeps, so
        # either it sees _asked or this waker sees _polling and writes the byte.
        with self._state_lock:
            if not self._polling:
                self._asked = True
                return
        # Non-blocking: a waker never waits for the I/O thread. A full pair
        # means bytes are pending already, so dropping this one loses nothing.
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full (the loop is already due to wake) or closed
            pass

    @property
    def can_wait_socket(self) -> bool:
        """Whether :meth:`wait_socket` can wait here (it needs ``select.poll``: not on Windows)."""
        return _POLL is not None

    def wait_socket(self, link: Link, timeout: float) -> Tuple[bool, bool]:
        """Wait, on a consumer's thread, for ``link`` or the wake pair to be readable.

        For ``IoLoop.read_now`` (which holds the loop's turn and has taken
        ``link`` out of the selector): ``timeout`` in seconds (``math.inf``: no
        limit). Returns ``(readable, woken)``; the wake byte is left for
        :meth:`wait` to read. ``(False, False)`` where ``poll()`` is missing.
        """
        if _POLL is None:
            return False, False
        poll = _POLL()
        fd = link.sock.fileno()
        poll.register(fd, select.POLLIN)
        poll.register(self._wake_fd, select.POLLIN)
        ms = -1 if timeout == math.inf else max(1, math.ceil(timeout * 1e3))
        got = [ready_fd for ready_fd, _ in poll.poll(ms)]
        return fd in got, self._wake_fd in got

    def nudge(self) -> None:
        """Write one wake byte now, whatever the I/O thread is doing (the I/O thread).

        For a thread polling the wake pair besides the socket while it holds the
        loop's turn (``IoLoop.read_now``): the I/O thread wants the turn back.
        The byte stays until this thread's next :meth:`wait` reads it.
        """
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full: bytes are pending already, which is as good
            pass

    def wait(self, timeout: Optional[float]) -> List[int]:
        """Block until the socket is ready, a wake byte came or ``timeout`` passed.

        Returns the socket's ready events (a wake-up is consumed here).
        """
        ready: List[int] = []
        woken = False
        with self._state_lock:
            if self._asked:  # a wake-up came while this thread was busy: do not sleep
                self._asked = False
                timeout = 0.0
            self._polling = True
        try:
            woken = self._select(timeout, ready)
        finally:
            # Unlocked: a waker that still reads True writes a byte (a spurious
            # wake-up, harmless); one that reads False records _asked.
            self._polling = False
        if woken:
            # One recv is enough: a wake byte is written only when none is
            # pending, so at most a few bytes wait.
            try:
                self._wake_r.recv(4096)
            except OSError:  # BlockingIOError: a spurious wake-up
                pass
        return ready

    def _select(self, timeout: Optional[float], ready: List[int]) -> bool:
        # One selector call: the socket's events go into ``ready``; True if the
        # wake pair was readable.
        woken = False
        if self._epoll is not None:
            if timeout is None:
                wait = -1.0
            else:  # epoll counts milliseconds: wait at least ``timeout``, never spin
                wait = math.ceil(timeout * 1e3) * 1e-3 if timeout > 0 else 0.0
            try:
                events = self._epoll.poll(wait, 2)  # two fds at most: the socket, the wake pair
            except InterruptedError:
                return False  # a signal: the loop recomputes its timeout and waits again
            for fd, ev in events:
                if fd == self._wake_fd:
                    woken = True
                else:  # as selectors maps them: anything but "out" reads, but "in" writes
                    mask = (WRITE if ev & ~select.EPOLLIN else 0) | (
                        READ if ev & ~select.EPOLLOUT else 0
                    )
                    ready.append(mask & self._sock_mask)
        else:
            assert self._selector is not None
            for key, mask in self._selector.select(timeout):
                if key.data is None:
                    woken = True
                else:
                    ready.append(mask)
        return woken

    def watch(self, link: Link, mask: int) -> None:
        """Register ``link`` for exactly ``mask`` (0: unregister)."""
        # The link's Interest records what is registered, so an iteration that
        # wants what it already has makes no system call.
        change = link.io.change(mask)
        if change is None:
            return
        if self._epoll is not None:
            flags = (select.EPOLLIN if mask & READ else 0) | (
                select.EPOLLOUT if mask & WRITE else 0
            )
            if change is Change.UNREGISTER:
                self._epoll.unregister(self._sock_fd)
                self._sock_fd = -1
            elif change is Change.REGISTER:
                self._sock_fd = link.sock.fileno()
                self._epoll.register(self._sock_fd, flags)
            else:
                self._epoll.modify(self._sock_fd, flags)
            self._sock_mask = mask
            return
        assert self._selector is not None
        if change is Change.UNREGISTER:
            self._selector.unregister(link.sock)
        elif change is Change.REGISTER:
            self._selector.register(link.sock, mask, "sock")
        else:
            self._selector.modify(link.sock, mask, "sock")

    def forget(self, link: Link) -> None:
        """``link`` is closing: drop its registration, if any."""
        if not link.io.registered:
            return
        link.io.registered = False
        try:
            if self._epoll is not None:
                fd, self._sock_fd = self._sock_fd, -1
                self._epoll.unregister(fd)
            else:
                assert self._selector is not None
                self._selector.unregister(link.sock)
        except (KeyError, ValueError, OSError):
            pass

    def close(self) -> None:
        """Close the selector and the wake pair (the loop ended; a later wake() is a no-op)."""
        if self._epoll is not None:
            self._epoll.close()
        if self._selector is not None:
            self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


__all__ = ["READ", "WRITE", "Poller"]
