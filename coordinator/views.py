"""JSON shapes (stable field names) and parameter formats shared by the REST admin API and
``xactl --output json``: a script gets the same fields from either."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from participant._proto import admin_pb2, coordinator_pb2, xa_pb2
from participant.xa import BranchStatus, Decision, Phase, TxOutcome, TxStatus, XaCode, XatmError

__all__ = [
    "audit_view",
    "branch_view",
    "completion_view",
    "forget_view",
    "list_view",
    "parse_since",
    "transaction_view",
]


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
        "ageSeconds": round(max(0.0, time.time() - info.begun_at.ToNanoseconds() / 1e9), 3),
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


def list_view(resp: admin_pb2.ListTransactionsResponse) -> dict[str, Any]:
    return {
        "transactions": [transaction_view(t) for t in resp.transactions],
        "nextPageToken": resp.next_page_token or None,
    }


def forget_view(resp: admin_pb2.ForgetResponse) -> dict[str, Any]:
    return {
        "results": [
            {"txid": r.gtrid, "forgotten": r.forgotten, "error": r.error or None, "code": r.code or None}
            for r in resp.results
        ]
    }


def audit_view(resp: admin_pb2.ListAuditResponse) -> dict[str, Any]:
    return {
        "records": [
            {
                "time": r.time.ToJsonString(),
                "actor": r.actor,
                "action": r.action,
                "txid": r.gtrid or None,
                "peer": r.peer,
                "traceId": r.trace_id,
                "result": r.result,
                "detail": r.detail or None,
            }
            for r in resp.records
        ],
        "nextPageToken": resp.next_page_token or None,
    }


def parse_since(text: str) -> float:
    """A ``begin`` filter: an RFC 3339 time (UTC when it has no offset) or Unix seconds."""
    try:
        if text.replace(".", "", 1).isdigit():
            return float(text)
        stamp = datetime.fromisoformat(text)
        return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()
    except (ValueError, OverflowError):
        raise XatmError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"malformed time {text[:40]!r}: use RFC 3339 (2024-05-01T12:00:00Z) or Unix seconds",
        ) from None
