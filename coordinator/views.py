"""JSON shapes shared by the REST admin API and ``xactl --output json`` (stable field names)."""

from __future__ import annotations

from typing import Any

from google.protobuf.timestamp_pb2 import Timestamp

from participant._proto import coordinator_pb2, xa_pb2
from participant.xa import BranchStatus, Decision, Phase, TxOutcome, TxStatus, XaCode

__all__ = ["branch_view", "completion_view", "transaction_view"]


def _time(stamp: Timestamp, present: bool = True) -> str | None:
    if not present or (stamp.seconds == 0 and stamp.nanos == 0):
        return None
    return stamp.ToJsonString()


def branch_view(b: xa_pb2.BranchInfo) -> dict[str, Any]:
    return {
        "branchId": b.bqual,
        "rmId": b.rm_id,
        "url": b.endpoint,
        "status": BranchStatus(b.status).label if b.status else None,
        "returnCode": XaCode(b.last_code).name if b.has_last_code else None,
        "phase": str(Phase(b.last_phase)) if b.has_last_code and b.last_phase else None,
        "reason": b.last_reason or None,
        "attempts": b.attempts,
        "nextRetry": _time(b.next_retry, b.HasField("next_retry")),
    }


def transaction_view(info: xa_pb2.TransactionInfo) -> dict[str, Any]:
    return {
        "txid": info.gtrid,
        "status": TxStatus(info.status).label,
        "decision": Decision(info.decision).name.lower() if info.decision else None,
        "begunAt": _time(info.begun_at),
        "deadline": _time(info.deadline),
        "timeoutMs": info.timeout_ms,
        "completedAt": _time(info.completed_at, info.HasField("completed_at")),
        "onePhase": info.one_phase,
        "recovered": info.recovered,
        "rollbackCode": XaCode(info.rollback_code).name
        if info.rollback_code or info.rollback_reason
        else None,
        "rollbackReason": info.rollback_reason or None,
        "branches": [branch_view(b) for b in info.branches],
    }


def completion_view(resp: coordinator_pb2.CompletionResponse) -> dict[str, Any]:
    return {
        "txid": resp.gtrid,
        "status": TxOutcome(resp.outcome).name,
        "transactionStatus": TxStatus(resp.status).label,
        "branches": [branch_view(b) for b in resp.branches],
    }
