"""Rolling back the branches a Commit or Rollback carries, for a transaction this coordinator
will not take on.

A lean initiator reports its branches only in its Commit or Rollback; their participants hold
the branches' locks until a coordinator ends them, or until the transaction's deadline passes
(default 60 s). When the coordinator answers such a call without taking the transaction on (the
transaction log cannot be reached, the coordinator is shutting down or full, the caller's token
is at its quota, or the replica that began it died before logging anything of it), nothing was
decided: presumed abort makes the outcome a rollback, and sending it to the carried branches now
frees their locks at once instead of at the deadline.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from xatm.coordinator.engine.core import Engine
from xatm.coordinator.protocol import NOTA_AFTER_ONE_PHASE
from xatm.participant.api.v1 import coordinator_pb2, xa_pb2
from xatm.participant.errors import ResourceExhaustedError
from xatm.participant.runtime.proto_enum import proto_enum
from xatm.participant.xa import Phase, XaCode, Xid, validate_bqual

__all__ = ["roll_back_carried"]


async def roll_back_carried(
    engine: Engine,
    gtrid: str,
    carried: Sequence[xa_pb2.BranchRef],
    verb: str,
    reason: str,
    *,
    inherited: bool,
) -> coordinator_pb2.CompletionResponse:
    """Send Rollback to each branch in ``carried`` (one attempt each, ``call_timeout`` bound) and
    build the answer to ``verb`` ("Commit" or "Rollback"): outcome TX_ROLLBACK to a commit, TX_OK
    to a rollback, rollback code XA_RBROLLBACK with ``reason``; status Rolledback when every
    branch answered XA_OK, XAER_NOTA or a rollback code, Rollingback otherwise (that branch's
    participant ends it past the transaction's deadline, as any branch no coordinator reached).
    With ``inherited`` (``gtrid`` was made for an earlier start, or for a replica gone), a lone
    branch answering XAER_NOTA leaves the outcome unknown (TX_HAZARD, status
    HeuristicallyCompleted, the branch XA_HEURHAZ): that coordinator, which logged nothing, may
    have committed it in one phase.

    Raises InvalidArgumentError for a malformed bqual and ResourceExhaustedError for more than
    ``max_branches`` distinct branches, before any call is sent.
    """
    branches = list({b.bqual: b for b in carried}.values())
    for branch in branches:
        validate_bqual(branch.bqual)
    limit = engine.settings.max_branches
    if len(branches) > limit:
        raise ResourceExhaustedError(f"{gtrid} carries {len(branches)} branches (max_branches is {limit})")
    timeout = engine.settings.call_timeout
    calls = (
        engine.peers.call(b.endpoint, Phase.ROLLBACK, Xid(gtrid, b.bqual), timeout=timeout) for b in branches
    )
    results = await asyncio.gather(*calls)
    reply = coordinator_pb2.CompletionResponse(
        gtrid=gtrid,
        outcome=xa_pb2.TX_OK if verb == "Rollback" else xa_pb2.TX_ROLLBACK,
        rollback_code=xa_pb2.XA_RBROLLBACK,
        rollback_reason=reason[:500],
        incarnation=engine.incarnation,
    )
    for branch, (code, why) in zip(branches, results, strict=True):
        info = xa_pb2.BranchInfo(
            bqual=branch.bqual,
            rm_id=branch.rm_id,
            endpoint=branch.endpoint,
            status=xa_pb2.BRANCH_STATUS_ENLISTED,
            last_code=proto_enum(code, xa_pb2.XaCode),
            last_phase=xa_pb2.PHASE_ROLLBACK,
            last_reason=why[:500],
            has_last_code=True,
        )
        if code == XaCode.XAER_NOTA and inherited and len(branches) == 1:
            # A lone branch may have been committed in one phase by a coordinator that logged
            # nothing of it: "not known" may mean "committed and forgotten".
            info.status = xa_pb2.BRANCH_STATUS_HEURISTICALLY_COMPLETED
            info.last_code, info.last_reason = xa_pb2.XA_HEURHAZ, NOTA_AFTER_ONE_PHASE
        elif code == XaCode.XA_OK or code == XaCode.XAER_NOTA or code.is_rollback:
            info.status = xa_pb2.BRANCH_STATUS_ROLLEDBACK
        reply.branches.append(info)
    statuses = {b.status for b in reply.branches}
    if xa_pb2.BRANCH_STATUS_HEURISTICALLY_COMPLETED in statuses:
        reply.outcome = xa_pb2.TX_HAZARD
        reply.status = xa_pb2.TRANSACTION_STATUS_HEURISTICALLY_COMPLETED
    elif statuses <= {xa_pb2.BRANCH_STATUS_ROLLEDBACK}:
        reply.status = xa_pb2.TRANSACTION_STATUS_ROLLEDBACK
    else:
        reply.status = xa_pb2.TRANSACTION_STATUS_ROLLINGBACK
    return reply
