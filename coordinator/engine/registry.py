"""The transactions the engine holds: lookup, begin and enlist bookkeeping, history retention,
and the counts the gauges read.

Completed history (Committed, Rolledback: nothing changes it any more) is kept compact: each such
transaction as its kept records (the bytes of the log records that made it what it is, or of its
checkpoint snapshot; see ``journal.expand``) plus the few fields a listing filters and retention
measures by, in a tuple the garbage collector stops tracking. A long history then adds nothing to
the collector's work, which would otherwise pause the event loop for every object of every kept
transaction. The compact form is made by replay, or by the first checkpoint that writes the
transaction; it is expanded into a ``Transaction`` (a fresh one each time) when asked for.

Everything here runs on the engine's event loop. The counts are kept up to date as statuses
change (``observe``) so that reading them costs the same with ten transactions or a million,
and so that a reader on another thread (a metrics scrape) only ever reads single integers:
nothing outside the loop iterates a collection that the loop changes.
"""

from __future__ import annotations

import asyncio
import contextlib
import operator
import time
from collections.abc import Callable, Iterable

from xatm.coordinator import protocol as sm
from xatm.coordinator.engine.deadlines import Deadlines
from xatm.coordinator.journal import CorruptHistory, Places, Served, expand, served
from xatm.participant.errors import NotFoundError
from xatm.participant.xa import Decision, TxStatus, validate_gtrid

__all__ = ["CLOSED", "MAX_KNOWN_PARTICIPANTS", "Compact", "Kept", "Registry"]

#: Resource managers remembered for the recovery scan; past this the least recently enlisted
#: is forgotten, so clients naming ever new rm_ids cannot grow the table for ever.
MAX_KNOWN_PARTICIPANTS = 10_000

#: Completed without a heuristic: nothing is called on their branches any more (a move does not
#: concern them), they age out as history, and they are not "active".
CLOSED = (TxStatus.COMMITTED, TxStatus.ROLLEDBACK)
#: Sorts the transactions a checkpoint made compact by completion, then gtrid.
_FIRST_TWO = operator.itemgetter(0, 1)
#: Undecided while the prepares are out: a commit request's answer waits for these to pass.
_DECIDING = (TxStatus.PREPARING, TxStatus.PREPARED)

#: A completed transaction kept compact: its kept records (``journal.expand`` reads them), its
#: status, when it began (wall-clock seconds), when it completed (monotonic seconds; a
#: transaction rebuilt from the log counts from the restart) and where its resource managers were
#: served (a checkpoint writes it beside the records). Plain values only, so the tuple is left
#: untracked by the garbage collector.
Compact = tuple[bytes, int, float, float, Served]


