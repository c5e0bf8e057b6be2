"""Mapping between transactions and log records, and replay of the log into transactions.

Records say what the state machine decided (including each branch's resulting status), so
replay is bookkeeping with no protocol logic: the log, not the code version, is the truth.
Begin and enlist records are no longer written (presumed abort needs nothing of an undecided
transaction; the commit decision carries it whole) but logs that hold them still replay.

Two replays fold the same records the same way. ``replay`` builds a ``Transaction`` for every
transaction the log knows. ``replay_compact``, which start-up uses, folds each transaction into
its snapshot message instead, and keeps a completed one (Committed, Rolledback: nothing changes
it any more) as the bytes of its snapshot record, the form a checkpoint writes and ``expand``
reads back: a long history then costs a bytes object per transaction, which the garbage
collector never scans, and only the transactions still in flight become objects.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableSequence
from dataclasses import dataclass
from enum import IntEnum
from itertools import islice, repeat
from sys import intern
from typing import Protocol, TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from xatm.coordinator.protocol import Branch, Transaction
from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.interface import Framed
from xatm.participant.api.v1 import admin_pb2, xa_pb2
from xatm.participant.runtime.proto_enum import proto_enum
from xatm.participant.xa import BranchStatus, Decision, Phase, TxStatus, XaCode

__all__ = [
    "AnswerIndex",
    "Indexed",
    "RecordFactory",
    "Replayed",
    "expand",
    "replay",
    "replay_compact",
    "seconds",
    "timestamp",
]


def timestamp(seconds: float) -> Timestamp:
    """A protobuf Timestamp for ``seconds`` since the epoch."""
    stamp = Timestamp()
    set_time(stamp, seconds)
    return stamp


def set_time(stamp: Timestamp, seconds: float) -> None:
    """Set ``stamp`` (a Timestamp field, in place) to ``seconds`` since the epoch, as
    ``FromNanoseconds`` does without its Python-level checks (checkpoints call this per record)."""
    stamp.seconds, stamp.nanos = divmod(int(seconds * 1e9), 1_000_000_000)


def seconds(stamp: Timestamp) -> float:
    """Seconds since the epoch of a protobuf Timestamp."""
    # ToNanoseconds() / 1e9, without its Python-level checks: replay calls this per record.
    return (stamp.seconds * 1_000_000_000 + stamp.nanos) / 1e9


class RecordFactory:
    """Builds the WAL records for one transaction's events, stamped with the given time."""

    @staticmethod
    def _base(gtrid: str, now: float) -> wal_pb2.WalRecord:
        return wal_pb2.WalRecord(time=timestamp(now), gtrid=gtrid)

    @classmethod
    def branch_result(
        cls, tx: Transaction, branch: Branch, phase: Phase, code: XaCode, reason: str, now: float
    ) -> wal_pb2.WalRecord:
        rec = cls._base(tx.gtrid, now)
        rec.branch_result.CopyFrom(
            wal_pb2.BranchResultRecord(
                bqual=branch.bqual,
                phase=proto_enum(phase, xa_pb2.Phase),
                code=proto_enum(code, xa_pb2.XaCode),
                reason=reason,
                status=proto_enum(branch.status, xa_pb2.BranchStatus),
            )
        )
        return rec

    @classmethod
    def late_result(
        cls, tx: Transaction, bqual: str, phase: Phase, code: XaCode, reason: str, now: float
    ) -> wal_pb2.WalRecord:
        """An answer that arrived after its branch was closed: logged, but with no status, so
        replay leaves the branch as the closing record left it."""
        rec = cls._base(tx.gtrid, now)
        rec.branch_result.CopyFrom(
            wal_pb2.BranchResultRecord(
                bqual=bqual,
                phase=proto_enum(phase, xa_pb2.Phase),
                code=proto_enum(code, xa_pb2.XaCode),
                reason=reason,
            )
        )
        return rec

    @classmethod
    def endpoint(cls, tx: Transaction, branch: Branch, now: float) -> wal_pb2.WalRecord:
        """The branch's participant is now served at ``branch.endpoint``."""
        rec = cls._base(tx.gtrid, now)
        rec.endpoint.CopyFrom(wal_pb2.EndpointRecord(bqual=branch.bqual, endpoint=branch.endpoint))
        return rec

    @classmethod
    def status(cls, tx: Transaction, now: float) -> wal_pb2.WalRecord:
        rec = cls._base(tx.gtrid, now)
        rec.status.status = proto_enum(tx.status, xa_pb2.TransactionStatus)
        if tx.rollback_code is not None:
            rec.status.rollback_code = proto_enum(tx.rollback_code, xa_pb2.XaCode)
            rec.status.reason = tx.rollback_reason
        return rec

    @classmethod
    def decision(cls, tx: Transaction, now: float) -> wal_pb2.WalRecord:
        """The commit decision, carrying ``tx`` as decided: Committing, every branch."""
        rec = cls._base(tx.gtrid, now)
        rec.decision.commit = True
        _fill_snapshot(rec.decision.transaction, tx)
        rec.decision.transaction.status = xa_pb2.TRANSACTION_STATUS_COMMITTING
        rec.decision.transaction.decision = xa_pb2.DECISION_COMMIT
        return rec

    @classmethod
    def end(cls, tx: Transaction, now: float) -> wal_pb2.WalRecord:
        rec = cls._base(tx.gtrid, now)
        rec.end.status = proto_enum(tx.status, xa_pb2.TransactionStatus)
        return rec

    @classmethod
    def forget(cls, tx: Transaction, now: float) -> wal_pb2.WalRecord:
        rec = cls._base(tx.gtrid, now)
        rec.forget.SetInParent()
        return rec

    @classmethod
    def savepoint(
        cls, tx: Transaction, savepoint_id: str, rolled_back: bool, now: float
    ) -> wal_pb2.WalRecord:
        rec = cls._base(tx.gtrid, now)
        rec.savepoint.CopyFrom(wal_pb2.SavepointRecord(savepoint_id=savepoint_id, rolled_back=rolled_back))
        return rec

    @staticmethod
    def audit(record: admin_pb2.AuditRecord) -> wal_pb2.WalRecord:
        wal = wal_pb2.WalRecord(time=record.time, gtrid=record.gtrid)
        wal.audit.CopyFrom(record)
        return wal

    @staticmethod
    def snapshot(tx: Transaction, now: float) -> wal_pb2.WalRecord:
        """The checkpoint form of ``tx``: everything replay needs to rebuild it."""
        # Filled in place, field by field: a checkpoint builds one per kept transaction.
        rec = wal_pb2.WalRecord(gtrid=tx.gtrid)
        set_time(rec.time, now)
        _fill_snapshot(rec.snapshot, tx)
        return rec


