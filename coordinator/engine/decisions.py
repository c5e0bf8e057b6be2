"""The engine's writes to the transaction log: records as they happen, the forced commit
decision, and checkpoints that rewrite the log as one snapshot per kept transaction.

Presumed abort decides what is written. A transaction the log does not know is rolled back
after a restart, so nothing is logged while it is undecided: no begin, no enlistment, no
Preparing or Prepared. Its first record is a snapshot carrying every branch, written (not
forced) when it starts preparing or rolling back, so that a restarted coordinator rolls back
its branches at once instead of leaving them to the participants' deadlines. The commit decision
is forced to disk before any phase-two message and carries every branch again: it alone is
enough for recovery. The end record closes the transaction.

A branch's yes vote (XA_OK or XA_RDONLY) given while its transaction is preparing is not
written on its own either: the commit decision carries every branch's vote (its last code,
phase and reason), so a committed two-branch transaction leaves five records (snapshot,
decision, two phase-two answers, end). Should the transaction turn to anything but the decision
(a no vote, its timeout, an operator's rollback, every branch read-only), the votes held back
are written before the record of that turn, so each branch's XA return code is in the log
whatever the path. A crash before the decision loses none that was durable: the held votes were
never forced, and presumed abort rolls such a transaction back. Any other answer is written
as it comes.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Iterator

from xatm.coordinator import metrics
from xatm.coordinator import protocol as sm
from xatm.coordinator.engine.audit import AuditTrail
from xatm.coordinator.engine.registry import CLOSED, Compact, Registry
from xatm.coordinator.journal import RecordFactory as R
from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.interface import Encoded, LogStopped, TxLog
from xatm.coordinator.txlog.kept import kept_record
from xatm.participant.xa import Decision, Phase, TxStatus, XaCode, Xid

__all__ = ["DecisionLog"]


class DecisionLog:
    """What the engine makes durable, on ``log``; every method may raise ``LogStopped``."""

    def __init__(self, log: TxLog, registry: Registry, audit: AuditTrail) -> None:
        self.log = log
        self._registry = registry
        self._audit = audit
        #: Transactions whose commit decision is in the log's queue but not yet applied here.
        self._deciding: set[str] = set()
        #: Yes votes not written yet, by gtrid (see the module docstring), in the order given.
        self._held: dict[str, list[_Vote]] = {}

    async def append(self, record: wal_pb2.WalRecord) -> None:
        """Queue a record (durable with the next forced write)."""
        await self.log.append(record)

    async def forced(self, record: wal_pb2.WalRecord) -> None:
        """Write a record and wait until it is on disk."""
        await self.log.append(record, force=True)

    async def vote(
        self, tx: sm.Transaction, bqual: str, code: XaCode, reason: str, *, preparing: bool
    ) -> None:
        """Log branch ``bqual``'s prepare answer, read while ``tx`` was ``preparing`` (its status
        before the answer was applied) or not. A yes vote read while preparing is held back (see
        the module docstring); any other answer is queued at once."""
        branch = tx.branches[bqual]
        if preparing and code in _YES:
            self._held.setdefault(tx.gtrid, []).append((tx, branch, code, reason, time.time()))
        else:
            await self.append(R.branch_result(tx, branch, Phase.PREPARE, code, reason, time.time()))

    async def status_changed(self, tx: sm.Transaction) -> None:
        """Log ``tx``'s new status when a restart needs it (see the module docstring)."""
        if tx.status in _UNLOGGED:
            return
        if not tx.journaled:
            await self._first(tx)
        elif tx.status != TxStatus.PREPARING:
            await self._write_held(tx.gtrid)
            await self.append(R.status(tx, time.time()))

    async def ended(self, tx: sm.Transaction) -> None:
        """Log that ``tx`` is final: an end record, or a snapshot when nothing of it is logged yet
        (a one-phase commit), so that it stays in the history after a restart."""
        if tx.journaled:
            await self._write_held(tx.gtrid)  # every branch read-only: no decision carried them
            await self.append(R.end(tx, time.time()))
        else:
            await self._first(tx)

    def held(self, gtrid: str) -> list[tuple[sm.Branch, XaCode, str, float]]:
        """The yes votes of ``gtrid`` read but not written yet, in the order read: (branch, code,
        reason, when it was read in seconds since the epoch)."""
        return [
            (branch, code, reason, read_at) for _, branch, code, reason, read_at in self._held.get(gtrid, ())
        ]

    async def release(self) -> None:
        """Write every vote still held back (the engine stops: no decision will carry them).
        Does nothing once the log stopped."""
        if self.log.stopped is not None:
            return
        try:
            for gtrid in list(self._held):
                await self._write_held(gtrid)
        except LogStopped:
            return  # stopped meanwhile: nothing more can be written, and presumed abort holds

    async def _write_held(self, gtrid: str) -> None:
        """Queue the yes votes of ``gtrid`` held back, each with the time it was read."""
        held = self._held.pop(gtrid, None)
        if held:
            for tx, branch, code, reason, read_at in held:
                await self.append(R.branch_result(tx, branch, Phase.PREPARE, code, reason, read_at))

    async def _first(self, tx: sm.Transaction) -> None:
        tx.journaled = True
        await self.append(R.snapshot(tx, time.time()))

    async def decide(self, tx: sm.Transaction) -> None:
        """Force the commit decision of a prepared ``tx`` to disk.

        From the write until the caller applies it (``protocol.decision_durable``), the log holds a
        decision that ``tx`` does not show yet; a checkpoint meanwhile snapshots it as decided.
        The caller applies it right after this returns, without awaiting in between.
        """
        started = time.perf_counter()
        self._deciding.add(tx.gtrid)
        self._held.pop(tx.gtrid, None)  # the decision carries every branch's vote
        try:
            await self.log.append(R.decision(tx, time.time()), force=True)
        except BaseException:
            self._deciding.discard(tx.gtrid)
            raise
        tx.journaled = True
        metrics.PHASE_DURATION.labels(phase="decision").observe(time.perf_counter() - started)

    def applied(self, tx: sm.Transaction) -> None:
        """The decision written by ``decide`` is now what ``tx`` says (or was abandoned)."""
        self._deciding.discard(tx.gtrid)

    async def foreign_result(self, xid: Xid, endpoint: str, phase: Phase, code: XaCode, reason: str) -> None:
        """Record what recovery did to a branch the coordinator holds no transaction for."""
        branch = sm.Branch(
            xid.bqual, "", endpoint, sm.B.ROLLEDBACK if phase == Phase.ROLLBACK else sm.B.COMMITTED
        )
        tx = sm.Transaction(gtrid=xid.gtrid, timeout_ms=0)
        await self.append(R.branch_result(tx, branch, phase, code, reason, time.time()))

    async def checkpoint(self, *, retention: float, keep: int) -> None:
        """Drop history past ``retention`` seconds (and beyond ``keep`` transactions), then rewrite
        the log as the audit records plus one snapshot per kept transaction.

        Only the transactions still changing are turned into records here, on the loop. The
        completed history (Committed, Rolledback: nothing changes it any more) is written as the
        bytes the registry keeps it as; a transaction completed since the last checkpoint is
        serialised where the log consumes the snapshot (off the loop for the file WAL), and once
        the checkpoint is written the registry keeps it compact as those bytes, which carry the
        time of that checkpoint from then on.
        """
        now = time.time()
        self._registry.prune(retention=retention, keep=keep)
        history = self._registry.history()
        items: list[sm.Transaction | wal_pb2.WalRecord] = [
            tx if tx.status in CLOSED else self._snapshot(tx, now) for tx in self._registry.live()
        ]
        encoded: dict[str, bytes] = {}
        await self.log.checkpoint(_snapshots(self._audit.as_records(), history, items, now, encoded))
        self._registry.compact(encoded)

    def _snapshot(self, tx: sm.Transaction, now: float) -> wal_pb2.WalRecord:
        """The checkpoint record of ``tx``: what the log says about it, which may be ahead of ``tx``.

        A commit decision queued before the checkpoint is durable by the time the checkpoint is
        (the log is written in order), so the snapshot must say Committing already.
        """
        return R.snapshot(_decided(tx) if tx.gtrid in self._deciding else tx, now)


