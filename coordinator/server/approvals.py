"""Two-person approval of forced operations.

Off unless the coordinator names operations with ``--require-approval`` (any of force-rollback,
force-commit, forget). Then such an operation, asked for by an operator, is not carried out: it
becomes a request (who, what, why, the trace id of the asking call) that a *different* operator
approves or rejects before it expires. Approving carries the operation out as the approver, so
the transaction's status rule is checked again at that moment; a status that changed meanwhile
refuses the approval with the rule's own message. Every step (request, approval, rejection,
expiry) is an audit record in the log, carrying the request's trace id; the approval's record
names both operators.

Requests live in memory: a restart drops the pending ones (their audit records stay), and the
operator asks again.
"""

from __future__ import annotations

import copy
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

from xatm.coordinator import protocol as sm
from xatm.coordinator.journal import timestamp
from xatm.coordinator.server.auth import Caller, Permission, Principal
from xatm.coordinator.server.views import checked_reason, completion_view, forget_view
from xatm.participant.api.v1 import admin_pb2
from xatm.participant.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    XatmError,
)

if TYPE_CHECKING:
    from xatm.coordinator.server.admin import AdminOps

__all__ = [
    "DEFAULT_TTL",
    "ApprovalPending",
    "Approvals",
    "ApprovedCaller",
    "refusal",
]

#: Seconds a request waits for its second operator.
DEFAULT_TTL = 900.0
#: Requests kept for listing (pending ones are never dropped for room).
KEPT = 1000
#: Requests pending at once; past this a new one is refused until some are decided or expire.
MAX_PENDING = 1000
_EXPIRY = Principal("coordinator", None)
_RULES = {"force_rollback": sm.request_rollback, "force_commit": sm.force_commit, "forget": sm.forget}


def refusal(tx: sm.Transaction, action: str) -> str | None:
    """The status rule's message if ``action`` (force_rollback, force_commit, forget) is not
    allowed for ``tx`` now, else None. Asks the state machine on a copy: nothing changes."""
    try:
        _RULES[action](copy.deepcopy(tx))
    except sm.Refused as err:
        return err.message
    return None


class ApprovalView(BaseModel):
    """A request for a forced operation, as REST and xactl show it."""

    id: str
    action: str = Field(description="force_rollback, force_commit or forget.")
    txids: list[str]
    reason: str | None
    requestedBy: str
    requestTraceId: str = Field(description="Trace id of the asking call, carried by every audit record.")
    requestedAt: str
    expiresAt: str
    state: str = Field(description="pending, approved, rejected, expired or failed.")
    decidedBy: str | None
    result: str | None


def approval_view(a: admin_pb2.Approval) -> dict[str, Any]:
    """The JSON shape of a request (REST and ``xactl --output json``)."""
    return ApprovalView(
        id=a.id,
        action=a.action,
        txids=list(a.gtrids),
        reason=a.reason or None,
        requestedBy=a.requested_by,
        requestTraceId=a.trace_id,
        requestedAt=a.requested_at.ToJsonString(),
        expiresAt=a.expires_at.ToJsonString(),
        state=a.state,
        decidedBy=a.decided_by or None,
        result=a.result or None,
    ).model_dump()


def decision_view(done: admin_pb2.ApprovalDecision) -> dict[str, Any]:
    """The JSON shape of an approval decision (REST and ``xactl --output json``)."""
    which = done.WhichOneof("done")
    return {
        "approval": approval_view(done.approval),
        "completion": completion_view(done.completion) if which == "completion" else None,
        "forget": forget_view(done.forget) if which == "forget" else None,
    }


class ApprovalPending(FailedPreconditionError):
    """The operation was filed as ``request`` instead of carried out."""

    def __init__(self, request: admin_pb2.Approval):
        verb = "approve" if len(request.gtrids) == 1 else "approve them"
        super().__init__(
            f"{request.action} needs a second operator: filed as request {request.id}; another operator "
            f"can {verb} with `xactl approvals approve {request.id}` before it expires",
        )
        self.request = request


