"""A resource manager with no storage: every prepare votes yes, nothing touches a disk.

For ``xatm bench`` and tests, where what is measured or checked is the coordinator and the
participant service around the store, not the store itself.
"""

from __future__ import annotations

import threading
from typing import Any

from xatm.participant.stores.base import ResourceManager
from xatm.participant.xa import XaCode, XaError, Xid

__all__ = ["MemoryRM"]


class MemoryRM(ResourceManager):
    """Votes yes to every prepare and remembers prepared branches only until phase two.

    The benchmark enlists branches straight through the Coordinator API and sends no business
    calls, so any xid the coordinator names counts as an active branch with work to commit.

    Its verbs never wait (``blocking`` is False). A subclass is taken to be blocking unless it
    says ``blocking = False`` itself: one that adds a wait (a sleep, a lock, I/O) and forgot to
    say so would otherwise hold up every other branch of its batch, and an asyncio server's
    event loop.
    """

    blocking = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "blocking" not in cls.__dict__:
            cls.blocking = True

    def __init__(self, rm_id: str) -> None:
        self.rm_id = rm_id
        self._lock = threading.Lock()
        self._prepared: set[Xid] = set()

    def start(self, xid: Xid) -> None:
        """Nothing to open: branch state exists only once prepared."""

    def prepare(self, xid: Xid) -> XaCode:
        with self._lock:
            self._prepared.add(xid)
        return XaCode.XA_OK

    def commit(self, xid: Xid, one_phase: bool) -> None:
        if one_phase:
            return
        with self._lock:
            if xid not in self._prepared:
                raise XaError(XaCode.XAER_NOTA, f"{xid} is not prepared here")
            self._prepared.discard(xid)

    def rollback(self, xid: Xid) -> None:
        with self._lock:
            self._prepared.discard(xid)

    def recover(self) -> list[Xid]:
        with self._lock:
            return list(self._prepared)
