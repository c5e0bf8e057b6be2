"""The coordinator's services as a replica: every call about a transaction goes where the
transaction is (see ``forwarding``); listings span every replica.

``RoutedCoordinatorServicer`` is the Coordinator service for initiators and participants;
``ReplicaAdminOps`` the operator operations shared by the Admin service and the REST API.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from xatm.coordinator.cluster.directory import Replica
from xatm.coordinator.cluster.forwarding import Forwarder, forwarded
from xatm.coordinator.engine.core import Engine
from xatm.coordinator.journal import set_time
from xatm.coordinator.protocol import Transaction
from xatm.coordinator.server.admin import MAX_FORGET, MAX_PAGE, RESOLVED_OUTCOMES, AdminOps, Listed
from xatm.coordinator.server.approvals import Approvals
from xatm.coordinator.server.auth import Caller, Permission
from xatm.coordinator.server.carried import roll_back_carried
from xatm.coordinator.server.endpoints import EndpointPolicy
from xatm.coordinator.server.services import CoordinatorServicer, rpc
from xatm.coordinator.txlog.etcd.client import is_outage
from xatm.participant.api.v1 import admin_pb2, coordinator_pb2, xa_pb2
from xatm.participant.errors import InvalidArgumentError, UnavailableError, XatmError
from xatm.participant.runtime.proto_enum import proto_enum
from xatm.participant.xa import TxStatus, node_of, validate_gtrid

__all__ = ["ReplicaAdminOps", "RoutedCoordinatorServicer"]

#: Statuses of transactions the other replicas may hold without a record in etcd yet: presumed
#: abort logs nothing until a transaction prepares or rolls back, so a listing asks their owners.
UNLOGGED = (TxStatus.CREATED, TxStatus.MARKED_ROLLBACK)

#: Seconds a listing waits for another replica's undecided transactions: an operator's listing
#: must not hang on a paused replica (etcd still gives what that replica logged).
LISTING_TIMEOUT = 5.0

log = logging.getLogger(__name__)

Method = Callable[[Any, Any, Any], Awaitable[Any]]


def _routed(name: str, gtrid_of: Callable[[Any], str], *, completing: bool = False) -> Method:
    """Coordinator method ``name``, served here or by the replica owning the request's gtrid.

    ``completing`` (Commit, Rollback): a gtrid that no replica holds or can ever decide (its
    replica died before logging anything of it) is rolled back here, carried branches included.
    """
    served_here = getattr(CoordinatorServicer, name).__wrapped__  # the method under its ``rpc``

    async def method(self: RoutedCoordinatorServicer, request: Any, context: Any) -> Any:
        owner = await self.forwarder.route(gtrid_of(request))
        if owner is not None:
            return await self.forwarder.call(owner, "Coordinator", name, request)
        if completing and await self._orphaned(request.gtrid):
            return await self._roll_back_orphan(request, name)
        reply = await served_here(self, request, context)
        if isinstance(reply, xa_pb2.TransactionInfo):
            reply.owner = self.engine.node_id
        return reply

    method.__name__ = method.__qualname__ = name
    return rpc(method)


def _gtrid(request: Any) -> str:
    return str(request.gtrid)


def _xid_gtrid(request: Any) -> str:
    return str(request.xid.gtrid)


class RoutedCoordinatorServicer(CoordinatorServicer):
    """The Coordinator service of a replica: calls naming a transaction another replica owns
    are forwarded to it (or it is taken over here when that one died). Begin is always served
    here: the replica that begins a transaction owns it."""

    def __init__(self, engine: Engine, forwarder: Forwarder, endpoints: EndpointPolicy | None = None):
        super().__init__(engine, endpoints)
        self.forwarder = forwarder

    Enlist = _routed("Enlist", _gtrid)
    Commit = _routed("Commit", _gtrid, completing=True)
    Rollback = _routed("Rollback", _gtrid, completing=True)
    MarkRollbackOnly = _routed("MarkRollbackOnly", _gtrid)

    async def _orphaned(self, gtrid: str) -> bool:
        """Whether ``gtrid`` was begun by another replica that is dead and left no record of it in
        etcd: presumed abort, nothing was decided, and nobody can decide it any more (that replica's
        writes are fenced by its lost lease; restarted, it refuses gtrids of its earlier start)."""
        try:
            validate_gtrid(gtrid)
        except XatmError:
            return False  # refused as malformed where it is served
        if node_of(gtrid) == self.engine.node_id or self.engine.known(gtrid) is not None:
            return False
        try:
            return await self.forwarder.directory.owner(gtrid) is None
        except Exception as err:
            if not is_outage(err):
                raise
            raise UnavailableError(
                f"etcd cannot answer, so who holds {gtrid} is not known: retry later"
            ) from None

    async def _roll_back_orphan(
        self, request: coordinator_pb2.CompletionRequest, verb: str
    ) -> coordinator_pb2.CompletionResponse:
        """Roll back the branches a Commit or Rollback of an orphaned gtrid carries and answer it
        rolled back (see ``roll_back_carried``): nobody can decide it any more, so rolled back is
        its outcome even when a branch cannot be reached now."""
        gtrid = request.gtrid
        reason = (
            f"replica {node_of(gtrid)}, which began the transaction, is not alive and no replica"
            " logged anything of it: nothing was decided (presumed abort)"
        )
        log.warning("%s rolled back here: %s", gtrid, reason)
        branches = self._branches(request.branches)
        return await roll_back_carried(self.engine, gtrid, branches, verb, reason, inherited=True)

    GetStatus = _routed("GetStatus", _gtrid)
    QueryOutcome = _routed("QueryOutcome", _xid_gtrid)
    ReportOutcome = _routed("ReportOutcome", _xid_gtrid)
    CreateSavepoint = _routed("CreateSavepoint", _gtrid)
    RollbackToSavepoint = _routed("RollbackToSavepoint", _gtrid)


class ReplicaAdminOps(AdminOps):
    """Operator operations on any replica: reads span every replica (other replicas'
    transactions and audit records are read from etcd); verbs on another replica's transaction
    are forwarded to it, which authorizes and audits them as if asked directly."""

    def __init__(self, engine: Engine, forwarder: Forwarder, approvals: Approvals | None = None):
        super().__init__(engine, approvals)
        self.forwarder = forwarder
        #: Owner of each transaction of another replica the last listing showed.
        self._owners: dict[str, str] = {}

    # ----------------------------------------------------------------- reads

    async def candidates(self, statuses: Sequence[TxStatus], begun_after: float | None) -> Sequence[Listed]:
        here = await super().candidates(statuses, begun_after)
        if forwarded():
            return here  # another replica's listing asks for this replica's own transactions
        others = await self._from_etcd(self.forwarder.directory.others, "list the transactions of")
        undecided = await self._undecided_elsewhere(statuses, begun_after)
        held = self.engine.registry
        wanted = set(statuses)
        elsewhere = [
            tx
            for gtrid, (_, tx) in others.items()
            if gtrid not in held
            and gtrid not in undecided
            and (not wanted or tx.status in wanted)
            and (begun_after is None or tx.begun_at >= begun_after)
        ]
        self._owners = {gtrid: owner for gtrid, (owner, _) in others.items()}
        return [*here, *elsewhere, *undecided.values()]

    async def _undecided_elsewhere(
        self, statuses: Sequence[TxStatus], begun_after: float | None
    ) -> dict[str, xa_pb2.TransactionInfo]:
        """The transactions the other live replicas hold that etcd may not have yet (presumed
        abort logs nothing of an undecided transaction), as their owners describe them:
        {gtrid: info}. A replica that does not answer is left out of the listing (its logged
        transactions still come from etcd), with a warning."""
        wanted = [s for s in (statuses or UNLOGGED) if s in UNLOGGED]
        if not wanted:
            return {}
        replicas = await self._from_etcd(self.forwarder.directory.replicas, "list")
        request = admin_pb2.ListTransactionsRequest(
            statuses=[proto_enum(s, xa_pb2.TransactionStatus) for s in wanted], page_size=MAX_PAGE
        )
        if begun_after is not None:
            set_time(request.begun_after, begun_after)
        asked = [r for r in replicas if r.live and r.grpc and r.name != self.forwarder.directory.me]
        answers = await asyncio.gather(*(self._listed_by(r, request) for r in asked))
        return {info.gtrid: info for answer in answers for info in answer}

    async def _listed_by(
        self, replica: Replica, request: admin_pb2.ListTransactionsRequest
    ) -> list[xa_pb2.TransactionInfo]:
        """Every page of ``replica``'s own listing for ``request``, owner filled in, within
        ``LISTING_TIMEOUT`` seconds for all pages; [] when it does not answer in time."""
        listed: list[xa_pb2.TransactionInfo] = []
        page = admin_pb2.ListTransactionsRequest()
        page.CopyFrom(request)
        until = time.monotonic() + LISTING_TIMEOUT
        while True:
            left = until - time.monotonic()
            try:
                if left <= 0:
                    raise UnavailableError(f"no answer within {LISTING_TIMEOUT:g} s")
                reply = await self.forwarder.call(replica, "Admin", "ListTransactions", page, timeout=left)
            except UnavailableError as err:
                log.warning("listing without replica %s's undecided transactions: %s", replica.name, err)
                return []
            for info in reply.transactions:
                info.owner = info.owner or replica.name
            listed.extend(reply.transactions)
            if not reply.next_page_token:
                return listed
            page.page_token = reply.next_page_token

    def info(self, tx: Transaction) -> xa_pb2.TransactionInfo:
        info = super().info(tx)
        if tx.gtrid not in self.engine.registry:  # another replica's
            info.owner = self._owners.get(tx.gtrid, "")
        return info

    async def get(self, caller: Caller, gtrid: str) -> xa_pb2.TransactionInfo:
        caller.principal.require(Permission.READ)
        owner = await self.forwarder.route(gtrid)
        if owner is not None:
            request = admin_pb2.GetTransactionRequest(gtrid=gtrid)
            reply: xa_pb2.TransactionInfo = await self.forwarder.call(
                owner, "Admin", "GetTransaction", request
            )
            return reply
        return await super().get(caller, gtrid)

    async def audit_records(self) -> list[admin_pb2.AuditRecord]:
        others = await self._from_etcd(
            self.forwarder.directory.txlog.other_audits, "list the audit records of"
        )
        merged = [*await super().audit_records(), *(r.audit for r in others)]
        return sorted(merged, key=lambda record: record.time.ToNanoseconds())

    async def replicas(self, caller: Caller) -> admin_pb2.ListReplicasResponse:
        caller.principal.require(Permission.READ)
        directory = self.forwarder.directory
        found = await self._from_etcd(functools.partial(directory.replicas, count=True), "list")
        return admin_pb2.ListReplicasResponse(
            replicas=[
                admin_pb2.ReplicaInfo(
                    name=r.name,
                    live=r.live,
                    grpc_address=r.grpc,
                    http_address=r.http,
                    answering=r.name == directory.me,
                    transactions=r.owned,
                )
                for r in found
            ]
        )

    # ----------------------------------------------------------------- verbs

    async def force_rollback(
        self, caller: Caller, gtrid: str, reason: str = ""
    ) -> coordinator_pb2.CompletionResponse:
        return await self._forced("ForceRollback", super().force_rollback, caller, gtrid, reason)

    async def force_commit(
        self, caller: Caller, gtrid: str, reason: str = ""
    ) -> coordinator_pb2.CompletionResponse:
        return await self._forced("ForceCommit", super().force_commit, caller, gtrid, reason)

    async def resolve_branch(
        self, caller: Caller, gtrid: str, bqual: str, outcome: str | None, reason: str
    ) -> coordinator_pb2.CompletionResponse:
        wire = {name: value for value, name in RESOLVED_OUTCOMES.items()}
        forward = admin_pb2.ResolveBranchRequest(
            gtrid=gtrid,
            bqual=bqual,
            outcome=wire.get(outcome or "", admin_pb2.RESOLVED_OUTCOME_UNSPECIFIED),
            reason=reason,
        )
        here = super().resolve_branch
        return await self._verb(
            gtrid, "ResolveBranch", forward, lambda: here(caller, gtrid, bqual, outcome, reason)
        )

    async def forget(self, caller: Caller, gtrids: Sequence[str]) -> admin_pb2.ForgetResponse:
        """Forget each id where its transaction is: those held here at once, the others in one
        forwarded call per owning replica; the results in the order asked."""
        if not 1 <= len(gtrids) <= MAX_FORGET:
            raise InvalidArgumentError(f"forget needs 1-{MAX_FORGET} transaction ids")
        unique = list(dict.fromkeys(gtrids))
        owners = await asyncio.gather(*(self.forwarder.route(gtrid) for gtrid in unique))
        here = [gtrid for gtrid, owner in zip(unique, owners, strict=True) if owner is None]
        away: dict[str, list[str]] = {}
        replicas = {}
        for gtrid, owner in zip(unique, owners, strict=True):
            if owner is not None:
                away.setdefault(owner.name, []).append(gtrid)
                replicas[owner.name] = owner
        if not away:
            return await super().forget(caller, gtrids)
        calls: list[Awaitable[admin_pb2.ForgetResponse]] = [
            self.forwarder.call(replicas[name], "Admin", "Forget", admin_pb2.ForgetRequest(gtrids=ids))
            for name, ids in away.items()
        ]
        if here:
            calls.append(super().forget(caller, here))
        results = {r.gtrid: r for reply in await asyncio.gather(*calls) for r in reply.results}
        return admin_pb2.ForgetResponse(results=[results[gtrid] for gtrid in unique])

    # ----------------------------------------------------------------- helpers

    async def _forced(
        self,
        method: str,
        here: Callable[[Caller, str, str], Awaitable[coordinator_pb2.CompletionResponse]],
        caller: Caller,
        gtrid: str,
        reason: str,
    ) -> coordinator_pb2.CompletionResponse:
        forward = admin_pb2.ForceRequest(gtrid=gtrid, reason=reason)
        return await self._verb(gtrid, method, forward, lambda: here(caller, gtrid, reason))

    async def _verb(
        self,
        gtrid: str,
        method: str,
        forward: Any,
        here: Callable[[], Awaitable[coordinator_pb2.CompletionResponse]],
    ) -> coordinator_pb2.CompletionResponse:
        owner = await self.forwarder.route(gtrid)
        if owner is None:
            return await here()
        reply: coordinator_pb2.CompletionResponse = await self.forwarder.call(owner, "Admin", method, forward)
        return reply

    async def _from_etcd(self, read: Callable[[], Awaitable[Any]], what: str) -> Any:
        """``read()``; UnavailableError naming ``what`` could not be read while etcd cannot answer."""
        try:
            return await read()
        except Exception as err:
            if not is_outage(err):
                raise
            raise UnavailableError(
                f"etcd cannot answer, so this replica cannot {what} the other replicas; retry later"
            ) from None