def _fill_snapshot(snap: wal_pb2.TransactionSnapshot, tx: Transaction) -> None:
    snap.gtrid = tx.gtrid
    snap.status = proto_enum(tx.status, xa_pb2.TransactionStatus)
    snap.timeout_ms = tx.timeout_ms
    set_time(snap.begun_at, tx.begun_at)
    snap.one_phase = tx.one_phase
    snap.recovered = tx.recovered
    snap.inherited = tx.inherited
    if tx.savepoints:
        snap.savepoints.extend(tx.savepoints)
    snap.rollback_reason = tx.rollback_reason
    if tx.completed_at is not None:
        set_time(snap.completed_at, tx.completed_at)
    if tx.rollback_code is not None:
        snap.rollback_code = proto_enum(tx.rollback_code, xa_pb2.XaCode)
    if tx.decision is not None:
        snap.decision = proto_enum(tx.decision, xa_pb2.Decision)
    for b in tx.branches.values():
        branch = snap.branches.add(
            bqual=b.bqual, rm_id=b.rm_id, endpoint=b.endpoint, status=int(b.status), attempts=b.attempts
        )
        if b.last_code is not None:
            branch.has_last_code = True
            branch.last_code = proto_enum(b.last_code, xa_pb2.XaCode)
            branch.last_phase = proto_enum(b.last_phase or 0, xa_pb2.Phase)
            branch.last_reason = b.last_reason


