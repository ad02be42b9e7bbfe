"""What the selector watches on the current socket: pure bookkeeping for the loop.

The loop asks the selector for exactly what it can act on (STYLE §3.4): reading
unless inbound is held, writing only while framed bytes wait. :class:`Interest`
remembers what is registered, so the loop calls the selector only on a change;
the selector calls themselves are in :mod:`~tether_sync.poller`.
"""

from __future__ import annotations

import dataclasses
import enum
from typing import Optional


class Change(enum.Enum):
    REGISTER = "register"
    MODIFY = "modify"
    UNREGISTER = "unregister"


@dataclasses.dataclass
class Interest:
    """One socket's registration. A new link starts registered for reading."""

    mask: int = 0  # the events registered with the selector
    registered: bool = False
    tls: bool = False  # an SSL socket: decrypted bytes may wait inside it
    want_write: bool = False  # framed bytes wait for writability

    def change(self, mask: int) -> Optional[Change]:
        """Record that the loop wants ``mask``; the selector call to make, if any."""
        if not mask:
            if self.registered:
                self.registered = False
                return Change.UNREGISTER
            return None
        if not self.registered:
            self.registered = True
            self.mask = mask
            return Change.REGISTER
        if self.mask != mask:
            self.mask = mask
            return Change.MODIFY
        return None


__all__ = ["Change", "Interest"]
