"""The deadlines of every open transaction on one event-loop timer.

An asyncio timer per transaction would cost, for each transaction held open, a ``TimerHandle``,
its argument tuple, a slot in the loop's heap and a copy of the context it was armed in (which
keeps alive whatever the arming call had set, such as its caller): several hundred bytes. Here
the deadlines wait in one queue and a single timer is armed for the earliest.

Transactions begun with the same timeout reach their deadlines in the order they began, so most
deadlines join the tail of a FIFO at the cost of one reference. One earlier than the FIFO's tail
(a shorter timeout than the transactions before it) goes to a heap instead. A transaction that
ends before its deadline is not searched for: it is skipped when its deadline comes, and ended
ones at the front of either queue leave whenever ``settle`` is called, so transactions that end
in about the order they began are not held after they end. Behind one that stays open, ended
ones pile up: once the queues hold twice as many as at their last sweep (and at least
``SWEEP_AT``), a sweep keeps only those still pending, so they never hold more than about twice
the open transactions, at a cost of O(1) per deadline in the long run.

All times are ``time.monotonic()`` seconds, as ``Transaction.deadline_mono`` is.
"""

from __future__ import annotations

import asyncio
import contextvars
import heapq
import itertools
import logging
import math
import time
from collections import deque
from collections.abc import Callable

from xatm.coordinator.protocol import Transaction

__all__ = ["SWEEP_AT", "Deadlines"]

#: Deadlines held before the first sweep for ended transactions (each costs a reference).
SWEEP_AT = 1024

log = logging.getLogger("xatm.coordinator")


class Deadlines:
    """Calls ``on_due(tx)`` once ``tx.deadline_mono`` has passed, for every transaction added
    while ``pending(tx)`` still holds then; in deadline order among those due together.

    ``pending`` must stay true until the transaction no longer needs its deadline (it ended,
    or was dropped); it is also how an ended transaction is recognised and let go.
    """

    def __init__(self, pending: Callable[[Transaction], bool], on_due: Callable[[Transaction], None]) -> None:
        self._pending = pending
        self._on_due = on_due
        #: Deadlines in non-decreasing order: the common case, one reference each.
        self._fifo: deque[Transaction] = deque()
        #: (deadline, arrival, tx) of those earlier than the FIFO's tail when added.
        self._early: list[tuple[float, int, Transaction]] = []
        self._arrivals = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        #: When the timer fires (inf when none is armed).
        self._armed_for = math.inf
        self._stopped = False
        self._sweep_at = SWEEP_AT

    def __len__(self) -> int:
        """Deadlines held, including those of transactions that ended and were not let go yet."""
        return len(self._fifo) + len(self._early)

    def add(self, tx: Transaction) -> None:
        """Watch ``tx``'s deadline (``tx.deadline_mono`` must not change afterwards)."""
        if self._stopped:
            return
        if len(self) >= self._sweep_at:
            self._sweep()
        deadline = tx.deadline_mono
        if not self._fifo or deadline >= self._fifo[-1].deadline_mono:
            self._fifo.append(tx)
        else:
            heapq.heappush(self._early, (deadline, next(self._arrivals), tx))
        if deadline < self._armed_for:
            self._arm(deadline)

    def settle(self) -> None:
        """Let go of the ended transactions at the front of the queues (call when one ends)."""
        fifo, early = self._fifo, self._early
        while fifo and not self._pending(fifo[0]):
            fifo.popleft()
        while early and not self._pending(early[0][2]):
            heapq.heappop(early)

    def _sweep(self) -> None:
        """Keep only the deadlines of pending transactions (their order stays as it was)."""
        self._fifo = deque(tx for tx in self._fifo if self._pending(tx))
        self._early = [entry for entry in self._early if self._pending(entry[2])]
        heapq.heapify(self._early)
        self._sweep_at = max(SWEEP_AT, 2 * len(self))

    def stop(self) -> None:
        """No deadline fires from now on, and none is watched (shutdown, or a stopped log)."""
        self._stopped = True
        if self._timer is not None:
            self._timer.cancel()
        self._timer, self._armed_for = None, math.inf
        self._fifo.clear()
        self._early.clear()

    def _arm(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        # An empty context: the timer serves every transaction, not the call that happened to arm it.
        delay = max(0.0, when - time.monotonic())
        self._timer = loop.call_later(delay, self._fire, context=contextvars.Context())
        self._armed_for = when

    def _fire(self) -> None:
        self._timer, self._armed_for = None, math.inf
        now = time.monotonic()
        fifo, early = self._fifo, self._early
        due: list[Transaction] = []
        while fifo and fifo[0].deadline_mono <= now:
            due.append(fifo.popleft())
        while early and early[0][0] <= now:
            due.append(heapq.heappop(early)[2])
        self.settle()
        # Armed before the callbacks run: one that adds a deadline finds the timer in place.
        heads = [fifo[0].deadline_mono] if fifo else []
        if early:
            heads.append(early[0][0])
        if heads:
            self._arm(min(heads))
        due.sort(key=lambda tx: tx.deadline_mono)
        for tx in due:
            if self._stopped or not self._pending(tx):
                continue
            try:
                self._on_due(tx)
            except Exception:
                # As the loop would for a timer of its own: one failing callback must not keep the
                # other transactions due now from their timeouts.
                log.exception("deadline of %s: handling failed", tx.gtrid)