def _from_snapshot(info: wal_pb2.TransactionSnapshot) -> Transaction:
    tx = Transaction(
        gtrid=info.gtrid,
        timeout_ms=info.timeout_ms,
        status=_TX_STATUSES[info.status],
        one_phase=info.one_phase,
        recovered=info.recovered,
        inherited=info.inherited,
        begun_at=seconds(info.begun_at),
        completed_at=seconds(info.completed_at) if info.HasField("completed_at") else None,
        rollback_reason=info.rollback_reason,
        # A proto3 enum has no presence (HasField raises); 0 (XA_OK) is never a rollback code.
        rollback_code=_CODES[info.rollback_code] if info.rollback_code else None,
        decision=_DECISIONS[info.decision] if info.decision else None,
    )
    for b in info.branches:
        tx.branches[b.bqual] = Branch(
            bqual=b.bqual,
            rm_id=intern(b.rm_id),
            endpoint=intern(b.endpoint),
            status=_BRANCH_STATUSES[b.status],
            last_code=_CODES[b.last_code] if b.has_last_code else None,
            last_phase=_PHASES[b.last_phase] if b.has_last_code and b.last_phase else None,
            last_reason=b.last_reason,
            attempts=b.attempts,
        )
    return tx


def replay(
    records: Iterable[wal_pb2.WalRecord],
    *,
    keep: int | None = None,
    audit: MutableSequence[wal_pb2.WalRecord] | None = None,
) -> dict[str, Transaction]:
    """Rebuild every transaction the log still knows, in begin order, folding each record in as
    it comes (``records`` may be a stream read once).

    ``keep``: completed history kept at most (Committed and Rolledback transactions); past it
    the one completed longest ago is dropped at once, so a long log never builds more than
    ``keep`` of them. ``audit``: audit records are appended to it (a bounded deque keeps only
    the newest).

    ``replay_compact`` folds the same record kinds into snapshot messages: a new record kind
    goes into both (tests/unit/test_replay_compact.py checks that they agree).
    """
    txs: dict[str, Transaction] = {}
    #: Completed history, oldest completion first (only counted with ``keep``).
    closed: dict[str, None] = {}
    for rec in records:
        kind = rec.WhichOneof("body")
        if kind == "audit":
            if audit is not None:
                audit.append(rec)
            continue
        gtrid = rec.gtrid
        if kind == "snapshot":
            snapped = txs[gtrid] = _from_snapshot(rec.snapshot)
            if keep is not None and snapped.status in _CLOSED:
                _close(txs, closed, gtrid, keep)
            continue
        if kind == "begin":
            txs[gtrid] = Transaction(gtrid=gtrid, timeout_ms=rec.begin.timeout_ms, begun_at=seconds(rec.time))
            continue
        if kind == "decision" and rec.decision.HasField("transaction"):
            txs[gtrid] = _from_snapshot(rec.decision.transaction)
            continue
        tx = txs.get(gtrid)
        if tx is None:
            continue  # events of a transaction forgotten or no longer kept, or a foreign result
        if kind == "branch_result":
            r = rec.branch_result
            branch = tx.branches.get(r.bqual)
            if branch is not None and r.status:  # no status: a late answer that changed nothing
                branch.last_phase, branch.last_code, branch.last_reason = (
                    _PHASES[r.phase],
                    _CODES[r.code],
                    r.reason,
                )
                branch.status = _BRANCH_STATUSES[r.status]
        elif kind == "enlist":
            e = rec.enlist
            # Interned: the same few resource managers and endpoints recur in every transaction
            # (a bqual is one branch's own: interning it would share nothing).
            tx.branches[e.bqual] = Branch(e.bqual, intern(e.rm_id), intern(e.endpoint))
        elif kind == "endpoint":
            moved = tx.branches.get(rec.endpoint.bqual)
            if moved is not None:
                moved.endpoint = rec.endpoint.endpoint
        elif kind == "status":
            _apply_status(tx, rec.status)
        elif kind == "decision":
            tx.status, tx.decision = TxStatus.COMMITTING, Decision.COMMIT
        elif kind == "end":
            tx.status, tx.completed_at = _TX_STATUSES[rec.end.status], seconds(rec.time)
            if keep is not None and tx.status in _CLOSED:
                _close(txs, closed, gtrid, keep)
        elif kind == "forget":
            del txs[gtrid]
            closed.pop(gtrid, None)
    return txs


