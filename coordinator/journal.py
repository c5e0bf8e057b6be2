"""Mapping between transactions and log records, and replay of the log into transactions.

Records say what the state machine decided (including each branch's resulting status), so
replay is bookkeeping with no protocol logic: the log, not the code version, is the truth.
Begin and enlist records are no longer written (presumed abort needs nothing of an undecided
transaction; the commit decision carries it whole) but logs that hold them still replay.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.timestamp_pb2 import Timestamp

from xatm.coordinator.protocol import Branch, Transaction
from xatm.coordinator.txlog._proto import wal_pb2
from xatm.participant.api.v1 import admin_pb2, xa_pb2
from xatm.participant.runtime.proto_enum import proto_enum
from xatm.participant.xa import BranchStatus, Decision, Phase, TxStatus, XaCode

__all__ = ["RecordFactory", "replay", "seconds", "timestamp"]


def timestamp(seconds: float) -> Timestamp:
    """A protobuf Timestamp for ``seconds`` since the epoch."""
    stamp = Timestamp()
    stamp.FromNanoseconds(int(seconds * 1e9))
    return stamp


def seconds(stamp: Timestamp) -> float:
    """Seconds since the epoch of a protobuf Timestamp."""
    return stamp.ToNanoseconds() / 1e9


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
        rec.decision.transaction.CopyFrom(_to_snapshot(tx))
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

    @classmethod
    def snapshot(cls, tx: Transaction, now: float) -> wal_pb2.WalRecord:
        rec = cls._base(tx.gtrid, now)
        rec.snapshot.CopyFrom(_to_snapshot(tx))
        return rec


def _to_snapshot(tx: Transaction) -> wal_pb2.TransactionSnapshot:
    """The checkpoint form of a transaction: everything replay needs to rebuild it."""
    snap = wal_pb2.TransactionSnapshot(
        gtrid=tx.gtrid,
        status=proto_enum(tx.status, xa_pb2.TransactionStatus),
        timeout_ms=tx.timeout_ms,
        begun_at=timestamp(tx.begun_at),
        one_phase=tx.one_phase,
        recovered=tx.recovered,
        savepoints=list(tx.savepoints),
        rollback_reason=tx.rollback_reason,
    )
    if tx.completed_at is not None:
        snap.completed_at.CopyFrom(timestamp(tx.completed_at))
    if tx.rollback_code is not None:
        snap.rollback_code = proto_enum(tx.rollback_code, xa_pb2.XaCode)
    if tx.decision is not None:
        snap.decision = proto_enum(tx.decision, xa_pb2.Decision)
    for b in tx.branches.values():
        branch = snap.branches.add(bqual=b.bqual, rm_id=b.rm_id, endpoint=b.endpoint, status=int(b.status))
        if b.last_code is not None:
            branch.has_last_code = True
            branch.last_code = proto_enum(b.last_code, xa_pb2.XaCode)
            branch.last_phase = proto_enum(b.last_phase or 0, xa_pb2.Phase)
            branch.last_reason = b.last_reason
    return snap


def _from_snapshot(info: wal_pb2.TransactionSnapshot) -> Transaction:
    tx = Transaction(
        gtrid=info.gtrid,
        timeout_ms=info.timeout_ms,
        status=TxStatus(info.status),
        one_phase=info.one_phase,
        recovered=info.recovered,
        begun_at=seconds(info.begun_at),
        completed_at=seconds(info.completed_at) if info.HasField("completed_at") else None,
        rollback_reason=info.rollback_reason,
        # A proto3 enum has no presence (HasField raises); 0 (XA_OK) is never a rollback code.
        rollback_code=XaCode(info.rollback_code) if info.rollback_code else None,
        decision=Decision(info.decision) if info.decision else None,
    )
    for b in info.branches:
        tx.branches[b.bqual] = Branch(
            bqual=b.bqual,
            rm_id=b.rm_id,
            endpoint=b.endpoint,
            status=BranchStatus(b.status),
            last_code=XaCode(b.last_code) if b.has_last_code else None,
            last_phase=Phase(b.last_phase) if b.has_last_code and b.last_phase else None,
            last_reason=b.last_reason,
        )
    return tx


def replay(records: Iterable[wal_pb2.WalRecord]) -> dict[str, Transaction]:
    """Rebuild every transaction the log still knows, in begin order."""
    txs: dict[str, Transaction] = {}
    for rec in records:
        kind = rec.WhichOneof("body")
        now = seconds(rec.time)
        if kind == "snapshot":
            txs[rec.gtrid] = _from_snapshot(rec.snapshot)
            continue
        if kind == "begin":
            txs[rec.gtrid] = Transaction(gtrid=rec.gtrid, timeout_ms=rec.begin.timeout_ms, begun_at=now)
            continue
        if kind == "decision" and rec.decision.HasField("transaction"):
            txs[rec.gtrid] = _from_snapshot(rec.decision.transaction)
            continue
        tx = txs.get(rec.gtrid)
        if tx is None:
            continue  # audit records, or events of a transaction already forgotten
        if kind == "enlist":
            e = rec.enlist
            tx.branches[e.bqual] = Branch(e.bqual, e.rm_id, e.endpoint)
        elif kind == "branch_result":
            r = rec.branch_result
            branch = tx.branches.get(r.bqual)
            if branch is not None and r.status:  # no status: a late answer that changed nothing
                branch.last_phase, branch.last_code, branch.last_reason = (
                    Phase(r.phase),
                    XaCode(r.code),
                    r.reason,
                )
                branch.status = BranchStatus(r.status)
        elif kind == "endpoint":
            moved = tx.branches.get(rec.endpoint.bqual)
            if moved is not None:
                moved.endpoint = rec.endpoint.endpoint
        elif kind == "status":
            tx.status = TxStatus(rec.status.status)
            if rec.status.rollback_code or rec.status.reason:
                tx.rollback_code, tx.rollback_reason = XaCode(rec.status.rollback_code), rec.status.reason
            if tx.status == TxStatus.COMMITTING and tx.decision is None:
                tx.decision, tx.one_phase = Decision.COMMIT, True
            elif tx.status == TxStatus.ROLLINGBACK:
                tx.decision = Decision.ROLLBACK
        elif kind == "decision":
            tx.status, tx.decision = TxStatus.COMMITTING, Decision.COMMIT
        elif kind == "end":
            tx.status, tx.completed_at = TxStatus(rec.end.status), now
        elif kind == "forget":
            del txs[rec.gtrid]
    return txs
