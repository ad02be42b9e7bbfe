"""What the I/O thread blocks on: the selector over the socket and the wake pair.

The I/O thread blocks in one place only, :meth:`Poller.wait`. User threads
interrupt it by writing one byte to a socketpair (:meth:`Poller.wake`; the
mailbox and the outbox write it only when none is pending). The socket's
registration is kept exactly as the loop asks (STYLE §3.4): reading unless
inbound is held, writing only while framed bytes wait; :class:`Interest`
records what is registered so the selector is called only on a change.
"""

from __future__ import annotations

import selectors
import socket
from typing import List

from .interest import Change
from .transport import Link

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE


class Poller:
    """The selector and the wake pair of one loop (closed with it)."""

    def __init__(self) -> None:
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._selector = selectors.DefaultSelector()
        self._selector.register(self._wake_r, READ, None)

    def wake(self) -> None:
        """Interrupt :meth:`wait` (any thread)."""
        try:
            self._wake_w.send(b"\0")
        except OSError:  # full (the loop is already due to wake) or closed
            pass

    def wait(self, timeout: float | None) -> List[int]:
        """Block until the socket is ready, a wake byte came or ``timeout`` passed.

        Returns the socket's ready events (a wake-up is consumed here).
        """
        ready: List[int] = []
        for key, mask in self._selector.select(timeout):
            if key.data is None:
                # One recv is enough: a wake byte is written only when none is
                # pending, so at most a few bytes wait.
                try:
                    self._wake_r.recv(4096)
                except OSError:  # BlockingIOError: a spurious wake-up
                    pass
            else:
                ready.append(mask)
        return ready

    def watch(self, link: Link, mask: int) -> None:
        """Register ``link`` for exactly ``mask`` (0: unregister)."""
        change = link.io.change(mask)
        if change is Change.UNREGISTER:
            self._selector.unregister(link.sock)
        elif change is Change.REGISTER:
            self._selector.register(link.sock, mask, "sock")
        elif change is Change.MODIFY:
            self._selector.modify(link.sock, mask, "sock")

    def forget(self, link: Link) -> None:
        """``link`` is closing: drop its registration, if any."""
        if link.io.registered:
            link.io.registered = False
            try:
                self._selector.unregister(link.sock)
            except (KeyError, ValueError):
                pass

    def close(self) -> None:
        self._selector.close()
        self._wake_r.close()
        self._wake_w.close()


__all__ = ["READ", "WRITE", "Poller"]