@dataclass(frozen=True)
class ApprovedCaller(Caller):
    """The approver carrying out ``request``; AdminOps lets it past the approval gate."""

    request: admin_pb2.Approval = field(default_factory=admin_pb2.Approval)


@dataclass
class _Entry:
    approval: admin_pb2.Approval
    expires: float  # time.monotonic()


class Approvals:
    """The requests of one coordinator. ``required``: the audited actions that need approval."""

    def __init__(self, required: frozenset[str] = frozenset(), ttl: float = DEFAULT_TTL):
        self.required = required
        self.ttl = ttl
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def needed(self, caller: Caller, action: str) -> bool:
        """Whether ``caller`` asking for ``action`` must go through a request."""
        return action in self.required and not isinstance(caller, ApprovedCaller)

    async def file(
        self, ops: AdminOps, caller: Caller, action: str, gtrids: list[str], reason: str
    ) -> ApprovalPending:
        """Record a request for ``action`` on ``gtrids`` (already validated) and return the
        ApprovalPending to raise. PERMISSION_DENIED for a caller who could not do it directly;
        the status rule's FAILED_PRECONDITION when a single transaction's status forbids it now
        (a request that could never be carried out is not filed)."""
        caller.principal.require(Permission.OPERATE)
        if len(gtrids) == 1:
            found = ops.engine.known(gtrids[0])
            if found is None:
                raise NotFoundError(f"unknown transaction {gtrids[0]}")
            rule = refusal(found, action)
            if rule is not None:
                raise FailedPreconditionError(rule)
        await self._expire(ops, caller)
        pending = sum(1 for e in self._entries.values() if e.approval.state == "pending")
        if pending >= MAX_PENDING:
            raise ResourceExhaustedError(
                f"{pending} approval requests are pending (at most {MAX_PENDING}); decide some first"
            )
        now = time.time()
        approval = admin_pb2.Approval(
            id="ap-" + secrets.token_hex(8),
            action=action,
            gtrids=gtrids,
            reason=reason,
            requested_by=caller.principal.name,
            trace_id=caller.trace_id,
            requested_at=timestamp(now),
            expires_at=timestamp(now + self.ttl),
            state="pending",
        )
        self._entries[approval.id] = _Entry(approval, time.monotonic() + self.ttl)
        self._trim()
        await self._audit(ops, caller, approval, "request_approval", "ok", f"{action} requested")
        return ApprovalPending(approval)

    async def list(self, ops: AdminOps, caller: Caller, everything: bool = False) -> list[admin_pb2.Approval]:
        """Pending requests (``everything``: the kept decided ones too), oldest first."""
        caller.principal.require(Permission.READ)
        await self._expire(ops, caller)
        return [
            copy.deepcopy(e.approval)
            for e in self._entries.values()
            if everything or e.approval.state == "pending"
        ]

    async def reject(
        self, ops: AdminOps, caller: Caller, request_id: str, reason: str
    ) -> admin_pb2.ApprovalDecision:
        """Close a pending request unexecuted. Any operator may reject, the requester included
        (withdrawing it)."""
        reason = checked_reason(reason)
        entry = await self._pending(ops, caller, request_id, "reject", reason)
        approval = entry.approval
        approval.state, approval.decided_by = "rejected", caller.principal.name
        approval.result = f"rejected: {reason}" if reason else "rejected"
        detail = f"requested by {approval.requested_by}, rejected by {caller.principal.name}"
        await self._audit(ops, caller, approval, "reject", "ok", detail, reason)
        return admin_pb2.ApprovalDecision(approval=approval)

    async def approve(
        self, ops: AdminOps, caller: Caller, request_id: str, reason: str
    ) -> admin_pb2.ApprovalDecision:
        """Carry a pending request out as ``caller``, who must not be its requester.

        Raises PERMISSION_DENIED for the requester, NOT_FOUND for an unknown id,
        FAILED_PRECONDITION for a request no longer pending (decided or expired) and whatever the
        operation itself raises (the status rule's FAILED_PRECONDITION first of all); the request
        is then closed as failed.
        """
        reason = checked_reason(reason)
        entry = await self._pending(ops, caller, request_id, "approve", reason)
        approval = entry.approval
        if caller.principal.name == approval.requested_by:
            refused = PermissionDeniedError(
                f"request {approval.id} was filed by {approval.requested_by}; a different operator "
                "must approve it",
            )
            result = "refused: PERMISSION_DENIED"
            await self._audit(ops, caller, approval, "approve", result, refused.message, reason)
            raise refused
        approval.state, approval.decided_by = "approving", caller.principal.name
        names = f"requested by {approval.requested_by}, approved by {caller.principal.name}"
        acting = ApprovedCaller(caller.principal, caller.peer, approval.trace_id, approval)
        decision = admin_pb2.ApprovalDecision()
        try:
            if approval.action == "forget":
                decision.forget.CopyFrom(await ops.forget(acting, list(approval.gtrids)))
            else:
                run = ops.force_rollback if approval.action == "force_rollback" else ops.force_commit
                decision.completion.CopyFrom(await run(acting, approval.gtrids[0], approval.reason))
        except Exception as err:
            approval.state = "failed"
            approval.result = getattr(err, "message", "internal error; see the coordinator log")
            detail = f"{names}; {approval.result}"
            await self._audit(ops, caller, approval, "approve", "failed", detail, reason)
            raise
        approval.state = "approved"
        approval.result = "carried out"
        await self._audit(ops, caller, approval, "approve", "ok", names, reason)
        decision.approval.CopyFrom(approval)
        return decision

    # ----------------------------------------------------------------- internals

    async def _pending(
        self, ops: AdminOps, caller: Caller, request_id: str, action: str, reason: str
    ) -> _Entry:
        """The pending request ``request_id`` that ``caller`` means to ``action``; a refusal of a
        known request is audited (an unknown id names nothing to record it under)."""
        if not request_id or len(request_id) > 64:
            raise InvalidArgumentError("give the request id, as `xactl approvals list` shows it")
        await self._expire(ops, caller)
        entry = self._entries.get(request_id)
        try:
            caller.principal.require(Permission.OPERATE)
            if entry is None:
                raise NotFoundError(f"no approval request {request_id[:64]!r}")
            if entry.approval.state != "pending":
                raise FailedPreconditionError(f"request {request_id} is {entry.approval.state}, not pending")
        except XatmError as err:
            if entry is not None:
                result = f"refused: {err.status.name}"
                await self._audit(ops, caller, entry.approval, action, result, err.message, reason)
            raise
        return entry

    async def _expire(self, ops: AdminOps, caller: Caller) -> None:
        now = time.monotonic()
        for entry in list(self._entries.values()):
            if entry.approval.state == "pending" and entry.expires <= now:
                entry.approval.state, entry.approval.result = "expired", "expired unapproved"
                detail = f"requested by {entry.approval.requested_by}; not decided within {self.ttl:g} s"
                # The coordinator expires it; the call that noticed is only where it happened.
                noticed = Caller(_EXPIRY, caller.peer, "")
                await self._audit(ops, noticed, entry.approval, "expire", "ok", detail)

    def _trim(self) -> None:
        decided = [key for key, e in self._entries.items() if e.approval.state != "pending"]
        for key in decided[: max(0, len(self._entries) - KEPT)]:
            del self._entries[key]

    @staticmethod
    async def _audit(
        ops: AdminOps,
        caller: Caller,
        approval: admin_pb2.Approval,
        action: str,
        result: str,
        detail: str,
        reason: str = "",
    ) -> None:
        """One audit record of the request, under its trace id, whoever's call it happens in."""
        what = f"request {approval.id}: {approval.action} {' '.join(approval.gtrids)}"
        step = Caller(caller.principal, caller.peer, approval.trace_id)
        await ops._record(step, action, approval.gtrids[0], result, [what, detail], reason)
