"""The loop's inbox: typed commands that user and helper threads post to it.

Posters append under a lock and write one wake byte only if none is pending
(PA ``_packet_queue``, KP ``sender.wakeup()``); the I/O thread takes the whole
batch at once. Once the loop has ended the mailbox refuses: every later
command, and every one still waiting, is answered at once with
:func:`~tether_sync.commands.refuse`, so no caller waits on a command that
nobody will run (DESIGN §4).
"""

from __future__ import annotations

import threading
from collections import deque
from typing import Callable, Deque, List

from . import commands as cmd
from .exceptions import ClientClosed


class Mailbox:
    """Commands for the I/O thread.

    Args:
        wake: Wakes the loop's selector (writes one byte to the wake pair).
    """

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        # _lock guards _commands, waiting and _refusing: what user threads
        # post. Held only for deque operations, never while doing I/O or calling out.
        self._lock = threading.Lock()
        self._commands: Deque[cmd.Command] = deque()
        self.waiting = False  # commands posted since the last take() (read unlocked)
        self._refusing = False  # the loop ended: commands are answered at once

    def post(self, command: cmd.Command) -> None:
        """Queue a command for the loop and wake it (any thread)."""
        with self._lock:
            refused = self._refusing
            if not refused:
                self._commands.append(command)
                wake = not self.waiting
                self.waiting = True
        if refused:
            cmd.refuse(command, ClientClosed("the client is closed"))
        elif wake:
            self._wake()

    def take(self) -> List[cmd.Command]:
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

    def put_back(self, commands: List[cmd.Command]) -> None:
        """Return ``commands`` (not yet run) to the front, to be taken next time."""
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
            cmd.refuse(command, error)


__all__ = ["Mailbox"]