class Registry:
    """Transactions by gtrid, in begin order (the oldest history is dropped first)."""

    def __init__(self, on_deadline: Callable[[str], None] | None = None) -> None:
        """``on_deadline(gtrid)`` is called when an open transaction reaches its deadline."""
        #: Held as objects: every transaction not completed, and those completed since the last
        #: checkpoint (in begin order).
        self._txs: dict[str, sm.Transaction] = {}
        #: Completed history kept compact, oldest completion first (see the module docstring).
        self._history: dict[str, Compact] = {}
        #: Each distinct ``Served`` of the transactions made compact, as one tuple they share.
        self._shapes: dict[Places, Served] = {}
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
        #: One timer for the deadlines of all open transactions.
        self._deadlines = Deadlines(self._holds_open, self._past_deadline)
        #: Transactions not yet final.
        self.open = 0

    # ----------------------------------------------------------------- reading

    def get(self, gtrid: str) -> sm.Transaction:
        """The transaction; INVALID_ARGUMENT for a malformed gtrid, NOT_FOUND for an unknown one."""
        validate_gtrid(gtrid)
        tx = self.known(gtrid)
        if tx is None:
            raise NotFoundError(f"unknown transaction {gtrid}")
        return tx

    def known(self, gtrid: str) -> sm.Transaction | None:
        """The transaction, None for an unknown one. A completed one kept compact comes back as a
        fresh object each time: changing it changes nothing here (nothing changes history)."""
        tx = self._txs.get(gtrid)
        if tx is None:
            kept = self._history.get(gtrid)
            if kept is not None:
                return _expanded(gtrid, kept)
        return tx

    def transactions(
        self, statuses: Iterable[TxStatus] = (), begun_after: float | None = None
    ) -> list[sm.Transaction]:
        """Those in ``statuses`` (all when empty) begun after ``begun_after`` (wall-clock seconds):
        the compact history first (expanded only when it matches; ``Kept.shown``), then the others
        in begin order."""
        return [row.shown() if isinstance(row, Kept) else row for row in self.listing(statuses, begun_after)]

    def listing(
        self, statuses: Iterable[TxStatus] = (), begun_after: float | None = None
    ) -> list[sm.Transaction | Kept]:
        """As ``transactions()``, but the compact history stays compact (``Kept``): a listing
        sorts and pages on begin time and gtrid, and expands only the page it shows."""
        wanted = set(statuses)

        def chosen(status: int, begun_at: float) -> bool:
            return (not wanted or status in wanted) and (begun_after is None or begun_at >= begun_after)

        rows: list[sm.Transaction | Kept] = [
            Kept(gtrid, kept) for gtrid, kept in self._history.items() if chosen(kept[1], kept[2])
        ]
        rows.extend(tx for tx in self._txs.values() if chosen(tx.status, tx.begun_at))
        return rows

    def live(self) -> list[sm.Transaction]:
        """The transactions held as objects: all but the compact history, in begin order."""
        return list(self._txs.values())

    def history(self) -> dict[str, Compact]:
        """A copy of the compact history (gtrid -> what it is kept as), oldest completion first.

        A copy of the dict, made at C speed: a list of its items would be as many new objects
        for the garbage collector to look at, on every checkpoint."""
        return dict(self._history)

    def __contains__(self, gtrid: object) -> bool:
        """Whether ``gtrid`` is held here, live or kept compact (nothing is expanded)."""
        return gtrid in self._txs or gtrid in self._history

    def __len__(self) -> int:
        return len(self._txs) + len(self._history)

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

    def load(
        self,
        txs: list[sm.Transaction],
        history: dict[str, tuple[bytes, int, float, Served]] | None = None,
        endpoints: dict[str, str] | None = None,
    ) -> None:
        """Take the transactions rebuilt from the log (before anything else is added): ``txs`` as
        objects, ``history`` compact (gtrid -> kept records, status, begun_at, where served; oldest
        completion first) with ``endpoints`` (rm_id -> host:port) their branches were served at."""
        # Unfinished transactions last: their endpoints are the newest (a move updates only them).
        ordered = sorted(txs, key=lambda tx: tx.status not in CLOSED)
        self.rm_endpoints = dict(endpoints or {})
        self.rm_endpoints.update((b.rm_id, b.endpoint) for tx in ordered for b in tx.branches.values())
        now = time.monotonic()
        counted = self._keys[(TxStatus.COMMITTED, False)], self._keys[(TxStatus.ROLLEDBACK, False)]
        for gtrid, (payload, status, begun_at, where) in (history or {}).items():
            self._history[gtrid] = (payload, status, begun_at, now, where)
            key = counted[status == TxStatus.ROLLEDBACK]
            self._counted[gtrid] = key
            self._by_status[key] += 1
        for tx in txs:
            self.add(tx)

    def add(self, tx: sm.Transaction) -> None:
        """Hold ``tx``; an open one's deadline serves its timeout and the overdue count."""
        self._txs[tx.gtrid] = tx
        if not tx.status.is_final:
            self.open += 1
            self._deadlines.add(tx)
        self.observe(tx)

    def enlisted(self, rm_id: str, endpoint: str) -> None:
        # Re-inserted so the dict's order is least recently enlisted first.
        self.rm_endpoints.pop(rm_id, None)
        self.rm_endpoints[rm_id] = endpoint
        if len(self.rm_endpoints) > MAX_KNOWN_PARTICIPANTS:
            del self.rm_endpoints[next(iter(self.rm_endpoints))]

    def observe(self, tx: sm.Transaction) -> None:
        """Bring the counts in line with ``tx``'s status; call after every status change."""
        overdue = not tx.status.is_final and time.monotonic() >= tx.deadline_mono
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
        self._deadlines.settle()
        self.observe(tx)
        done = self._done.pop(tx.gtrid, None)
        if done is not None:
            done.set()

    def compact(self, payloads: dict[str, bytes]) -> None:
        """Keep compact each completed transaction of ``payloads`` (gtrid -> its kept records: its
        snapshot record as a checkpoint wrote it) still held as an object.

        Appended in completion order: each checkpoint's transactions completed after the previous
        checkpoint began, so the compact history stays ordered by completion (``prune`` relies
        on it)."""
        now = time.monotonic()
        batch = []
        for gtrid, payload in payloads.items():
            tx = self._txs.get(gtrid)
            if tx is not None and tx.status in CLOSED:
                del self._txs[gtrid]
                completed = tx.completed_mono if tx.completed_mono is not None else now
                where = served(tuple((b.rm_id, b.endpoint) for b in tx.branches.values()), self._shapes)
                batch.append((completed, gtrid, payload, int(tx.status), tx.begun_at, where))
        batch.sort(key=_FIRST_TWO)
        for completed, gtrid, payload, status, begun_at, where in batch:
            self._history[gtrid] = (payload, status, begun_at, completed, where)

    def drop(self, gtrid: str) -> None:
        self._history.pop(gtrid, None)
        tx = self._txs.pop(gtrid, None)
        self._done.pop(gtrid, None)
        counted = self._counted.pop(gtrid, None)
        if counted is not None:
            self._by_status[counted] -= 1
        if tx is not None and not tx.status.is_final:
            self.open -= 1
        self._deadlines.settle()

    def _holds_open(self, tx: sm.Transaction) -> bool:
        """``tx`` is held here and not final: its deadline still matters."""
        return not tx.status.is_final and self._txs.get(tx.gtrid) is tx

    def _past_deadline(self, tx: sm.Transaction) -> None:
        self.observe(tx)
        if self._on_deadline is not None:
            self._on_deadline(tx.gtrid)

    def cancel_deadlines(self) -> None:
        """Stop watching deadlines (shutdown, or a stopped log)."""
        self._deadlines.stop()

    def prune(self, *, retention: float, keep: int) -> None:
        """Drop completed history older than ``retention`` seconds, and the oldest past ``keep``."""
        horizon = time.monotonic() - retention
        closed = [tx for tx in self._txs.values() if tx.status in CLOSED]
        compact = len(self._history)
        excess = compact + len(closed) - keep
        # Oldest first: the compact history, in completion order, then the rest in begin order.
        # The compact history is read only as far as something is dropped (see ``compact``).
        doomed = []
        for i, (gtrid, kept) in enumerate(self._history.items()):
            if i >= excess and kept[3] >= horizon:
                break
            doomed.append(gtrid)
        for i, tx in enumerate(closed, start=compact):
            if i < excess or (tx.completed_mono is not None and tx.completed_mono < horizon):
                doomed.append(tx.gtrid)
        for gtrid in doomed:
            self.drop(gtrid)

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


