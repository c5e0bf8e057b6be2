"""REST resources the console needs beyond the transaction API: the audit log, a transaction's
per-branch history of XA codes and the forced actions its status allows now, and the approval
requests of forced operations.

They are admin routes like the others (same tokens, roles, errors and trace ids) and appear in
the OpenAPI document; ``add_routes`` adds them to the admin router.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Path, Query
from pydantic import BaseModel, ConfigDict, Field

from xatm.coordinator.server.approvals import ApprovalView, approval_view, decision_view, refusal
from xatm.coordinator.server.auth import Permission
from xatm.coordinator.server.console.history import Answer, BranchHistory
from xatm.coordinator.server.http import (
    _ID,
    _PAGE,
    COLLECTION,
    CallerDep,
    Gtrid,
    OpsDep,
    _errors,
    _Traced,
    _traced,
)
from xatm.coordinator.server.views import CompletionView, ForgetView, audit_view
from xatm.participant.errors import PermissionDeniedError
from xatm.participant.xa import Phase, TxStatus

__all__ = ["APPROVALS", "AUDIT", "add_routes"]

AUDIT = "/admin/v1/audit"
APPROVALS = "/admin/v1/approvals"


class AuditRecordView(BaseModel):
    time: str = Field(description="RFC 3339.")
    actor: str = Field(description="The token's name (never the token).")
    action: str
    txid: str | None
    peer: str
    traceId: str = Field(description="The trace id of the audited request.")
    result: str = Field(description="ok, refused: <STATUS>, failed or error: INTERNAL.")
    detail: str | None


class AuditList(_Traced):
    """One page of audit records, newest last."""

    records: list[AuditRecordView]
    nextPageToken: str | None = Field(description="Pass as pageToken for the previous (older) page.")


class AnswerView(BaseModel):
    time: str = Field(description="When the coordinator logged it (RFC 3339).")
    phase: str | None
    code: str = Field(description="XA return code by name.")
    reason: str | None
    branchStatus: str | None = Field(description="Status the answer gave the branch (none: a late answer).")
    fromSnapshot: bool = Field(description="The last code kept by a checkpoint; earlier ones were compacted.")


class ActionView(BaseModel):
    allowed: bool
    reason: str | None = Field(
        description="Why not, when not allowed: the status rule's message, else the caller's role's."
    )
    needsApproval: bool = Field(description="Asking files a request for a second operator.")


class History(_Traced):
    """Every answer of each branch, oldest first, and the forced actions the status and the
    caller's role allow now."""

    txid: str
    status: str
    branches: dict[str, list[AnswerView]] = Field(description="bqual -> answers.")
    actions: dict[Literal["forceRollback", "forceCommit", "forget"], ActionView]


class ApprovalList(_Traced):
    approvals: list[ApprovalView]


class Decision(_Traced):
    """The decided request and, when approved, the operation's answer."""

    approval: ApprovalView
    completion: CompletionView | None = Field(description="A forced commit's or rollback's answer.")
    forget: ForgetView | None = Field(description="A forget's answer.")


class DecideRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: str = Field(default="", max_length=200, description="Recorded in the audit log.")


def _answer(a: Answer) -> dict[str, Any]:
    return AnswerView(
        time=datetime.fromtimestamp(a.time, UTC).isoformat().replace("+00:00", "Z"),
        phase=str(a.phase) if a.phase else None,
        code=a.code.name,
        reason=a.reason or None,
        branchStatus=a.status.label if a.status else None,
        fromSnapshot=a.snapshot,
    ).model_dump()


RequestId = Annotated[str, Path(description="The request id, as listed.", pattern=_ID)]


def add_routes(router: APIRouter) -> None:
    """Add the console's resources to the admin ``router``."""

    @router.get(
        AUDIT,
        operation_id="listAudit",
        summary="List audited operator actions, newest last",
        response_model=AuditList,
        responses=_errors(400, 401, 403, 503),
    )
    async def audit(
        caller: CallerDep,
        ops: OpsDep,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
        page_token: Annotated[
            str, Query(alias="pageToken", description="nextPageToken of the previous page.", pattern=_PAGE)
        ] = "",
    ) -> dict[str, Any]:
        return _traced(audit_view(await ops.audit(caller, limit, page_token)), caller)

    @router.get(
        f"{COLLECTION}/{{gtrid:gtrid}}/history",
        operation_id="getHistory",
        summary="Every XA code each branch answered, and the forced actions status and role allow now",
        response_model=History,
        responses=_errors(400, 401, 403, 404, 503),
    )
    async def history(caller: CallerDep, ops: OpsDep, gtrid: Gtrid) -> dict[str, Any]:
        info = await ops.get(caller, gtrid)  # authorizes, 404s
        tx = ops.engine.get(gtrid)
        log = ops.engine.log
        answers = log.answers(gtrid) if isinstance(log, BranchHistory) else {}
        # Yes votes reach the log with the decision (or the turn to rollback): until then, here.
        for branch, code, reason, read_at in ops.engine.decisions.held(gtrid):
            vote = Answer(read_at, Phase.PREPARE, code, reason, branch.status)
            answers.setdefault(branch.bqual, []).append(vote)
        # A viewer is shown why it may not act before it asks (the action itself still checks).
        try:
            caller.principal.require(Permission.OPERATE)
            denied = None
        except PermissionDeniedError as err:
            denied = err.message
        actions = {}
        for name, action in (
            ("forceRollback", "force_rollback"),
            ("forceCommit", "force_commit"),
            ("forget", "forget"),
        ):
            rule = refusal(tx, action) or denied
            actions[name] = ActionView(
                allowed=rule is None, reason=rule, needsApproval=action in ops.approvals.required
            ).model_dump()
        return _traced(
            {
                "txid": info.gtrid,
                "status": TxStatus(info.status).label,
                "branches": {b.bqual: [_answer(a) for a in answers.get(b.bqual, [])] for b in info.branches},
                "actions": actions,
            },
            caller,
        )

    @router.get(
        APPROVALS,
        operation_id="listApprovals",
        summary="List requests of forced operations awaiting a second operator",
        response_model=ApprovalList,
        responses=_errors(400, 401, 403, 503),
    )
    async def approvals(
        caller: CallerDep,
        ops: OpsDep,
        everything: Annotated[
            bool, Query(alias="all", description="Also the decided and expired requests kept.")
        ] = False,
    ) -> dict[str, Any]:
        found = await ops.approvals.list(ops, caller, everything)
        return _traced({"approvals": [approval_view(a) for a in found]}, caller)

    for verb, summary in (
        ("approve", "Approve a request (not your own) and carry it out; the status rule is checked again"),
        ("reject", "Reject a pending request (the requester may withdraw it)"),
    ):
        router.add_api_route(
            f"{APPROVALS}/{{request_id}}/{verb}",
            _decide(verb),
            methods=["POST"],
            operation_id=verb,
            summary=f"{summary}; audited",
            response_model=Decision,
            responses=_errors(400, 401, 403, 404, 412, 413, 503),
        )


def _decide(verb: str) -> Callable[..., Awaitable[dict[str, Any]]]:
    """The endpoint approving or rejecting a request."""

    async def decide(
        caller: CallerDep, ops: OpsDep, request_id: RequestId, body: DecideRequest
    ) -> dict[str, Any]:
        run = ops.approvals.approve if verb == "approve" else ops.approvals.reject
        return _traced(decision_view(await run(ops, caller, request_id, body.reason)), caller)

    return decide
