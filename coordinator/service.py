"""gRPC servicers of the Coordinator and Admin services: wire <-> engine, errors -> status codes."""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from participant._proto import admin_pb2, admin_pb2_grpc, coordinator_pb2, coordinator_pb2_grpc, xa_pb2
from participant.xa import FORMAT_ID, TxStatus, XatmError, Xid

from .engine import Engine, Result
from .journal import to_info

__all__ = ["AdminServicer", "CoordinatorServicer", "completion"]

log = logging.getLogger("xatm.coordinator")
T = TypeVar("T")


def rpc(fn: Callable[..., Awaitable[T]]) -> Callable[..., Awaitable[T]]:
    """Turn XatmError into its gRPC status; anything unexpected is logged, never leaked."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> T:
        try:
            return await fn(self, request, context)
        except XatmError as err:
            await context.abort(err.code, err.message)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("internal error in %s", fn.__name__)
            await context.abort(
                grpc.StatusCode.INTERNAL, f"internal error in {fn.__name__}; see coordinator log"
            )
        raise AssertionError("unreachable")

    return wrapper


def completion(result: Result) -> coordinator_pb2.CompletionResponse:
    info = to_info(result.tx)
    return coordinator_pb2.CompletionResponse(
        gtrid=info.gtrid, outcome=int(result.outcome), status=info.status, branches=info.branches
    )


class CoordinatorServicer(coordinator_pb2_grpc.CoordinatorServicer):
    def __init__(self, engine: Engine):
        self.engine = engine

    @rpc
    async def Begin(
        self, request: coordinator_pb2.BeginRequest, context: Any
    ) -> coordinator_pb2.BeginResponse:
        tx = await self.engine.begin(request.timeout_ms)
        return coordinator_pb2.BeginResponse(gtrid=tx.gtrid, format_id=FORMAT_ID, timeout_ms=tx.timeout_ms)

    @rpc
    async def Enlist(
        self, request: coordinator_pb2.EnlistRequest, context: Any
    ) -> coordinator_pb2.EnlistResponse:
        code = await self.engine.enlist(request.gtrid, request.bqual, request.rm_id, request.endpoint)
        reason = f"bqual {request.bqual} is already enlisted in {request.gtrid}" if code else ""
        return coordinator_pb2.EnlistResponse(code=int(code), reason=reason)

    @rpc
    async def Commit(self, request: coordinator_pb2.CompletionRequest, context: Any) -> Any:
        return completion(await self.engine.commit(request.gtrid))

    @rpc
    async def Rollback(self, request: coordinator_pb2.CompletionRequest, context: Any) -> Any:
        return completion(await self.engine.rollback(request.gtrid, "rollback requested by the initiator"))

    @rpc
    async def MarkRollbackOnly(self, request: coordinator_pb2.MarkRollbackOnlyRequest, context: Any) -> Any:
        return to_info(await self.engine.mark_rollback_only(request.gtrid, request.reason))

    @rpc
    async def GetStatus(self, request: coordinator_pb2.StatusRequest, context: Any) -> xa_pb2.TransactionInfo:
        return to_info(self.engine.get(request.gtrid))

    @rpc
    async def QueryOutcome(self, request: coordinator_pb2.QueryOutcomeRequest, context: Any) -> Any:
        xid = Xid(request.xid.gtrid, request.xid.bqual, request.xid.format_id)
        return coordinator_pb2.QueryOutcomeResponse(decision=int(self.engine.query_outcome(xid)))

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
    """Operator operations. Force operations obey the same rules as the initiator's."""

    def __init__(self, engine: Engine):
        self.engine = engine

    @rpc
    async def ListTransactions(self, request: admin_pb2.ListTransactionsRequest, context: Any) -> Any:
        try:
            statuses = [TxStatus(s) for s in request.statuses]
        except ValueError:
            raise XatmError(
                grpc.StatusCode.INVALID_ARGUMENT, "unknown transaction status in filter"
            ) from None
        after = request.begun_after.ToNanoseconds() / 1e9 if request.HasField("begun_after") else None
        txs = sorted(self.engine.transactions(statuses, after), key=lambda tx: (tx.begun_at, tx.gtrid))
        size = min(request.page_size or 100, 1000)
        start = 0
        if request.page_token:
            try:
                start = int(request.page_token)
            except ValueError:
                raise XatmError(grpc.StatusCode.INVALID_ARGUMENT, "malformed page_token") from None
        page = txs[start : start + size]
        token = str(start + size) if start + size < len(txs) else ""
        return admin_pb2.ListTransactionsResponse(
            transactions=[to_info(tx) for tx in page], next_page_token=token
        )

    @rpc
    async def GetTransaction(self, request: admin_pb2.GetTransactionRequest, context: Any) -> Any:
        return to_info(self.engine.get(request.gtrid))

    @rpc
    async def ForceRollback(self, request: admin_pb2.ForceRequest, context: Any) -> Any:
        return completion(
            await self.engine.rollback(request.gtrid, request.reason or "forced by an operator")
        )

    @rpc
    async def ForceCommit(self, request: admin_pb2.ForceRequest, context: Any) -> Any:
        return completion(await self.engine.force_commit(request.gtrid))

    @rpc
    async def Forget(self, request: admin_pb2.ForgetRequest, context: Any) -> Any:
        results = []
        for gtrid in request.gtrids:
            try:
                await self.engine.forget(gtrid)
                results.append(admin_pb2.ForgetResult(gtrid=gtrid, forgotten=True))
            except XatmError as err:
                results.append(admin_pb2.ForgetResult(gtrid=gtrid, forgotten=False, error=err.message))
        return admin_pb2.ForgetResponse(results=results)
