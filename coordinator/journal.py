"""Mapping between transactions and log records, and replay of the log into transactions.

Records say what the state machine decided (including each branch's resulting status), so
replay is bookkeeping with no protocol logic: the log, not the code version, is the truth.
Begin and enlist records are no longer written (presumed abort needs nothing of an undecided
transaction; the commit decision carries it whole) but logs that hold them still replay.

Two replays fold the same records the same way. ``replay`` builds a ``Transaction`` for every
transaction the log knows. ``replay_compact``, which start-up uses, folds each transaction in
flight into its snapshot message instead, and keeps a completed one (Committed, Rolledback:
nothing changes it any more) as the bytes of its own records as they were read (its kept
records), which ``expand`` folds when somebody asks and a checkpoint writes as they are: a long
history then costs a bytes object per transaction, which the garbage collector never scans, is
never folded at start-up, and is the same object the console's branch history keeps.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, MutableSequence
from dataclasses import dataclass
from enum import IntEnum
from itertools import islice, repeat
from operator import attrgetter
from sys import intern
from typing import Protocol, TypeVar, cast

from google.protobuf.message import DecodeError
from google.protobuf.timestamp_pb2 import Timestamp

from xatm.coordinator.protocol import Branch, Transaction
from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.interface import Framed
from xatm.coordinator.txlog.kept import kept_record, kept_records, pack_length
from xatm.participant.api.v1 import admin_pb2, xa_pb2
from xatm.participant.errors import Status, XatmError
from xatm.participant.runtime.proto_enum import proto_enum
from xatm.participant.xa import BranchStatus, Decision, Phase, TxStatus, XaCode

__all__ = [
    "MAX_SHARED_PLACES",
    "AnswerIndex",
    "CorruptHistory",
    "Indexed",
    "Places",
    "RecordFactory",
    "Replayed",
    "Served",
    "expand",
    "replay",
    "replay_compact",
    "seconds",
    "served",
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

    @staticmethod
    def completed(gtrid: str, kept: bytes, status: int, begun_at: float, where: Served, now: float) -> bytes:
        """The checkpoint form of a completed transaction kept as its records (``kept``, as
        ``replay_compact`` keeps them), serialised: they are written as they are, not read."""
        rec = wal_pb2.WalRecord(gtrid=gtrid)
        set_time(rec.time, now)
        done = rec.completed
        done.status = status  # type: ignore[assignment]  # the value as kept, not converted
        done.begun_at, done.records = begun_at, kept
        done.MergeFromString(where)
        return rec.SerializeToString()


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
        if kind == "completed":
            done = txs[gtrid] = expand(gtrid, rec.completed.records)
            if keep is not None and done.status in _CLOSED:
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




def expand(gtrid: str, kept: bytes) -> Transaction:
    """The transaction ``gtrid`` that its kept records (``replay_compact``'s history: the records
    it was rebuilt from, ``kept_record``'s form) describe, folded as ``replay`` folds them.

    Raises ``CorruptHistory`` (a one-line message) for bytes that are not such records, or for a
    value no enum of this version knows (a log written by a later version)."""
    try:
        records = list(kept_records(kept))
        for record in records:
            record.gtrid = gtrid
        tx = replay(records).get(gtrid)
    except (DecodeError, ValueError) as exc:
        raise CorruptHistory(f"transaction {gtrid}: its logged records cannot be read: {exc}") from None
    if tx is None:
        raise CorruptHistory(f"transaction {gtrid}: its logged records do not describe it")
    return tx


class CorruptHistory(XatmError):
    """A completed transaction's kept records cannot be read (written by a later version, or
    damaged in memory): the message names the transaction and says why."""

    status = Status.DATA_LOSS


#: Where a completed transaction's resource managers were served: a ``CompletedRecord`` holding
#: only its ``served`` entries, serialised (bytes: never tracked by the garbage collector, and
#: written into a checkpoint's completed record as they are). Transactions served alike share one.
Served = bytes
#: (rm_id, host:port) of each branch: what a ``Served`` says, and the key it is shared by.
Places = tuple[tuple[str, str], ...]


#: Distinct ``Served`` a table shares at most: past it the table starts afresh (a bound, not a
#: cache that must hold everything: one not shared is as correct, only larger). Endpoints that
#: change with every transaction (ephemeral ports, moving pods) would otherwise grow it for good.
MAX_SHARED_PLACES = 4096


def served(places: Places, shared: dict[Places, Served]) -> Served:
    """The ``Served`` of ``places``, the one ``shared`` holds for them (added when new; ``shared``
    emptied first when it holds ``MAX_SHARED_PLACES``)."""
    found = shared.get(places)
    if found is None:
        if len(shared) >= MAX_SHARED_PLACES:
            shared.clear()
        done = wal_pb2.CompletedRecord()
        for rm_id, endpoint in places:
            done.served.add(rm_id=rm_id, endpoint=endpoint)
        found = shared[places] = done.SerializeToString()
    return found


@dataclass(slots=True)
class Replayed:
    """What ``replay_compact`` rebuilt: ``live``, every transaction not Committed or Rolledback
    (in the order of their first records); ``history``, each completed one as its kept records
    (``expand`` reads them), its status, when it began (wall-clock seconds) and where it was
    served, oldest completion first; ``endpoints``, where each resource manager of the completed
    ones was last served (rm_id -> host:port)."""

    live: dict[str, Transaction]
    history: dict[str, tuple[bytes, int, float, Served]]
    endpoints: dict[str, str]


class AnswerIndex(Protocol):
    """Keeps the branch answers that replayed records carry (the console's history of them), as
    kept records per gtrid, the least recently answered dropped first past a bound.

    ``replay_compact`` tells it, in log order, of every record that carries answers
    (``answered``), and hands it the kept records of each transaction later, one piece at a time,
    in order (``kept``): the bytes of a completed transaction's records are one object for the
    replay's history and the index. Read any other way, each record is told as it is read
    (``indexed``)."""

    def __contains__(self, gtrid: object) -> bool:
        """Whether answers of ``gtrid`` are kept (a snapshot counts only for a gtrid not kept)."""

    def answered(self, gtrid: str) -> str | None:
        """A record carrying answers of ``gtrid`` was read: it is now the most recently answered
        (kept from now on if it was not). Returns the gtrid dropped to make room, if one was: what
        was read of it so far is no longer to be kept."""

    def kept(self, gtrid: str, records: bytes) -> None:
        """The next kept records of ``gtrid`` (ignored when it is not kept): records read since
        ``answered`` last made room for it, those without answers among them."""

    def indexed(self, record: wal_pb2.WalRecord, payload: memoryview | None) -> None:
        """``record`` was read (``payload``, the bytes it was read from when the log gives them,
        good only during the call)."""

    def replayed(self) -> None:
        """Every record has been read."""


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
        indexed = self.index.indexed
        for payload, record in self.frames():
            indexed(record, payload)
            yield record
        self.index.replayed()


def replay_compact(
    records: Iterable[wal_pb2.WalRecord],
    *,
    keep: int | None = None,
    audit: MutableSequence[wal_pb2.WalRecord] | None = None,
) -> Replayed:
    """``replay`` (same arguments, same outcome) without building a ``Transaction`` for a
    completed transaction: a transaction in flight is folded into its snapshot message, and one
    that completes (Committed, Rolledback) is kept as its records' bytes, as read (``expand``
    folds them when asked). What it reads of a record that completes a transaction is its status
    and the time it began; nothing else is parsed again or serialised.

    Raises ``ValueError`` for an enum value no member of this version has, as ``replay`` does, in
    the transactions still in flight at the end; in a completed one it is found by ``expand``
    (a value in a record that a later one replaced whole goes unread).

    The records are the fold's to change (it reads each once): answers are folded into the
    snapshot a record carries.

    ``Indexed`` records have their index told of the answers as they are folded (as reading them
    would, in this same pass).
    """
    index = records.index if isinstance(records, Indexed) else None
    folding = _Folding(keep, index)
    live = folding.live
    pairs = records.frames() if isinstance(records, Indexed) else zip(repeat(None), records)
    for payload, rec in pairs:
        kind = rec.WhichOneof("body")
        if kind == "branch_result":  # most records are: kept aside until their transaction is read
            gtrid = rec.gtrid
            entry = live.get(gtrid)
            if index is not None and gtrid != folding.touched:
                folding.touch(entry.gtrid if entry is not None else gtrid)
            if entry is not None:
                data = rec.SerializeToString() if payload is None else payload
                entry.held.append(pack_length(len(data) - entry.cut) + data)
                entry.waiting.append(rec)
                if len(entry.held) > _MAX_HELD:
                    folding.compact(entry, rec)
            else:
                folding.change(rec, kind, payload)
        elif kind == "end":
            folding.end(rec, payload)
        elif kind == "decision" and rec.decision.HasField("transaction"):
            folding.start(rec, rec.decision.transaction, payload, answers=True)
        elif kind == "snapshot":
            folding.snapshot(rec, payload)
        elif kind == "completed":
            folding.completed(rec)
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
            folding.start(rec, snap, payload, answers=False)
        elif kind == "forget":
            folding.forget(rec.gtrid)
        elif kind is not None:
            folding.change(rec, kind, payload)
    return folding.finish()


#: Records held for a transaction in flight past which what they did is folded into one snapshot
#: record (a branch retried for hours is kept as its last answer, as a checkpoint would keep it).
_MAX_HELD = 64


class _Live:
    """A transaction in flight during ``replay_compact``: its snapshot message (``waiting``, the
    branch results not yet folded into it), and ``held``, its records since the one that made it
    what it is (its first, or one that carries it whole), of which those from ``sync`` on are
    still to be handed to the answer index.

    A record is held as it was read, preceded by its length without its gtrid field (``cut``
    bytes), and its gtrid is cut out of all of them at once when they are needed (``kept``): one
    pass over the bytes in C rather than a slicing per record. The first may still be the record
    itself, when what usually follows replaces it."""

    __slots__ = ("cut", "field", "gtrid", "held", "snap", "sync", "waiting")

    def __init__(
        self,
        gtrid: str,
        snap: wal_pb2.TransactionSnapshot,
        first: wal_pb2.WalRecord,
        sync: int,
        data: memoryview | None = None,
    ) -> None:
        #: The one string for the gtrid that the history and the answer index both keep.
        self.gtrid = gtrid
        name = gtrid.encode()
        #: The gtrid as its records hold it (field 2, its length in one byte), and its size.
        self.field = bytes((0x12, len(name))) + name if len(name) < 0x80 else b""
        self.cut = len(self.field)
        self.snap = snap
        self.held: list[bytes | wal_pb2.WalRecord] = [
            first if data is None else pack_length(len(data) - self.cut) + data
        ]
        self.sync = sync
        self.waiting: list[wal_pb2.WalRecord] = []

    def restart(
        self,
        snap: wal_pb2.TransactionSnapshot,
        first: wal_pb2.WalRecord,
        sync: int,
        data: memoryview | None = None,
    ) -> None:
        """The transaction is now ``snap`` from its record ``first`` on (read from ``data``, when
        given): what it held is replaced."""
        self.snap, self.sync = snap, sync
        self.held = [first if data is None else pack_length(len(data) - self.cut) + data]
        self.waiting.clear()

    def hold(self, data: bytes | memoryview) -> None:
        """Hold the record serialised as ``data``."""
        self.held.append(pack_length(len(data) - self.cut) + data)

    def firm(self) -> None:
        """Hold the first record as its bytes (before its message is changed: the fold changes
        the snapshot it holds)."""
        held = self.held
        first = held[0]
        if not isinstance(first, bytes):
            data = first.SerializeToString()
            held[0] = pack_length(len(data) - self.cut) + data

    def kept(self, start: int = 0) -> bytes:
        """The held records from ``start`` on, as kept records."""
        self.firm()
        held = self.held
        raw = b"".join(held[start:] if start else held)  # type: ignore[arg-type]  # bytes now
        field = self.field
        # Each holds its gtrid field once, where it is cut out: more cut (bytes that happen to
        # read the same inside a record) and they are cut one by one instead.
        if field:
            kept = raw.replace(field, b"")
            if len(kept) == len(raw) - (len(held) - start) * self.cut:
                return kept
        return b"".join(kept_record(record[4:]) for record in cast(list[bytes], held[start:]))


class _Folding:
    """``replay_compact``'s state: the transactions in flight, and the kept records of those
    completed (at most ``keep`` of them), which the answer ``index`` (if any) shares.

    A branch's answers are folded into its transaction's snapshot only when something reads or
    changes the transaction: all but the last answer of each branch are overwritten anyway, and a
    transaction that completes is never folded at all."""

    __slots__ = ("endpoints", "history", "index", "keep", "live", "served", "shapes", "touched")

    def __init__(self, keep: int | None, index: AnswerIndex | None) -> None:
        self.keep = keep
        self.index = index
        self.live: dict[str, _Live] = {}
        self.history: dict[str, tuple[bytes, int, float, Served]] = {}
        self.endpoints: dict[str, str] = {}
        #: Each distinct ``Served`` met, the one the history shares for it.
        self.shapes: dict[Places, Served] = {}
        #: The last of them noted in ``endpoints``.
        self.served: Served | None = None
        #: The gtrid the index was last told of: told again at once, it would change nothing.
        self.touched: str | None = None

    def touch(self, gtrid: str) -> None:
        """Tell the index that a record carrying answers of ``gtrid`` was read."""
        if gtrid == self.touched:
            return
        assert self.index is not None
        self.touched = gtrid
        dropped = self.index.answered(gtrid)
        if dropped is not None:
            # What it was to be handed of that one so far is not kept.
            entry = self.live.get(dropped)
            if entry is not None:
                entry.sync = len(entry.held)

    def start(
        self,
        rec: wal_pb2.WalRecord,
        snap: wal_pb2.TransactionSnapshot,
        payload: memoryview | None,
        *,
        answers: bool,
    ) -> None:
        """``rec`` makes its transaction ``snap`` (its first record, or one that carries it whole);
        ``answers``: the index keeps ``rec`` (it carries answers)."""
        gtrid = rec.gtrid
        entry = self.live.get(gtrid)
        if entry is not None:
            self._hand_over(entry)
            gtrid = entry.gtrid
        if answers and self.index is not None and gtrid != self.touched:
            self.touch(gtrid)
        if entry is not None:  # what it held so far is replaced
            entry.restart(snap, rec, 0 if answers else 1, payload)
            return
        if self.history:
            self.history.pop(gtrid, None)
        self.live[gtrid] = _Live(gtrid, snap, rec, 0 if answers else 1, payload)

    def snapshot(self, rec: wal_pb2.WalRecord, payload: memoryview | None) -> None:
        """A checkpoint's snapshot (or a transaction's first record): the index keeps it only
        for a gtrid it does not know yet, and only if it holds an answer."""
        gtrid = rec.gtrid
        entry = self.live.get(gtrid)
        if entry is not None:
            self._hand_over(entry)
            gtrid = entry.gtrid
        index = self.index
        counts = index is not None and gtrid != self.touched and gtrid not in index
        if counts:
            self.touch(gtrid)
        snap = rec.snapshot
        data = rec.SerializeToString() if payload is None else payload.tobytes()
        answers = counts and data.find(_HAS_CODE_BYTES) >= 0 and any(map(_HAS_CODE, snap.branches))
        if snap.status not in _CLOSED_VALUES:
            self.history.pop(gtrid, None)
            # Kept as the record itself until its bytes are needed: the commit decision that
            # usually follows replaces it.
            self.live[gtrid] = _Live(gtrid, snap, rec, 0 if answers else 1)
            return
        self.live.pop(gtrid, None)
        kept = kept_record(data)
        if answers:
            assert index is not None
            index.kept(gtrid, kept)
        where = self._served(tuple((branch.rm_id, branch.endpoint) for branch in snap.branches))
        self._close(gtrid, kept, snap.status, seconds(snap.begun_at), where)

    def completed(self, rec: wal_pb2.WalRecord) -> None:
        """A checkpoint's completed transaction, kept as the records it holds (not read here)."""
        gtrid = rec.gtrid
        entry = self.live.pop(gtrid, None)
        if entry is not None:
            self._hand_over(entry)
            gtrid = entry.gtrid
        done = rec.completed
        kept = done.records
        index = self.index
        if index is not None and gtrid != self.touched and gtrid not in index:
            self.touch(gtrid)
            index.kept(gtrid, kept)
        where = self._served(tuple((at.rm_id, at.endpoint) for at in done.served))
        self._close(gtrid, kept, done.status, done.begun_at, where)

    def forget(self, gtrid: str) -> None:
        entry = self.live.pop(gtrid, None)
        if entry is not None:
            self._hand_over(entry)
        self.history.pop(gtrid, None)

    def end(self, rec: wal_pb2.WalRecord, payload: memoryview | None) -> None:
        """Fold an end record; a transaction it completes leaves for the history as its kept
        records, the end record last."""
        gtrid = rec.gtrid
        entry = self.live.get(gtrid)
        status = rec.end.status
        if entry is None or status not in _CLOSED_VALUES:
            self.change(rec, "end", payload)
            return
        del self.live[gtrid]
        data = rec.SerializeToString() if payload is None else payload
        held, field = entry.held, entry.field
        held.append(pack_length(len(data) - entry.cut) + data)
        kept = b""
        if field and type(held[0]) is bytes:  # ``kept()``, most often, without its calls
            raw = b"".join(held)  # type: ignore[arg-type]  # bytes, every one
            kept = raw.replace(field, b"")
            if len(kept) != len(raw) - len(held) * entry.cut:
                kept = b""
        if not kept:
            kept = entry.kept()
        gtrid, sync = entry.gtrid, entry.sync
        if self.index is not None and sync < len(held):
            self.index.kept(gtrid, kept if not sync else entry.kept(sync))
        snap = entry.snap
        places = tuple([(branch.rm_id, branch.endpoint) for branch in snap.branches])
        where = self.shapes.get(places)  # most often one met before: no call to make
        if where is None or where is not self.served:
            where = self._served(places)
        begun = snap.begun_at
        history = self.history
        history[gtrid] = (kept, status, (begun.seconds * 1_000_000_000 + begun.nanos) / 1e9, where)
        if self.keep is not None and len(history) > self.keep + max(self.keep // 32, 1):
            self.trim()

    def change(self, rec: wal_pb2.WalRecord, kind: str, payload: memoryview | None) -> None:
        """Fold a record that changes a known transaction (ignored for an unknown one, as events
        of a transaction forgotten or no longer kept, or a foreign result, are; the index keeps
        a foreign result's answer all the same)."""
        gtrid = rec.gtrid
        entry = self.live.get(gtrid)
        if entry is not None:
            self._settle(entry)
            entry.firm()
            self._apply(entry.snap, rec, kind)
            entry.hold(rec.SerializeToString() if payload is None else payload)
            if len(entry.held) > _MAX_HELD:
                self.compact(entry, rec)
            return
        index = self.index
        answer = kind == "branch_result"
        kept = self.history.get(gtrid)
        if kept is None:
            if answer and index is not None:  # told of it by the caller: kept as it comes
                index.kept(gtrid, kept_record(rec.SerializeToString() if payload is None else payload))
            return
        # A record about a completed transaction (a late answer, an end record written again):
        # added to its kept records all the same, which keep their place in the history.
        record = kept_record(rec.SerializeToString() if payload is None else payload)
        if answer and index is not None:
            index.kept(gtrid, record)
        status = kept[1]
        if kind == "end":
            status = rec.end.status
        elif kind == "status":
            status = rec.status.status
        self.history[gtrid] = (kept[0] + record, status, kept[2], kept[3])

    def compact(self, entry: _Live, rec: wal_pb2.WalRecord) -> None:
        """Hold ``entry``'s records as one snapshot record of what they did (its time ``rec``'s),
        after handing them to the index."""
        self._hand_over(entry)
        self._settle(entry)
        folded = wal_pb2.WalRecord(time=rec.time, gtrid=entry.gtrid)
        folded.snapshot.CopyFrom(entry.snap)
        entry.held = [folded]
        entry.sync = 1

    def finish(self) -> Replayed:
        """What was rebuilt, once every record is folded in."""
        for entry in self.live.values():
            self._settle(entry)
            self._hand_over(entry)
        if self.index is not None:
            self.index.replayed()
        self.trim()
        live = {gtrid: _from_snapshot(entry.snap) for gtrid, entry in self.live.items()}
        return Replayed(live, self.history, self.endpoints)

    def _hand_over(self, entry: _Live) -> None:
        """Hand the index what it is still to get of ``entry``'s records."""
        sync, size = entry.sync, len(entry.held)
        if self.index is not None and sync < size:
            self.index.kept(entry.gtrid, entry.kept(sync))
        entry.sync = size

    def _served(self, places: Places) -> Served:
        """Where a completed transaction was served (``places``), noted in ``endpoints``."""
        where = served(places, self.shapes)
        if where is not self.served:
            self.endpoints.update(places)
            self.served = where
        return where

    def _close(self, gtrid: str, kept: bytes, status: int, begun_at: float, where: Served) -> None:
        history = self.history
        fresh = gtrid not in history
        history[gtrid] = (kept, status, begun_at, where)
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

    @staticmethod
    def _settle(entry: _Live) -> None:
        """Fold the answers kept aside for the transaction in flight ``entry`` into its snapshot."""
        answers = entry.waiting
        if not answers:
            return
        entry.firm()
        last = _last_answers(answers)
        answers.clear()
        if not last:
            return
        branches = {branch.bqual: branch for branch in entry.snap.branches}
        for bqual, r in last.items():
            branch = branches.get(bqual)
            if branch is not None:
                _answer_into(branch, r)

    @staticmethod
    def _apply(snap: wal_pb2.TransactionSnapshot, rec: wal_pb2.WalRecord, kind: str) -> None:
        # The record kinds ``replay`` folds into objects, folded into the snapshot: keep in step.
        if kind == "branch_result":
            r = rec.branch_result
            branch = _branches(snap).get(r.bqual)
            if branch is not None and r.status:
                _answer_into(branch, r)
        elif kind == "enlist":
            e = rec.enlist
            enlisted = _branches(snap).get(e.bqual)
            if enlisted is None:
                enlisted = snap.branches.add()
            else:
                enlisted.Clear()
            enlisted.bqual, enlisted.rm_id, enlisted.endpoint = e.bqual, e.rm_id, e.endpoint
            enlisted.status = xa_pb2.BRANCH_STATUS_ENLISTED
        elif kind == "endpoint":
            moved = _branches(snap).get(rec.endpoint.bqual)
            if moved is not None:
                moved.endpoint = rec.endpoint.endpoint
        elif kind == "status":
            _status_into(snap, rec.status)
        elif kind == "decision":
            snap.status, snap.decision = xa_pb2.TRANSACTION_STATUS_COMMITTING, xa_pb2.DECISION_COMMIT
        elif kind == "end":
            snap.status = rec.end.status
            snap.completed_at.CopyFrom(rec.time)


def _branches(snap: wal_pb2.TransactionSnapshot) -> dict[str, wal_pb2.BranchSnapshot]:
    """The branches of ``snap`` by bqual, the last of each name as a dict by bqual keeps."""
    return {branch.bqual: branch for branch in snap.branches}


#: A branch with an answer has ``has_last_code`` (field 10, true) written as these two bytes, so
#: most snapshots without one are told from their bytes alone.
_HAS_CODE_BYTES = b"\x50\x01"
_HAS_CODE = attrgetter("has_last_code")


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
#: The same, as the plain values a record holds (compared with those without an enum's help).
_CLOSED_VALUES = frozenset(int(status) for status in _CLOSED)


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