def _snapshots(
    audit: list[wal_pb2.WalRecord],
    history: dict[str, Compact],
    items: list[sm.Transaction | wal_pb2.WalRecord],
    now: float,
    encoded: dict[str, bytes],
) -> Iterator[wal_pb2.WalRecord | Encoded]:
    """The checkpoint's records: ``audit``, the compact ``history`` (gtrid -> its kept records
    first) each as a completed record holding its kept records as they are, then each of ``items``
    as a record, in order; a completed transaction's snapshot record is serialised and kept (as
    its kept records) in ``encoded``.

    Runs wherever the log consumes it: reads only its arguments and fills ``encoded``, which
    nothing else touches until the checkpoint returns."""
    yield from audit
    for gtrid, kept in history.items():
        yield Encoded(gtrid, "completed", R.completed(gtrid, kept[0], kept[1], kept[2], kept[4], now))
    for item in items:
        if isinstance(item, sm.Transaction):
            payload = R.snapshot(item, now).SerializeToString()
            encoded[item.gtrid] = kept_record(payload)
            yield Encoded(item.gtrid, "snapshot", payload)
        else:
            yield item


#: Statuses no record is written for: undecided (presumed abort rolls them back), decided by the
#: forced decision (a two-phase Committing is written by ``decide``) or by the resource manager
#: (a one-phase Committing: a restart has nothing to finish), or followed by the end record.
_UNLOGGED = frozenset(
    {
        TxStatus.CREATED,
        TxStatus.MARKED_ROLLBACK,
        TxStatus.PREPARED,
        TxStatus.COMMITTING,
        TxStatus.COMMITTED,
        TxStatus.ROLLEDBACK,
        TxStatus.HEURISTICALLY_COMPLETED,
    }
)


#: The prepare answers that vote yes: held back while preparing (see the module docstring).
_YES = frozenset({XaCode.XA_OK, XaCode.XA_RDONLY})

#: A vote held back: its transaction, its branch, code, reason, and when it was read (s since
#: the epoch, the time its record carries).
_Vote = tuple[sm.Transaction, sm.Branch, XaCode, str, float]


def _decided(tx: sm.Transaction) -> sm.Transaction:
    """``tx`` as its commit decision says: Committing, every branch still prepared."""
    return dataclasses.replace(tx, status=TxStatus.COMMITTING, decision=Decision.COMMIT)
