"""JSON shapes (stable field names) and parameter formats shared by the REST admin API and
``xactl --output json``: a script gets the same fields from either.

The shapes are pydantic models, from which the REST API's OpenAPI document is generated; the
``*_view`` functions fill them from the protobuf answers and return them as plain dicts.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, Field

from xatm.participant.api.v1 import admin_pb2, coordinator_pb2, xa_pb2
from xatm.participant.errors import InvalidArgumentError
from xatm.participant.xa import BranchStatus, Decision, Phase, TxOutcome, TxStatus, XaCode

__all__ = [
    "BranchView",
    "CompletionView",
    "ForgetResultView",
    "ForgetView",
    "TransactionListView",
    "TransactionView",
    "audit_view",
    "branch_view",
    "checked_reason",
    "completion_view",
    "forget_view",
    "list_view",
    "parse_since",
    "replicas_view",
    "transaction_view",
]

if TYPE_CHECKING:  # names, to the checker; the enums of the OpenAPI document at run time
    _TX_STATUS: TypeAlias = str
    _BRANCH_STATUS: TypeAlias = str
    _XA_CODE: TypeAlias = str
    _TX_OUTCOME: TypeAlias = str
else:
    _TX_STATUS = Literal[tuple(s.label for s in TxStatus)]
    _BRANCH_STATUS = Literal[tuple(s.label for s in BranchStatus)]
    _XA_CODE = Literal[tuple(c.name for c in XaCode)]
    _TX_OUTCOME = Literal[tuple(o.name for o in TxOutcome)]

_DECISION: dict[Decision, Literal["commit", "rollback"]] = {
    Decision.COMMIT: "commit",
    Decision.ROLLBACK: "rollback",
}


class BranchView(BaseModel):
    """One branch of a transaction."""

    branchId: str = Field(description="The branch qualifier (bqual).")
    rmId: str
    url: str = Field(description="The participant's gRPC endpoint.")
    status: _BRANCH_STATUS | None
    returnCode: _XA_CODE | None = Field(description="Last XA return code.")
    phase: str | None = Field(description="Phase of the last return code.")
    reason: str | None
    attempts: int = Field(description="Calls in the current phase, retries included.")
    nextRetry: str | None = Field(description="When the backoff calls again (RFC 3339).")
    unreachableSince: str | None = Field(
        description="While the branch waits for a participant that does not answer: since when its "
        "endpoint has been failing (RFC 3339)."
    )
    endpointFailures: int = Field(
        description="Calls to that endpoint that failed in a row, this branch's and others' (0 when "
        "it answers)."
    )


class TransactionView(BaseModel):
    """A transaction and its branches."""

    txid: str = Field(description="The gtrid.")
    status: _TX_STATUS
    decision: Literal["commit", "rollback"] | None
    begunAt: str | None = Field(description="RFC 3339.")
    ageSeconds: float
    deadline: str | None = Field(description="RFC 3339.")
    timeoutMs: int
    completedAt: str | None = Field(description="RFC 3339.")
    onePhase: bool
    recovered: bool = Field(description="Rebuilt from the log after a restart.")
    rollbackCode: _XA_CODE | None
    rollbackReason: str | None
    owner: str | None = Field(default=None, description="Node id of the coordinator replica that owns it.")
    branches: list[BranchView]


class CompletionView(BaseModel):
    """The answer to a forced commit or rollback or a resolved branch."""

    txid: str
    status: _TX_OUTCOME = Field(description="tx.h outcome of the request.")
    transactionStatus: _TX_STATUS
    branches: list[BranchView]


class TransactionListView(BaseModel):
    """One page of transactions, oldest first."""

    transactions: list[TransactionView]
    nextPageToken: str | None = Field(description="Pass as pageToken for the next page.")


class ForgetResultView(BaseModel):
    """What became of one id of a forget request."""

    txid: str
    forgotten: bool
    error: str | None = Field(description="Why it was not forgotten.")
    code: str | None = Field(description="gRPC status of the refusal, e.g. NOT_FOUND.")


class ForgetView(BaseModel):
    """One result per id of a forget request."""

    results: list[ForgetResultView]


def _time(stamp: Timestamp, present: bool = True) -> str | None:
    if not present or (stamp.seconds == 0 and stamp.nanos == 0):
        return None
    return stamp.ToJsonString()


def _branch(b: xa_pb2.BranchInfo) -> BranchView:
    return BranchView(
        branchId=b.bqual,
        rmId=b.rm_id,
        url=b.endpoint,
        status=BranchStatus(b.status).label if b.status else None,
        returnCode=XaCode(b.last_code).name if b.has_last_code else None,
        phase=str(Phase(b.last_phase)) if b.has_last_code and b.last_phase else None,
        reason=b.last_reason or None,
        attempts=b.attempts,
        nextRetry=_time(b.next_retry, b.HasField("next_retry")),
        unreachableSince=_time(b.unreachable_since, b.HasField("unreachable_since")),
        endpointFailures=b.endpoint_failures,
    )


def _transaction(info: xa_pb2.TransactionInfo) -> TransactionView:
    return TransactionView(
        txid=info.gtrid,
        status=TxStatus(info.status).label,
        decision=_DECISION.get(Decision(info.decision)) if info.decision else None,
        begunAt=_time(info.begun_at),
        ageSeconds=round(max(0.0, time.time() - info.begun_at.ToNanoseconds() / 1e9), 3),
        deadline=_time(info.deadline),
        timeoutMs=info.timeout_ms,
        completedAt=_time(info.completed_at, info.HasField("completed_at")),
        onePhase=info.one_phase,
        recovered=info.recovered,
        rollbackCode=XaCode(info.rollback_code).name if info.rollback_code or info.rollback_reason else None,
        rollbackReason=info.rollback_reason or None,
        owner=info.owner or None,
        branches=[_branch(b) for b in info.branches],
    )


def branch_view(b: xa_pb2.BranchInfo) -> dict[str, Any]:
    return _branch(b).model_dump()


def transaction_view(info: xa_pb2.TransactionInfo) -> dict[str, Any]:
    return _transaction(info).model_dump()


def completion_view(resp: coordinator_pb2.CompletionResponse) -> dict[str, Any]:
    return CompletionView(
        txid=resp.gtrid,
        status=TxOutcome(resp.outcome).name,
        transactionStatus=TxStatus(resp.status).label,
        branches=[_branch(b) for b in resp.branches],
    ).model_dump()


def list_view(resp: admin_pb2.ListTransactionsResponse) -> dict[str, Any]:
    return TransactionListView(
        transactions=[_transaction(t) for t in resp.transactions],
        nextPageToken=resp.next_page_token or None,
    ).model_dump()


def forget_view(resp: admin_pb2.ForgetResponse) -> dict[str, Any]:
    return ForgetView(
        results=[
            ForgetResultView(txid=r.gtrid, forgotten=r.forgotten, error=r.error or None, code=r.code or None)
            for r in resp.results
        ]
    ).model_dump()


def replicas_view(resp: admin_pb2.ListReplicasResponse) -> dict[str, Any]:
    """The coordinator replicas: name, lease held, where each serves, transactions it owns."""
    return {
        "replicas": [
            {
                "name": r.name,
                "live": r.live,
                "grpc": r.grpc_address or None,
                "http": r.http_address or None,
                "answering": r.answering,
                "transactions": r.transactions,
            }
            for r in resp.replicas
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


#: Operator reasons are kept short: they go into the log and every audit listing.
REASON_MAX = 200


def checked_reason(reason: str) -> str:
    """An operator's reason, stripped; INVALID_ARGUMENT past ``REASON_MAX`` characters rather than
    an audit record that silently lost the end of the justification."""
    reason = reason.strip()
    if len(reason) > REASON_MAX:
        raise InvalidArgumentError(
            f"the reason has {len(reason)} characters; at most {REASON_MAX} are taken, so that the audit"
            " log keeps the whole justification: shorten it",
        )
    return reason


def parse_since(text: str) -> float:
    """A ``begin`` filter: an RFC 3339 time (UTC when it has no offset) or Unix seconds."""
    try:
        if text.replace(".", "", 1).isdigit():
            return float(text)
        stamp = datetime.fromisoformat(text)
        return (stamp if stamp.tzinfo else stamp.replace(tzinfo=UTC)).timestamp()
    except (ValueError, OverflowError):
        raise InvalidArgumentError(
            f"malformed time {text[:40]!r}: use RFC 3339 (2024-05-01T12:00:00Z) or Unix seconds",
        ) from None
