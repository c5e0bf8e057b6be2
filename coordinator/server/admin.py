"""Operator operations, written once for the Admin gRPC service and the REST admin API.

Both transports authenticate the caller, then call these methods; authorization, the
force-commit and rollback rules (enforced by the state machine), the audit record and the
``xatm_admin_actions_total`` count all happen here, so the two APIs cannot drift apart.
Force operations are audited whether they succeed or are refused; only a malformed id (no
transaction was named) and an unauthenticated call (no one to name) leave no record.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

from google.protobuf.timestamp_pb2 import Timestamp

from xatm.coordinator import metrics
from xatm.coordinator.engine.core import Engine, Result
from xatm.coordinator.engine.registry import Kept
from xatm.coordinator.protocol import Transaction
from xatm.coordinator.server.approvals import Approvals
from xatm.coordinator.server.auth import Caller, Permission
from xatm.coordinator.server.views import checked_reason
from xatm.coordinator.server.wire import to_completion, to_info
from xatm.participant.api.v1 import admin_pb2, coordinator_pb2, xa_pb2
from xatm.participant.errors import InvalidArgumentError, Status, UnavailableError, XatmError
from xatm.participant.runtime import tracing
from xatm.participant.xa import TxOutcome, TxStatus, XaCode, validate_bqual, validate_gtrid

__all__ = ["ACTIONS", "MAX_PAGE", "RESOLVED_OUTCOMES", "AdminOps", "completion"]

#: The audited actions; also the bounded ``action`` label of xatm_admin_actions_total.
ACTIONS = ("force_rollback", "force_commit", "forget", "resolve_branch")
MAX_PAGE = 1000
MAX_FORGET = 1000
#: A row of a listing: a transaction this replica holds (kept compact when completed), or one
#: another replica described.
Listed = Transaction | Kept | xa_pb2.TransactionInfo
#: The outcomes an operator may state when resolving a branch by hand, by wire value and by name.
RESOLVED_OUTCOMES = {
    admin_pb2.RESOLVED_OUTCOME_COMMITTED: "committed",
    admin_pb2.RESOLVED_OUTCOME_ROLLEDBACK: "rolledback",
}
#: Refusals that concern the caller or the coordinator, not one id: they fail a whole bulk request.
_WHOLE_REQUEST = (Status.PERMISSION_DENIED, Status.UNAVAILABLE)
T = TypeVar("T")

for _action in ACTIONS:
    metrics.ADMIN_ACTIONS.labels(action=_action, result="ok")


def completion(result: Result) -> coordinator_pb2.CompletionResponse:
    return to_completion(result.tx, result.outcome)


def _page(total: int, page_size: int, page_token: str) -> tuple[int, int]:
    """Validated (size, offset) of a page request."""
    size = min(page_size or 100, MAX_PAGE)
    if not page_token:
        return size, -1
    if not page_token.isdigit() or len(page_token) > 12:
        raise InvalidArgumentError(f"malformed page token {page_token[:20]!r}")
    return size, min(int(page_token), total)


def _listing_order(tx: Listed) -> tuple[float, str]:
    """Oldest begun first, then by gtrid, whichever form the row has."""
    if isinstance(tx, xa_pb2.TransactionInfo):
        return tx.begun_at.seconds + tx.begun_at.nanos / 1e9, tx.gtrid
    return tx.begun_at, tx.gtrid


class AdminOps:
    def __init__(self, engine: Engine, approvals: Approvals | None = None):
        self.engine = engine
        #: Which forced operations need a second operator (none by default).
        self.approvals = approvals or Approvals()

    # ----------------------------------------------------------------- reads

    async def list_transactions(
        self,
        caller: Caller,
        statuses: Sequence[TxStatus] = (),
        begun_after: float | None = None,
        page_size: int = 0,
        page_token: str = "",
    ) -> admin_pb2.ListTransactionsResponse:
        """Oldest first; the page token is the offset of the next page."""
        caller.principal.require(Permission.READ)
        txs = sorted(await self.candidates(statuses, begun_after), key=_listing_order)
        size, start = _page(len(txs), page_size, page_token)
        start = max(start, 0)
        end = start + size
        return admin_pb2.ListTransactionsResponse(
            transactions=[self._shown(tx) for tx in txs[start:end]],
            next_page_token=str(end) if end < len(txs) else "",
        )

    async def get(self, caller: Caller, gtrid: str) -> xa_pb2.TransactionInfo:
        caller.principal.require(Permission.READ)
        return self.info(self.engine.get(gtrid))

    async def candidates(self, statuses: Sequence[TxStatus], begun_after: float | None) -> Sequence[Listed]:
        """The transactions a listing draws from (replicas add those of the others, some as
        the other replica described them)."""
        return self.engine.listing(statuses, begun_after)

    def _shown(self, row: Listed) -> xa_pb2.TransactionInfo:
        """A listing's row on the wire."""
        if isinstance(row, xa_pb2.TransactionInfo):
            return row
        return self.info(row.shown() if isinstance(row, Kept) else row)

    def info(self, tx: Transaction) -> xa_pb2.TransactionInfo:
        """``tx`` on the wire, owned by this coordinator unless a subclass knows better; each
        branch waiting for a participant that does not answer says since when its endpoint fails
        and how many calls to it failed in a row."""
        info = to_info(tx)
        info.owner = self.engine.node_id
        phase_two = self.engine.phase_two
        for branch in info.branches:
            state = phase_two.reachability.down.get(branch.endpoint)
            if state is not None and (tx.gtrid, branch.bqual) in phase_two.drivers:
                branch.unreachable_since.FromNanoseconds(int(state.since_wall * 1e9))
                branch.endpoint_failures = state.failures
        return info

    async def audit_records(self) -> list[admin_pb2.AuditRecord]:
        """The audit records a listing pages through, oldest first (replicas add the others')."""
        return self.engine.audit_log

    async def replicas(self, caller: Caller) -> admin_pb2.ListReplicasResponse:
        """The coordinators sharing this one's log: on the embedded log, this one alone."""
        caller.principal.require(Permission.READ)
        me = admin_pb2.ReplicaInfo(
            name=self.engine.node_id, live=True, answering=True, transactions=len(self.engine.registry)
        )
        return admin_pb2.ListReplicasResponse(replicas=[me])

    async def audit(
        self, caller: Caller, page_size: int = 0, page_token: str = ""
    ) -> admin_pb2.ListAuditResponse:
        """Newest last. The first page is the most recent records; the token pages back in time."""
        caller.principal.require(Permission.READ)
        records = await self.audit_records()
        size, end = _page(len(records), page_size, page_token)
        end = len(records) if end < 0 else end
        start = max(0, end - size)
        return admin_pb2.ListAuditResponse(
            records=records[start:end], next_page_token=str(start) if start > 0 else ""
        )

    # ----------------------------------------------------------------- forced operations

    async def force_rollback(
        self, caller: Caller, gtrid: str, reason: str = ""
    ) -> coordinator_pb2.CompletionResponse:
        """Allowed only from Created, Preparing, Rollingback (the state machine refuses the rest)."""
        reason = checked_reason(reason)
        await self._gate(caller, "force_rollback", [gtrid], reason)
        why = f"forced by {caller.principal.name}" + (f": {reason}" if reason else "")

        async def run() -> coordinator_pb2.CompletionResponse:
            # The initiator's Rollback may be the coordinator's first word of a transaction; an
            # operator's names one it holds, or nothing to act on (NOT_FOUND, as show says).
            self.engine.get(gtrid)
            return completion(await self.engine.rollback(gtrid, why, code=XaCode.XA_RBROLLBACK))

        return await self._audited(caller, "force_rollback", gtrid, reason, run)

    async def force_commit(
        self, caller: Caller, gtrid: str, reason: str = ""
    ) -> coordinator_pb2.CompletionResponse:
        """Allowed only from Created, Preparing, Committing (the state machine refuses the rest)."""
        reason = checked_reason(reason)
        await self._gate(caller, "force_commit", [gtrid], reason)

        async def run() -> coordinator_pb2.CompletionResponse:
            return completion(await self.engine.force_commit(gtrid))

        return await self._audited(caller, "force_commit", gtrid, reason, run)

    async def resolve_branch(
        self, caller: Caller, gtrid: str, bqual: str, outcome: str | None, reason: str
    ) -> coordinator_pb2.CompletionResponse:
        """Close a branch whose resource manager is gone for good, as a heuristic decision.

        ``outcome`` is "committed" or "rolledback" (what happened to the branch at its RM, as the
        operator knows it); ``reason`` is required. Allowed only for a branch still owed an answer in
        Committing or Rollingback (FAILED_PRECONDITION otherwise); needs the operator role; audited
        with the branch and the stated outcome.
        """
        validate_bqual(bqual)
        if outcome not in RESOLVED_OUTCOMES.values():
            raise InvalidArgumentError("state the outcome: committed or rolledback")
        reason = checked_reason(reason)
        if not reason:
            raise InvalidArgumentError("a reason is required to resolve a branch by hand")
        why = f"resolved by {caller.principal.name} as {outcome}: {reason}"

        async def run() -> coordinator_pb2.CompletionResponse:
            return completion(await self.engine.resolve_branch(gtrid, bqual, outcome == "committed", why))

        return await self._audited(
            caller, "resolve_branch", gtrid, reason, run, what=f"branch {bqual} stated {outcome}"
        )

    async def forget(self, caller: Caller, gtrids: Sequence[str]) -> admin_pb2.ForgetResponse:
        """Forget heuristically completed transactions; one result (and audit record) per id.

        Every id is checked before anything is done; the ids are handled concurrently so their
        audit records share fsyncs. A caller without the operator role is refused as a whole.
        """
        if not 1 <= len(gtrids) <= MAX_FORGET:
            raise InvalidArgumentError(f"forget needs 1-{MAX_FORGET} transaction ids")
        for gtrid in gtrids:
            validate_gtrid(gtrid)
        unique = list(dict.fromkeys(gtrids))
        await self._gate(caller, "forget", unique, "")
        outcomes = await asyncio.gather(
            *(
                self._audited(caller, "forget", g, "", functools.partial(self.engine.forget, g))
                for g in unique
            ),
            return_exceptions=True,
        )
        results = []
        for gtrid, outcome in zip(unique, outcomes, strict=True):
            if isinstance(outcome, XatmError) and outcome.status not in _WHOLE_REQUEST:
                results.append(
                    admin_pb2.ForgetResult(
                        gtrid=gtrid, forgotten=False, error=outcome.message, code=outcome.status.name
                    )
                )
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                results.append(admin_pb2.ForgetResult(gtrid=gtrid, forgotten=True))
        return admin_pb2.ForgetResponse(results=results)

    async def _gate(self, caller: Caller, action: str, gtrids: list[str], reason: str) -> None:
        """Raise ApprovalPending, having filed a request, when ``action`` needs a second operator."""
        if self.approvals.needed(caller, action):
            for gtrid in gtrids:
                validate_gtrid(gtrid)
            raise await self.approvals.file(self, caller, action, gtrids, reason)

    async def _audited(
        self,
        caller: Caller,
        action: str,
        gtrid: str,
        reason: str,
        run: Callable[[], Awaitable[T]],
        *,
        what: str = "",
    ) -> T:
        """Authorize, run, then durably record what happened, refusals included.

        ``what`` says more precisely what was asked (e.g. the branch), at the head of the detail.
        """
        try:
            validate_gtrid(gtrid)
            if self.engine.closing:
                raise UnavailableError("coordinator is shutting down; retry later")
        except XatmError as err:
            metrics.ADMIN_ACTIONS.labels(action=action, result=err.status.name.lower()).inc()
            raise
        try:
            caller.principal.require(Permission.OPERATE)
            with tracing.span(f"xatm.admin.{action}", gtrid=gtrid, operator_trace_id=caller.trace_id):
                value = await run()
        except XatmError as err:
            await self._record(
                caller, action, gtrid, f"refused: {err.status.name}", [what, err.message], reason
            )
            metrics.ADMIN_ACTIONS.labels(action=action, result=err.status.name.lower()).inc()
            raise
        except Exception:
            await self._record(
                caller, action, gtrid, "error: INTERNAL", [what, "see the coordinator log"], reason
            )
            metrics.ADMIN_ACTIONS.labels(action=action, result="internal").inc()
            raise
        outcome = ""
        if isinstance(value, coordinator_pb2.CompletionResponse):
            outcome = f"{TxOutcome(value.outcome).name}, transaction {TxStatus(value.status)}"
        await self._record(caller, action, gtrid, "ok", [what, outcome], reason)
        metrics.ADMIN_ACTIONS.labels(action=action, result="ok").inc()
        return value

    async def _record(
        self, caller: Caller, action: str, gtrid: str, result: str, detail: list[str], reason: str
    ) -> None:
        stamp = Timestamp()
        stamp.FromNanoseconds(time.time_ns())
        text = "; ".join(part for part in (*detail, f"reason: {reason}" if reason else "") if part)
        await self.engine.record_audit(
            admin_pb2.AuditRecord(
                time=stamp,
                actor=caller.principal.name,
                action=action,
                gtrid=gtrid,
                peer=caller.peer[:200],
                trace_id=caller.trace_id,
                result=result,
                detail=text[:500],
            )
        )
