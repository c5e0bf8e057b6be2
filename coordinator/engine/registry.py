"""The transactions the engine holds: lookup, begin and enlist bookkeeping, history retention,
and the counts the gauges read.

Everything here runs on the engine's event loop. The counts are kept up to date as statuses
change (``observe``) so that reading them costs the same with ten transactions or a million,
and so that a reader on another thread (a metrics scrape) only ever reads single integers:
nothing outside the loop iterates a collection that the loop changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Iterable

from xatm.coordinator import protocol as sm
from xatm.participant.errors import NotFoundError
from xatm.participant.xa import TxStatus, validate_gtrid

__all__ = ["CLOSED", "MAX_KNOWN_PARTICIPANTS", "Registry"]

#: Resource managers remembered for the recovery scan; past this the least recently enlisted
#: is forgotten, so clients naming ever new rm_ids cannot grow the table for ever.
MAX_KNOWN_PARTICIPANTS = 10_000

#: Completed without a heuristic: nothing is called on their branches any more (a move does not
#: concern them), they age out as history, and they are not "active".
CLOSED = (TxStatus.COMMITTED, TxStatus.ROLLEDBACK)
#: Undecided while the prepares are out: a commit request's answer waits for these to pass.
_DECIDING = (TxStatus.PREPARING, TxStatus.PREPARED)


class Registry:
    """Transactions by gtrid, in begin order (the oldest history is dropped first)."""

    def __init__(self, on_deadline: Callable[[str], None] | None = None) -> None:
        """``on_deadline(gtrid)`` is called when an open transaction reaches its deadline."""
        self._txs: dict[str, sm.Transaction] = {}
        self._on_deadline = on_deadline
        #: Created only for a gtrid somebody waits on, set when it is final.
        self._done: dict[str, asyncio.Event] = {}
        #: ``release_all`` ran: waiting ends at once from then on.
        self._released = False
        #: Set (and replaced) at each status change of a gtrid somebody waits on.
        self._changed: dict[str, asyncio.Event] = {}
        #: Where each resource manager ever enlisted is served now; a participant that
        #: re-registers elsewhere replaces its entry.
        self.rm_endpoints: dict[str, str] = {}
        #: What each transaction adds to the counts: its status and whether it is overdue.
        self._counted: dict[str, tuple[TxStatus, bool]] = {}
        self._by_status: dict[tuple[TxStatus, bool], int] = {
            (status, overdue): 0 for status in TxStatus for overdue in (False, True)
        }
        #: The keys of ``_by_status`` themselves, so ``_counted`` shares them instead of holding
        #: a tuple of its own per transaction.
        self._keys = {key: key for key in self._by_status}
        self._deadlines: dict[str, asyncio.TimerHandle] = {}
        #: Transactions not yet final.
        self.open = 0

    # ----------------------------------------------------------------- reading

    def get(self, gtrid: str) -> sm.Transaction:
        """The transaction; INVALID_ARGUMENT for a malformed gtrid, NOT_FOUND for an unknown one."""
        validate_gtrid(gtrid)
        tx = self._txs.get(gtrid)
        if tx is None:
            raise NotFoundError(f"unknown transaction {gtrid}")
        return tx

    def known(self, gtrid: str) -> sm.Transaction | None:
        return self._txs.get(gtrid)

    def transactions(
        self, statuses: Iterable[TxStatus] = (), begun_after: float | None = None
    ) -> list[sm.Transaction]:
        """Those in ``statuses`` (all when empty) begun after ``begun_after`` (wall-clock seconds)."""
        wanted = set(statuses)
        return [
            tx
            for tx in self._txs.values()
            if (not wanted or tx.status in wanted) and (begun_after is None or tx.begun_at >= begun_after)
        ]

    def all(self) -> list[sm.Transaction]:
        return list(self._txs.values())

    def count(self, status: TxStatus, *, overdue: bool | None = None) -> int:
        """Transactions in ``status`` (only those past their deadline, or not, when ``overdue`` is
        given). Safe to call from any thread: it reads two integers."""
        if overdue is None:
            return self._by_status[(status, False)] + self._by_status[(status, True)]
        return self._by_status[(status, overdue)]

    @property
    def endpoints(self) -> set[str]:
        """Where the participants are served now (host:port)."""
        return set(self.rm_endpoints.values())

    # ----------------------------------------------------------------- changing

    def load(self, txs: list[sm.Transaction]) -> None:
        """Take the transactions rebuilt from the log (before anything else is added)."""
        # Unfinished transactions last: their endpoints are the newest (a move updates only them).
        ordered = sorted(txs, key=lambda tx: tx.status not in CLOSED)
        self.rm_endpoints = {b.rm_id: b.endpoint for tx in ordered for b in tx.branches.values()}
        for tx in txs:
            self.add(tx)

    def add(self, tx: sm.Transaction) -> None:
        """Hold ``tx``; one timer per open transaction serves its timeout and the overdue count."""
        self._txs[tx.gtrid] = tx
        if not tx.status.is_final:
            self.open += 1
            loop = asyncio.get_running_loop()
            delay = max(0.0, tx.deadline_mono - time.monotonic())
            self._deadlines[tx.gtrid] = loop.call_later(delay, self._past_deadline, tx.gtrid)
        self.observe(tx)

    def enlisted(self, rm_id: str, endpoint: str) -> None:
        # Re-inserted so the dict's order is least recently enlisted first.
        self.rm_endpoints.pop(rm_id, None)
        self.rm_endpoints[rm_id] = endpoint
        if len(self.rm_endpoints) > MAX_KNOWN_PARTICIPANTS:
            del self.rm_endpoints[next(iter(self.rm_endpoints))]

    def observe(self, tx: sm.Transaction) -> None:
        """Bring the counts in line with ``tx``'s status; call after every status change."""
        overdue = tx.gtrid not in self._deadlines and not tx.status.is_final
        now = self._keys[(tx.status, overdue)]
        was = self._counted.get(tx.gtrid)
        if was == now:
            return
        if was is not None:
            self._by_status[was] -= 1
        self._by_status[now] += 1
        self._counted[tx.gtrid] = now
        changed = self._changed.pop(tx.gtrid, None)
        if changed is not None:
            changed.set()

    def finished(self, tx: sm.Transaction) -> None:
        """``tx`` reached a final status: no longer open, its waiters are answered."""
        self.open -= 1
        deadline = self._deadlines.pop(tx.gtrid, None)
        if deadline is not None:
            deadline.cancel()
        self.observe(tx)
        done = self._done.pop(tx.gtrid, None)
        if done is not None:
            done.set()

    def drop(self, gtrid: str) -> None:
        tx = self._txs.pop(gtrid, None)
        self._done.pop(gtrid, None)
        counted = self._counted.pop(gtrid, None)
        if counted is not None:
            self._by_status[counted] -= 1
        deadline = self._deadlines.pop(gtrid, None)
        if deadline is not None:
            deadline.cancel()
            if tx is not None and not tx.status.is_final:
                self.open -= 1

    def _past_deadline(self, gtrid: str) -> None:
        self._deadlines.pop(gtrid, None)
        tx = self._txs.get(gtrid)
        if tx is not None:
            self.observe(tx)
            if self._on_deadline is not None:
                self._on_deadline(gtrid)

    def cancel_deadlines(self) -> None:
        """Stop every deadline timer (shutdown, or a stopped log)."""
        for timer in self._deadlines.values():
            timer.cancel()

    def prune(self, *, retention: float, keep: int) -> None:
        """Drop completed history older than ``retention`` seconds, and the oldest past ``keep``."""
        horizon = time.monotonic() - retention
        history = [tx for tx in self._txs.values() if tx.status in CLOSED]
        excess = len(history) - keep
        for i, tx in enumerate(history):  # oldest first: dicts keep begin order
            if i < excess or (tx.completed_mono is not None and tx.completed_mono < horizon):
                self.drop(tx.gtrid)

    # ----------------------------------------------------------------- waiting

    async def wait_done(self, gtrid: str, timeout: float) -> None:
        """Until ``gtrid`` is final or ``timeout`` seconds passed (or ``release_all``)."""
        tx = self._txs.get(gtrid)
        if tx is None or tx.status.is_final or self._released:
            return
        done = self._done.get(gtrid)
        if done is None:
            done = self._done[gtrid] = asyncio.Event()
        # A timeout scope around the wait, not wait_for: no task of its own per waiting commit.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await done.wait()

    async def wait_decided(self, tx: sm.Transaction, until: float, stopped: Callable[[], bool]) -> None:
        """Until ``tx`` has left Preparing and Prepared, the loop's clock reaches ``until``, or
        ``stopped()`` holds; woken by the status change itself (or ``release_all``), not by polling."""
        loop = asyncio.get_running_loop()
        while tx.status in _DECIDING and not stopped():
            left = until - loop.time()
            if left <= 0:
                return
            changed = self._changed.setdefault(tx.gtrid, asyncio.Event())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), left)

    def release_all(self) -> None:
        """Answer every waiter at once, and later ones without waiting (the log stopped)."""
        self._released = True
        for done in self._done.values():
            done.set()
        for changed in self._changed.values():
            changed.set()
        self._changed.clear()
