"""gRPC side of the coordinator: servicers (wire <-> engine, errors -> status codes) and the
interceptor that authenticates callers."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable, Iterable, Iterator
from contextvars import ContextVar
from typing import Any, TypeVar, cast

import grpc

from xatm.coordinator.cluster.forwarding import PASS_ON, pass_on
from xatm.coordinator.engine.core import Engine, Result
from xatm.coordinator.server.admin import RESOLVED_OUTCOMES, AdminOps
from xatm.coordinator.server.auth import (
    ANONYMOUS,
    Authenticator,
    Caller,
    Permission,
    bearer_token,
    trace_id,
)
from xatm.coordinator.server.carried import roll_back_carried
from xatm.coordinator.server.endpoints import EndpointPolicy
from xatm.coordinator.server.quota import OpenQuota
from xatm.coordinator.server.wire import to_completion, to_info
from xatm.participant.api.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    coordinator_pb2,
    coordinator_pb2_grpc,
    xa_pb2,
)
from xatm.participant.errors import (
    InvalidArgumentError,
    ResourceExhaustedError,
    Status,
    UnavailableError,
    XatmError,
)
from xatm.participant.runtime import tracing
from xatm.participant.runtime.grpc_status import abort_async
from xatm.participant.runtime.proto_enum import proto_enum
from xatm.participant.runtime.undecodable import Undecodable, guard, lenient, refusal
from xatm.participant.xa import FORMAT_ID, Phase, TxStatus, XaCode, Xid

__all__ = ["AdminServicer", "CallerInterceptor", "CoordinatorServicer"]

log = logging.getLogger("xatm.coordinator")
T = TypeVar("T")

_OPEN = ("/grpc.health.v1.Health/", "/grpc.reflection.")
_ADMIN = "/xatm.v1.Admin/"
#: The caller of the call being served; set only by CallerInterceptor (no default: an Admin
#: service served without the interceptor fails closed).
_CALLER: ContextVar[Caller] = ContextVar("xatm_admin_caller")
#: A Coordinator service served without the interceptor: no token, so no per-token bound.
_NOBODY = Caller(ANONYMOUS, "", "")


def rpc(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Turn XatmError into its gRPC status; anything unexpected is logged, never leaked."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            with tracing.served(f"xatm.coordinator.{fn.__name__}", context, request) as span:
                reply = await fn(self, request, context)
                span.note(gtrid=getattr(reply, "gtrid", None))  # Begin's: the new transaction
                return reply
        except XatmError as err:
            await abort_async(context, err)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("internal error in %s", fn.__name__)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error in {fn.__name__}; see coordinator log"
            )
        raise AssertionError("unreachable")

    return wrapper


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    """The Coordinator service over the engine. Participant endpoints are checked here, where they
    enter, against ``endpoints`` (well-formed by default, plus the allow-list when one is set)."""

    def __init__(self, engine: Engine, endpoints: EndpointPolicy | None = None):
        self.engine = engine
        self.endpoints = endpoints or EndpointPolicy()
        self.quota = OpenQuota(engine)

    @contextlib.contextmanager
    def _admitted(self, gtrid: str) -> Iterator[None]:
        """Count transaction ``gtrid`` against the caller's token bound when the block creates it
        (the first call naming an initiator-made gtrid); nothing for one already held."""
        if self.engine.known(gtrid) is not None:
            yield
            return
        with self.quota.admit(_CALLER.get(_NOBODY).principal) as opened:
            yield
            opened(gtrid)

    def _branches(self, branches: Iterable[xa_pb2.BranchRef]) -> list[xa_pb2.BranchRef]:
        """Reported branches, their endpoints checked where they enter."""
        for branch in branches:
            self.endpoints.check(branch.endpoint)
        return list(branches)

    @rpc
    async def Begin(
        self, request: coordinator_pb2.BeginRequest, context: Any
    ) -> coordinator_pb2.BeginResponse:
        if request.gtrid:
            branches = self._branches(request.branches)
            with self._admitted(request.gtrid):
                tx = await self.engine.begin(request.timeout_ms, request.gtrid, branches)
        else:
            with self.quota.admit(_CALLER.get(_NOBODY).principal) as opened:
                tx = await self.engine.begin(request.timeout_ms)
                opened(tx.gtrid)
        return coordinator_pb2.BeginResponse(
            gtrid=tx.gtrid,
            format_id=FORMAT_ID,
            timeout_ms=tx.timeout_ms,
            node_id=self.engine.node_id,
            max_timeout_ms=int(self.engine.settings.max_timeout * 1000),
            incarnation=self.engine.incarnation,
        )

    @rpc
    async def Enlist(
        self, request: coordinator_pb2.EnlistRequest, context: Any
    ) -> coordinator_pb2.EnlistResponse:
        endpoint = self.endpoints.check(request.endpoint)
        with self._admitted(request.gtrid):
            code = await self.engine.enlist(
                request.gtrid, request.bqual, request.rm_id, endpoint, request.timeout_ms
            )
        reason = f"bqual {request.bqual} is already enlisted in {request.gtrid}" if code else ""
        return coordinator_pb2.EnlistResponse(code=proto_enum(code, xa_pb2.XaCode), reason=reason)

    @rpc
    async def Commit(self, request: coordinator_pb2.CompletionRequest, context: Any) -> Any:
        branches = self._branches(request.branches)
        if (refused := await self._take_on(request, branches, "Commit")) is not None:
            return refused
        result = await self.engine.commit(request.gtrid, request.timeout_ms, branches, request.rollback_only)
        return self._completion(result)

    @rpc
    async def Rollback(self, request: coordinator_pb2.CompletionRequest, context: Any) -> Any:
        branches = self._branches(request.branches)
        if (refused := await self._take_on(request, branches, "Rollback")) is not None:
            return refused
        result = await self.engine.rollback(
            request.gtrid,
            "rollback requested by the initiator",
            request.timeout_ms,
            branches,
            request.rollback_only,
        )
        return self._completion(result)

    async def _take_on(
        self, request: coordinator_pb2.CompletionRequest, branches: list[xa_pb2.BranchRef], verb: str
    ) -> coordinator_pb2.CompletionResponse | None:
        """Hold the transaction a Commit or Rollback names (None), or, when it is refused before
        the coordinator took it on (UNAVAILABLE: log unreachable, shutting down, too many open;
        RESOURCE_EXHAUSTED: the token's quota), roll back the branches it carries at once and
        answer it rolled back (or its outcome unknown: see ``roll_back_carried``). Nothing was
        decided (presumed abort), and their participants would otherwise keep the branches' locks
        until the transaction's deadline. When a carried
        branch cannot be reached the refusal is raised, saying so: that branch could still be
        prepared by a later Commit, so no outcome is claimed."""
        try:
            with self._admitted(request.gtrid):
                self.engine.hold(request.gtrid, request.timeout_ms, completing=True)
            return None
        except (UnavailableError, ResourceExhaustedError) as refusal:
            if not branches:
                raise
            reason = (
                f"{refusal.message}; nothing was decided, so its branches were rolled back (presumed abort)"
            )
            inherited = self.engine.made_before_restart(request.gtrid)
            reply = await roll_back_carried(
                self.engine, request.gtrid, branches, verb, reason, inherited=inherited
            )
            ended = sum(b.status == xa_pb2.BRANCH_STATUS_ROLLEDBACK for b in reply.branches)
            log.info(  # as any rollback: a refusal under load must not flood the log with warnings
                "%s %s refused (%s); %d of %d carried branches rolled back",
                request.gtrid,
                verb,
                refusal.message,
                ended,
                len(reply.branches),
            )
            if reply.status != xa_pb2.TRANSACTION_STATUS_ROLLINGBACK:
                return reply  # rolled back, or its outcome unknown (a lone branch's XAER_NOTA)
            raise type(refusal)(
                f"{refusal.message}; {ended} of the {len(reply.branches)} branches it carries were rolled"
                " back, the others are ended by their participants past the transaction's deadline"
            ) from None

    def _completion(self, result: Result) -> coordinator_pb2.CompletionResponse:
        """The answer to Commit or Rollback, with this start's incarnation: an initiator that
        made the gtrid for another one learns the new one with its next Begin."""
        reply = to_completion(result.tx, result.outcome)
        reply.incarnation = self.engine.incarnation
        return reply

    @rpc
    async def MarkRollbackOnly(self, request: coordinator_pb2.MarkRollbackOnlyRequest, context: Any) -> Any:
        return to_info(await self.engine.mark_rollback_only(request.gtrid, request.reason))

    @rpc
    async def GetStatus(self, request: coordinator_pb2.StatusRequest, context: Any) -> xa_pb2.TransactionInfo:
        return to_info(self.engine.get(request.gtrid))

    @rpc
    async def QueryOutcome(self, request: coordinator_pb2.QueryOutcomeRequest, context: Any) -> Any:
        xid = Xid(request.xid.gtrid, request.xid.bqual, request.xid.format_id)
        rm_id, endpoint = request.rm_id, request.endpoint
        if endpoint:
            try:
                self.endpoints.check(endpoint)
            except XatmError as err:
                # Saying where it is served is optional: a bad endpoint must not withhold the
                # outcome, it only keeps the branch where it is.
                log.warning("outcome query for %s: %s; the branch stays where it is", xid, err.message)
                rm_id = endpoint = ""
        decision = await self.engine.participant_query(xid, rm_id, endpoint)
        return coordinator_pb2.QueryOutcomeResponse(decision=proto_enum(decision, xa_pb2.Decision))

    @rpc
    async def RegisterParticipant(
        self, request: coordinator_pb2.RegisterParticipantRequest, context: Any
    ) -> coordinator_pb2.RegisterParticipantResponse:
        endpoint = self.endpoints.check(request.endpoint)
        moved = await self.engine.register_participant(request.rm_id, endpoint)
        return coordinator_pb2.RegisterParticipantResponse(moved=moved)

    @rpc
    async def ReportOutcome(
        self, request: coordinator_pb2.ReportOutcomeRequest, context: Any
    ) -> coordinator_pb2.ReportOutcomeResponse:
        try:
            phase, code = Phase(request.phase), XaCode(request.code)
        except ValueError:
            raise InvalidArgumentError("unknown phase or XA code in report") from None
        if phase not in (Phase.COMMIT, Phase.ROLLBACK):
            raise InvalidArgumentError(f"a participant reports Commit or Rollback, not {phase}")
        xid = Xid(request.xid.gtrid, request.xid.bqual, request.xid.format_id)
        tx = await self.engine.report_outcome(xid, request.rm_id, phase, code, request.reason)
        return coordinator_pb2.ReportOutcomeResponse(status=proto_enum(tx.status, xa_pb2.TransactionStatus))

    @rpc
    async def CreateSavepoint(self, request: coordinator_pb2.CreateSavepointRequest, context: Any) -> Any:
        return coordinator_pb2.CreateSavepointResponse(
            savepoint_id=await self.engine.create_savepoint(request.gtrid)
        )

    @rpc
    async def RollbackToSavepoint(
        self, request: coordinator_pb2.RollbackToSavepointRequest, context: Any
    ) -> Any:
        return to_info(await self.engine.rollback_to_savepoint(request.gtrid, request.savepoint_id))


class AdminServicer(admin_pb2_grpc.AdminServicer):
    """The Admin service over AdminOps, which it shares with the REST API."""

    def __init__(self, ops: AdminOps):
        self.ops = ops

    @rpc
    async def ListTransactions(self, request: admin_pb2.ListTransactionsRequest, context: Any) -> Any:
        try:
            statuses = [TxStatus(s) for s in request.statuses]
        except ValueError:
            raise InvalidArgumentError("unknown transaction status in filter") from None
        after = request.begun_after.ToNanoseconds() / 1e9 if request.HasField("begun_after") else None
        return await self.ops.list_transactions(
            _CALLER.get(), statuses, after, request.page_size, request.page_token
        )

    @rpc
    async def GetTransaction(self, request: admin_pb2.GetTransactionRequest, context: Any) -> Any:
        return await self.ops.get(_CALLER.get(), request.gtrid)

    @rpc
    async def ForceRollback(self, request: admin_pb2.ForceRequest, context: Any) -> Any:
        return await self.ops.force_rollback(_CALLER.get(), request.gtrid, request.reason)

    @rpc
    async def ForceCommit(self, request: admin_pb2.ForceRequest, context: Any) -> Any:
        return await self.ops.force_commit(_CALLER.get(), request.gtrid, request.reason)

    @rpc
    async def Forget(self, request: admin_pb2.ForgetRequest, context: Any) -> Any:
        return await self.ops.forget(_CALLER.get(), list(request.gtrids))

    @rpc
    async def ResolveBranch(self, request: admin_pb2.ResolveBranchRequest, context: Any) -> Any:
        outcome = RESOLVED_OUTCOMES.get(request.outcome)
        return await self.ops.resolve_branch(
            _CALLER.get(), request.gtrid, request.bqual, outcome, request.reason
        )

    @rpc
    async def ListAudit(self, request: admin_pb2.ListAuditRequest, context: Any) -> Any:
        return await self.ops.audit(_CALLER.get(), request.page_size, request.page_token)

    @rpc
    async def ListReplicas(self, request: admin_pb2.ListReplicasRequest, context: Any) -> Any:
        return await self.ops.replicas(_CALLER.get())

    @rpc
    async def ListApprovals(self, request: admin_pb2.ListApprovalsRequest, context: Any) -> Any:
        found = await self.ops.approvals.list(self.ops, _CALLER.get(), request.all)
        return admin_pb2.ListApprovalsResponse(approvals=found)

    @rpc
    async def Approve(self, request: admin_pb2.DecideApprovalRequest, context: Any) -> Any:
        return await self.ops.approvals.approve(self.ops, _CALLER.get(), request.id, request.reason)

    @rpc
    async def Reject(self, request: admin_pb2.DecideApprovalRequest, context: Any) -> Any:
        return await self.ops.approvals.reject(self.ops, _CALLER.get(), request.id, request.reason)


class CallerInterceptor(grpc.aio.ServerInterceptor):
    """Authenticates every call but health and reflection, names the caller of every call, and
    refuses a request whose bytes do not decode (INVALID_ARGUMENT, after authentication; health
    and reflection refuse it too, unauthenticated).

    Coordinator calls need the ``service`` role, checked here; Admin calls are authorized by
    AdminOps (so that a refused force operation is audited) and get a trace id, sent back in
    the ``x-trace-id`` response header. With auth off, every caller is anonymous.
    """

    def __init__(self, auth: Authenticator):
        self.auth = auth

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method.startswith(_OPEN):
            return guard(handler, method, aio=True)
        admin = method.startswith(_ADMIN)
        # Every xatm RPC is unary. On grpc.aio its behaviour is a coroutine function; the stubs
        # type only the threaded server's (a plain function of a grpc.ServicerContext).
        inner = cast(Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]], handler.unary_unary)
        auth = self.auth

        async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
            metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
            trace = ""
            if admin:  # trace ids are for operator calls; the Coordinator hot path makes none
                trace = trace_id(metadata.get("x-trace-id"))
                await context.send_initial_metadata((("x-trace-id", trace),))
            try:
                principal = auth.authenticate(bearer_token(metadata.get("authorization")))
                if not admin:
                    principal.require(Permission.SERVICE)
                if isinstance(request, Undecodable):
                    raise refusal(method, context.peer(), request)
            except XatmError as err:
                if err.status != Status.INVALID_ARGUMENT:
                    log.info("refused %s from %s: %s", method, context.peer(), err.message)
                await abort_async(context, err)
            reset = _CALLER.set(Caller(principal, f"grpc {context.peer()}", trace))
            passed = PASS_ON.set(pass_on(metadata))  # what a call forwarded to another replica keeps
            try:
                return await inner(request, context)
            finally:
                PASS_ON.reset(passed)
                _CALLER.reset(reset)

        return grpc.unary_unary_rpc_method_handler(
            guarded,
            request_deserializer=lenient(handler.request_deserializer),
            response_serializer=handler.response_serializer,
        )