def expand(payload: bytes) -> Transaction:
    """The transaction a snapshot record's bytes (``replay_compact``'s history) describe.

    Raises ``google.protobuf.message.DecodeError`` for bytes that are not a record and
    ``ValueError`` for a value no enum of this version knows."""
    return _from_snapshot(wal_pb2.WalRecord.FromString(payload).snapshot)


@dataclass(slots=True)
class Replayed:
    """What ``replay_compact`` rebuilt: ``live``, every transaction not Committed or Rolledback
    (in the order of their first records); ``history``, each completed one as the bytes of its
    snapshot record (``expand`` reads them), its status and when it began (wall-clock seconds),
    oldest completion first; ``endpoints``, where each resource manager of the completed ones was
    last served (rm_id -> host:port)."""

    live: dict[str, Transaction]
    history: dict[str, tuple[bytes, int, float]]
    endpoints: dict[str, str]


class AnswerIndex(Protocol):
    """Keeps the branch answers that replayed records carry (the console's history of them).

    Told, in log order, of every record that carries answers before the replay reads it (the
    replay changes some records it reads: an index must read at once what it keeps), and of every
    end record after."""

    def answered(self, gtrid: str, record: wal_pb2.WalRecord, kind: str, payload: memoryview | None) -> None:
        """``record`` (of body ``kind``: a branch result, a commit decision that carries its
        transaction, or a snapshot) is about to be replayed; ``payload``, the bytes it was read
        from, when the log gives them (good only during the call)."""

    def ended(self, gtrid: str) -> None:
        """The end record of ``gtrid`` has been replayed."""

    def replayed(self) -> None:
        """Every record has been replayed."""


@dataclass(slots=True)
class Indexed:
    """Records to replay and the ``index`` of branch answers they feed: ``replay_compact`` tells
    the index as it folds each record; read any other way, each record is told as it is read."""

    records: Iterable[wal_pb2.WalRecord]
    index: AnswerIndex

    def frames(self) -> Iterator[tuple[memoryview | None, wal_pb2.WalRecord]]:
        """(payload, record) pairs, the payload None when the log does not give it."""
        if isinstance(self.records, Framed):
            return self.records.frames()
        return zip(repeat(None), self.records)

    def __iter__(self) -> Iterator[wal_pb2.WalRecord]:
        index = self.index
        for payload, record in self.frames():
            kind = record.WhichOneof("body")
            if kind == "end":
                yield record
                index.ended(record.gtrid)
                continue
            if kind in _ANSWERING and (kind != "decision" or record.decision.HasField("transaction")):
                index.answered(record.gtrid, record, kind, payload)
            yield record
        index.replayed()


#: Bodies of the records an ``AnswerIndex`` is told of (a decision only with its transaction).
_ANSWERING = frozenset({"branch_result", "decision", "snapshot"})


