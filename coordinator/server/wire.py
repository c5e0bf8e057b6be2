"""The wire view of a transaction: what the services and the admin API answer with."""

from __future__ import annotations

from xatm.coordinator.journal import timestamp
from xatm.coordinator.protocol import Transaction
from xatm.participant.api.v1 import xa_pb2
from xatm.participant.runtime.proto_enum import proto_enum

__all__ = ["to_info"]


def to_info(tx: Transaction) -> xa_pb2.TransactionInfo:
    """The wire description of a transaction (``xatm.v1.TransactionInfo``)."""
    info = xa_pb2.TransactionInfo(
        gtrid=tx.gtrid,
        status=proto_enum(tx.status, xa_pb2.TransactionStatus),
        timeout_ms=tx.timeout_ms,
        begun_at=timestamp(tx.begun_at),
        deadline=timestamp(tx.begun_at + tx.timeout_ms / 1000),
        one_phase=tx.one_phase,
        recovered=tx.recovered,
        savepoints=list(tx.savepoints or ()),
        rollback_reason=tx.rollback_reason,
    )
    if tx.completed_at is not None:
        info.completed_at.CopyFrom(timestamp(tx.completed_at))
    if tx.rollback_code is not None:
        info.rollback_code = proto_enum(tx.rollback_code, xa_pb2.XaCode)
    if tx.decision is not None:
        info.decision = proto_enum(tx.decision, xa_pb2.Decision)
    for b in tx.branches.values():
        binfo = info.branches.add(
            bqual=b.bqual, rm_id=b.rm_id, endpoint=b.endpoint, status=int(b.status), attempts=b.attempts
        )
        if b.last_code is not None:
            binfo.has_last_code = True
            binfo.last_code = proto_enum(b.last_code, xa_pb2.XaCode)
            binfo.last_phase = proto_enum(b.last_phase or 0, xa_pb2.Phase)
            binfo.last_reason = b.last_reason
        if b.next_retry is not None:
            binfo.next_retry.CopyFrom(timestamp(b.next_retry))
    return info