class Kept:
    """A transaction of the compact history as a listing holds it: its gtrid and begin time
    (wall-clock seconds) to sort and page on, the rest expanded only when shown."""

    __slots__ = ("_kept", "begun_at", "gtrid")

    def __init__(self, gtrid: str, kept: Compact) -> None:
        self.gtrid = gtrid
        self.begun_at = kept[2]
        self._kept = kept

    def expand(self) -> sm.Transaction:
        """The whole transaction, rebuilt from its kept records. Raises ``CorruptHistory`` for
        records this version cannot read."""
        return _expanded(self.gtrid, self._kept)

    def shown(self) -> sm.Transaction:
        """``expand()``, or for records this version cannot read what is known without them:
        the gtrid, the status, when it began, no branches, and the error as its reason; so that
        one such transaction leaves a listing of the others whole."""
        try:
            return self.expand()
        except CorruptHistory as err:
            kept = self._kept
            status = TxStatus(kept[1])
            tx = sm.Transaction(
                gtrid=self.gtrid,
                timeout_ms=0,
                status=status,
                rollback_reason=err.message,
                decision=Decision.COMMIT if status == TxStatus.COMMITTED else Decision.ROLLBACK,
                begun_at=kept[2],
            )
            tx.journaled = True
            tx.begun_mono = tx.completed_mono = kept[3]
            return tx


def _expanded(gtrid: str, kept: Compact) -> sm.Transaction:
    tx = expand(gtrid, kept[0])
    tx.journaled = True
    tx.begun_mono = tx.completed_mono = kept[3]
    return tx
