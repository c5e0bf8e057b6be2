"""The wire view of a transaction: what the services and the admin API answer with."""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.internal.containers import RepeatedCompositeFieldContainer

from xatm.coordinator.journal import set_time, timestamp
from xatm.coordinator.protocol import Branch, Transaction
from xatm.participant.api.v1 import coordinator_pb2, xa_pb2
from xatm.participant.runtime.proto_enum import proto_enum
from xatm.participant.xa import TxOutcome

__all__ = ["to_completion", "to_info"]


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
    _add_branches(info.branches, tx.branches.values())
    return info


def to_completion(tx: Transaction, outcome: TxOutcome) -> coordinator_pb2.CompletionResponse:
    """The answer to a commit or rollback (``xatm.v1.CompletionResponse``): ``outcome`` beside
    what ``to_info`` would say of the status, the branches and why it rolled back.

    Built directly (every initiator's commit is answered with one), not from a whole
    ``TransactionInfo`` copied over."""
    reply = coordinator_pb2.CompletionResponse(
        gtrid=tx.gtrid,
        outcome=proto_enum(outcome, xa_pb2.TxOutcome),
        status=proto_enum(tx.status, xa_pb2.TransactionStatus),
        rollback_reason=tx.rollback_reason,
    )
    if tx.rollback_code is not None:
        reply.rollback_code = proto_enum(tx.rollback_code, xa_pb2.XaCode)
    _add_branches(reply.branches, tx.branches.values())
    return reply


def _add_branches(
    target: RepeatedCompositeFieldContainer[xa_pb2.BranchInfo], branches: Iterable[Branch]
) -> None:
    for b in branches:
        binfo = target.add(
            bqual=b.bqual, rm_id=b.rm_id, endpoint=b.endpoint, status=int(b.status), attempts=b.attempts
        )
        if b.last_code is not None:
            binfo.has_last_code = True
            binfo.last_code = proto_enum(b.last_code, xa_pb2.XaCode)
            binfo.last_phase = proto_enum(b.last_phase or 0, xa_pb2.Phase)
            binfo.last_reason = b.last_reason
        if b.next_retry is not None:
            set_time(binfo.next_retry, b.next_retry)