def replay_compact(
    records: Iterable[wal_pb2.WalRecord],
    *,
    keep: int | None = None,
    audit: MutableSequence[wal_pb2.WalRecord] | None = None,
) -> Replayed:
    """``replay`` (same arguments, same outcome) without building a ``Transaction`` for a
    completed transaction: each record is folded into its transaction's snapshot message, and a
    transaction that completes leaves as its snapshot record's bytes, stamped with the time of the
    record that completed it.

    The records are the fold's to change (it reads each once): the record that completes a
    transaction becomes that transaction's snapshot record.

    Raises ``ValueError`` for an enum value no member of this version has, as ``replay`` does,
    in what it keeps: a completed transaction is checked as it leaves, the others as they are
    built at the end (a value in a record that a later one replaced whole goes unread).

    ``Indexed`` records have their index told of each record as it is folded (as reading them
    would, in this same pass).
    """
    folding = _Folding(keep)
    waiting = folding.waiting
    shared = folding.shared
    index = records.index if isinstance(records, Indexed) else None
    answered = index.answered if index is not None else None
    ended = index.ended if index is not None else None
    pairs = records.frames() if isinstance(records, Indexed) else zip(repeat(None), records)
    for payload, rec in pairs:
        kind = rec.WhichOneof("body")
        if kind == "branch_result":  # most records are: kept aside until their transaction is read
            gtrid = rec.gtrid
            if answered is not None:
                gtrid = shared.setdefault(gtrid, gtrid)
                answered(gtrid, rec, kind, payload)
            answers = waiting.get(gtrid)
            if answers is not None:
                answers.append(rec)
            else:
                folding.change(rec, kind)
        elif kind == "end":
            folding.end(rec)
            if ended is not None:
                ended(rec.gtrid)
        elif kind == "decision" and rec.decision.HasField("transaction"):
            if answered is not None:
                gtrid = rec.gtrid
                answered(shared.setdefault(gtrid, gtrid), rec, kind, payload)
            folding.start(rec.gtrid, rec.decision.transaction)
        elif kind == "snapshot":
            if answered is not None:
                gtrid = rec.gtrid
                answered(shared.setdefault(gtrid, gtrid), rec, kind, payload)
            folding.snapshot(rec)
        elif kind == "audit":
            if audit is not None:
                audit.append(rec)
        elif kind == "begin":
            snap = wal_pb2.TransactionSnapshot(
                gtrid=rec.gtrid,
                status=xa_pb2.TRANSACTION_STATUS_CREATED,
                timeout_ms=rec.begin.timeout_ms,
                begun_at=rec.time,
            )
            folding.start(rec.gtrid, snap)
        elif kind == "forget":
            folding.forget(rec.gtrid)
        elif kind is not None:
            folding.change(rec, kind)
    if index is not None:
        index.replayed()
    return folding.finish()


class _Folding:
    """``replay_compact``'s state: snapshot messages of the transactions not completed, and
    the snapshot records' bytes of those completed (at most ``keep`` of them).

    A branch's answers are folded into its transaction only when something reads or changes
    the transaction: all but the last answer of each branch are overwritten anyway, and the
    answers given before a record that carries the whole transaction (the commit decision) are
    dropped unread."""

    __slots__ = ("_index", "endpoints", "history", "keep", "live", "shared", "waiting")

    def __init__(self, keep: int | None) -> None:
        self.keep = keep
        #: gtrid -> the one string object for it while its transaction is read, so that what
        #: keeps it (this fold's history, the console's branch history) keeps one string, not a
        #: copy each. Not ``sys.intern``: interned strings are never freed on some Python 3.12
        #: releases, and a gtrid outlives its place in the history only as a leak.
        self.shared: dict[str, str] = {}
        self.live: dict[str, wal_pb2.TransactionSnapshot] = {}
        #: gtrid -> the branch-result records of a live transaction not yet folded into it
        #: (every live transaction has an entry).
        self.waiting: dict[str, list[wal_pb2.WalRecord]] = {}
        self.history: dict[str, tuple[bytes, int, float]] = {}
        self.endpoints: dict[str, str] = {}
        #: gtrid -> (bqual -> branch message), for the transactions with many branches (for a few
        #: it is cheaper built anew); dropped whenever the transaction's message is replaced.
        self._index: dict[str, dict[str, wal_pb2.BranchSnapshot]] = {}

    def start(self, gtrid: str, snap: wal_pb2.TransactionSnapshot) -> None:
        """``gtrid`` is now ``snap`` (its first record, or one that carries it whole)."""
        self.history.pop(gtrid, None)
        self._index.pop(gtrid, None)
        self.live[gtrid] = snap
        self.waiting[gtrid] = []

    def snapshot(self, rec: wal_pb2.WalRecord) -> None:
        snap = rec.snapshot
        if snap.status in _CLOSED:
            gtrid = rec.gtrid
            _leaving(snap, self.endpoints, {})
            self._close(gtrid, rec.SerializeToString(), snap, fresh=gtrid not in self.history)
            self._drop(gtrid)
        else:
            self.start(rec.gtrid, snap)

    def forget(self, gtrid: str) -> None:
        self._drop(gtrid)
        self.history.pop(gtrid, None)

    def end(self, rec: wal_pb2.WalRecord) -> None:
        """Fold an end record; a transaction it completes leaves as its snapshot record, which
        the end record becomes (same time, same gtrid)."""
        gtrid = rec.gtrid
        snap = self.live.get(gtrid)
        if snap is None:
            self.change(rec, "end")
            return
        status = snap.status = rec.end.status
        snap.completed_at.CopyFrom(rec.time)
        if status not in _CLOSED:
            self._settle(gtrid, snap)
            return
        # Its answers are folded in on the way out, in the one pass over its branches.
        _leaving(snap, self.endpoints, _last_answers(self.waiting.pop(gtrid)))
        del self.live[gtrid]
        if self._index:
            self._index.pop(gtrid, None)
        rec.snapshot.CopyFrom(snap)
        self._close(gtrid, rec.SerializeToString(), snap, fresh=True)

    def change(self, rec: wal_pb2.WalRecord, kind: str) -> None:
        """Fold a record that changes a known transaction (ignored for an unknown one, as events
        of a transaction forgotten or no longer kept, or a foreign result, are)."""
        gtrid = rec.gtrid
        snap = self.live.get(gtrid)
        if snap is not None:
            self._settle(gtrid, snap)
            self._apply(gtrid, snap, rec, kind)
            return
        kept = self.history.get(gtrid)
        if kept is None:
            return
        # A record about a completed transaction (a late answer, an end record written again):
        # folded into its snapshot record all the same, which keeps its place and its time.
        closed = wal_pb2.WalRecord.FromString(kept[0])
        self._apply(gtrid, closed.snapshot, rec, kind)
        self._index.pop(gtrid, None)  # it indexes a message read for this record only
        for branch in closed.snapshot.branches:
            self.endpoints[branch.rm_id] = branch.endpoint
        self._close(gtrid, closed.SerializeToString(), closed.snapshot, fresh=False)

    def finish(self) -> Replayed:
        """What was rebuilt, once every record is folded in."""
        for gtrid, snap in self.live.items():
            self._settle(gtrid, snap)
        self.trim()
        live = {gtrid: _from_snapshot(snap) for gtrid, snap in self.live.items()}
        return Replayed(live, self.history, self.endpoints)

    def _drop(self, gtrid: str) -> None:
        self.live.pop(gtrid, None)
        self.waiting.pop(gtrid, None)
        self._index.pop(gtrid, None)

    def _close(self, gtrid: str, payload: bytes, snap: wal_pb2.TransactionSnapshot, *, fresh: bool) -> None:
        history = self.history
        # The string the console's branch history was given for it, one string for both.
        gtrid = self.shared.pop(gtrid, gtrid)
        history[gtrid] = (payload, snap.status, seconds(snap.begun_at))
        # Trimmed a batch at a time: finding a dict's first entry steps over every entry deleted
        # before it, so dropping them one by one would cost more with each. A small batch: what
        # waits to be dropped counts in the peak memory of a replay.
        if fresh and self.keep is not None and len(history) > self.keep + max(self.keep // 32, 1):
            self.trim()

    def trim(self) -> None:
        """Drop the history that completed longest ago beyond ``keep``."""
        if self.keep is not None and len(self.history) > self.keep:
            for gtrid in list(islice(self.history, len(self.history) - self.keep)):
                del self.history[gtrid]

    def _settle(self, gtrid: str, snap: wal_pb2.TransactionSnapshot) -> None:
        """Fold the answers kept aside for the live transaction ``gtrid`` into ``snap``."""
        answers = self.waiting[gtrid]
        if not answers:
            return
        last = _last_answers(answers)
        answers.clear()
        if not last:
            return
        branches = self._branches(gtrid, snap)
        for bqual, r in last.items():
            branch = branches.get(bqual)
            if branch is not None:
                _answer_into(branch, r)

    def _apply(
        self, gtrid: str, snap: wal_pb2.TransactionSnapshot, rec: wal_pb2.WalRecord, kind: str
    ) -> None:
        # The record kinds ``replay`` folds into objects, folded into the snapshot: keep in step.
        if kind == "branch_result":
            r = rec.branch_result
            branch = self._branches(gtrid, snap).get(r.bqual)
            if branch is not None and r.status:
                _answer_into(branch, r)
        elif kind == "enlist":
            e = rec.enlist
            enlisted = self._branches(gtrid, snap).get(e.bqual)
            if enlisted is None:
                enlisted = snap.branches.add()
                self._index.pop(gtrid, None)
            else:
                enlisted.Clear()
            enlisted.bqual, enlisted.rm_id, enlisted.endpoint = e.bqual, e.rm_id, e.endpoint
            enlisted.status = xa_pb2.BRANCH_STATUS_ENLISTED
        elif kind == "endpoint":
            moved = self._branches(gtrid, snap).get(rec.endpoint.bqual)
            if moved is not None:
                moved.endpoint = rec.endpoint.endpoint
        elif kind == "status":
            _status_into(snap, rec.status)
        elif kind == "decision":
            snap.status, snap.decision = xa_pb2.TRANSACTION_STATUS_COMMITTING, xa_pb2.DECISION_COMMIT
        elif kind == "end":
            snap.status = rec.end.status
            snap.completed_at.CopyFrom(rec.time)

    def _branches(self, gtrid: str, snap: wal_pb2.TransactionSnapshot) -> dict[str, wal_pb2.BranchSnapshot]:
        """The branches of ``snap`` (the live or kept transaction ``gtrid``) by bqual, the last
        of each name as a dict by bqual keeps; kept for a transaction with many branches."""
        index = self._index.get(gtrid)
        if index is None:
            index = {branch.bqual: branch for branch in snap.branches}
            if len(index) > _MANY_BRANCHES:
                self._index[gtrid] = index
        return index


#: Branches beyond which a transaction's branches by bqual are kept rather than built anew.
_MANY_BRANCHES = 8


def _last_answers(answers: list[wal_pb2.WalRecord]) -> dict[str, wal_pb2.BranchResultRecord]:
    """The last answer of each branch (bqual -> result) among the branch-result records
    ``answers``: each overwrites all of its branch's fields, so only the last one counts."""
    last: dict[str, wal_pb2.BranchResultRecord] = {}
    for rec in answers:
        r = rec.branch_result
        if r.status:  # no status: a late answer that changed nothing
            last[r.bqual] = r
    return last


def _answer_into(branch: wal_pb2.BranchSnapshot, r: wal_pb2.BranchResultRecord) -> None:
    """Fold a branch's answer (one with a status) into its snapshot."""
    branch.last_phase, branch.last_code, branch.last_reason = r.phase, r.code, r.reason
    branch.has_last_code, branch.status = True, r.status


def _leaving(
    snap: wal_pb2.TransactionSnapshot,
    endpoints: dict[str, str],
    answers: dict[str, wal_pb2.BranchResultRecord],
) -> None:
    """A completed transaction leaves for the history: fold in ``answers`` (each branch's last
    answer not yet folded in, by bqual), raise ``ValueError`` where ``_from_snapshot`` would (an
    enum value with no member), and note in ``endpoints`` where its branches were served
    (rm_id -> endpoint)."""
    # Only Committed and Rolledback leave: its status needs no check.
    if snap.rollback_code:
        _CODES[snap.rollback_code]
    if snap.decision:
        _DECISIONS[snap.decision]
    status: int
    code: int | None
    phase: int
    for b in snap.branches:
        endpoints[b.rm_id] = b.endpoint
        # A bqual named twice (never written so) gets the answer in both; reading the snapshot
        # back keeps the last of them, as a dict by bqual does.
        r = answers.get(b.bqual) if answers else None
        if r is not None:  # folded in here, and checked as read from the answer
            status, code, phase = r.status, r.code, r.phase
            b.last_phase, b.last_code, b.last_reason = phase, code, r.reason
            b.has_last_code, b.status = True, status
        elif b.has_last_code:
            status, code, phase = b.status, b.last_code, b.last_phase
        else:
            status, code, phase = b.status, None, 0
        _BRANCH_STATUSES[status]
        if code is not None:
            _CODES[code]
            if phase:
                _PHASES[phase]


def _status_into(snap: wal_pb2.TransactionSnapshot, status: wal_pb2.StatusRecord) -> None:
    """``_apply_status`` on a snapshot message."""
    now = _TX_STATUSES[status.status]
    snap.status = status.status
    if status.rollback_code or status.reason:
        _CODES[status.rollback_code]
        snap.rollback_code, snap.rollback_reason = status.rollback_code, status.reason
    if now == TxStatus.COMMITTING and not snap.decision:
        snap.decision, snap.one_phase = xa_pb2.DECISION_COMMIT, True
    elif now == TxStatus.ROLLINGBACK:
        snap.decision = xa_pb2.DECISION_ROLLBACK


_E = TypeVar("_E", bound=IntEnum)


class _Members(dict[int, _E]):
    """An IntEnum's members by value: a dict lookup where calling the enum costs about a
    microsecond per record; an unknown value raises ValueError, as calling the enum does."""

    def __init__(self, kind: type[_E]) -> None:
        super().__init__((member.value, member) for member in kind)
        self.kind = kind

    def __missing__(self, value: int) -> _E:
        return self.kind(value)


_PHASES = _Members(Phase)
_CODES = _Members(XaCode)
_BRANCH_STATUSES = _Members(BranchStatus)
_TX_STATUSES = _Members(TxStatus)
_DECISIONS = _Members(Decision)

#: Completed without a heuristic: history, which retention drops.
_CLOSED = (TxStatus.COMMITTED, TxStatus.ROLLEDBACK)


def _close(txs: dict[str, Transaction], closed: dict[str, None], gtrid: str, keep: int) -> None:
    closed[gtrid] = None
    if len(closed) > keep:
        oldest = next(iter(closed))
        del closed[oldest]
        del txs[oldest]


def _apply_status(tx: Transaction, status: wal_pb2.StatusRecord) -> None:
    tx.status = _TX_STATUSES[status.status]
    if status.rollback_code or status.reason:
        tx.rollback_code, tx.rollback_reason = _CODES[status.rollback_code], status.reason
    if tx.status == TxStatus.COMMITTING and tx.decision is None:
        tx.decision, tx.one_phase = Decision.COMMIT, True
    elif tx.status == TxStatus.ROLLINGBACK:
        tx.decision = Decision.ROLLBACK
