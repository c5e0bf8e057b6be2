"""The initiator API: begin a global transaction, run business calls in it, commit or roll back.

    with TransactionManager("127.0.0.1:7070") as tm:
        with tm.begin() as tx:          # intercepted calls in the block carry tx.gtrid
            bank.Debit(...); shop.Order(...)
        # committed here; an exception in the block rolls back and propagates

The protocol logic (what to send, how to read answers, the MarkedRollback fallback) is
written once as generators that yield ``(rpc_name, request)`` and receive the answer;
the sync and asyncio classes only differ in how they drive them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, TypeVar

import grpc
from google.protobuf.message import Message

from ._proto import coordinator_pb2, coordinator_pb2_grpc, xa_pb2
from .context import TxContext, use
from .replies import MalformedReply, checked_reply
from .xa import CHANNEL_OPTIONS, TxOutcome, TxStatus, XaCode, XatmError, validate_gtrid

__all__ = [
    "AsyncTransaction",
    "AsyncTransactionManager",
    "Transaction",
    "TransactionError",
    "TransactionManager",
    "TransactionRolledBack",
    "coordinator_channel",
    "to_xatm_error",
]

log = logging.getLogger(__name__)

COORDINATOR_SERVICE = coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"]

T = TypeVar("T")
# A protocol step: yields (Coordinator rpc name, request), receives the reply or a thrown XatmError.
Flow = Generator[tuple[str, Message], Any, T]


def to_xatm_error(error: grpc.RpcError | XatmError) -> XatmError:
    """The same status code and the server's message, minus gRPC's debug noise."""
    if isinstance(error, XatmError):
        return error
    code = error.code() if callable(getattr(error, "code", None)) else None
    details = error.details() if callable(getattr(error, "details", None)) else None
    code = code or grpc.StatusCode.UNKNOWN
    return XatmError(code, details or code.name)


def coordinator_channel(
    address: str, credentials: grpc.ChannelCredentials | None = None, *, aio: bool = False
) -> Any:
    """A plain (never intercepted) channel to a coordinator or any xatm peer; sync or grpc.aio."""
    module: Any = grpc.aio if aio else grpc
    if credentials is not None:
        return module.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
    return module.insecure_channel(address, options=CHANNEL_OPTIONS)


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


class TransactionError(XatmError):
    """A commit or rollback that the coordinator answered with another outcome than asked."""

    def __init__(self, verb: str, reply: coordinator_pb2.CompletionResponse):
        self.gtrid = reply.gtrid
        self.outcome = TxOutcome(reply.outcome)
        self.status = TxStatus(reply.status) if reply.status else None
        self.branches = list(reply.branches)
        #: Last XA code of each branch that has one, by bqual.
        self.branch_codes = {b.bqual: XaCode(b.last_code) for b in reply.branches if b.has_last_code}
        message = f"{verb} of {reply.gtrid} ended {self.outcome.name}"
        if self.status:
            message += f", status {self.status}"
        if self.branch_codes:
            codes = ", ".join(f"{bqual}={code.name}" for bqual, code in self.branch_codes.items())
            message += f" (branches {codes})"
        rolled_back = self.outcome is TxOutcome.TX_ROLLBACK
        super().__init__(grpc.StatusCode.ABORTED if rolled_back else grpc.StatusCode.UNKNOWN, message)

    @staticmethod
    def of(verb: str, reply: coordinator_pb2.CompletionResponse) -> TransactionError:
        cls = TransactionRolledBack if reply.outcome == TxOutcome.TX_ROLLBACK else TransactionError
        return cls(verb, reply)


class TransactionRolledBack(TransactionError):
    """Commit was asked but the transaction rolled back (a no vote, rollback-only, timeout)."""


class _TransactionBase:
    """State and protocol steps shared by the sync and asyncio transaction handles."""

    def __init__(self, manager: _ManagerBase, timeout: float | None):
        self._manager = manager
        self._timeout = manager.timeout if timeout is None else timeout
        self._gtrid: str | None = None
        self._deadline: float | None = None
        self._done = False
        self._scope: AbstractContextManager[Any] | None = None

    @property
    def gtrid(self) -> str:
        if self._gtrid is None:
            raise XatmError(grpc.StatusCode.FAILED_PRECONDITION, "transaction not begun yet")
        return self._gtrid

    @property
    def context(self) -> TxContext:
        """What intercepted calls carry while this transaction is active."""
        return TxContext(self.gtrid, self._manager.coordinator, self._deadline)

    def _begin_flow(self) -> Flow[None]:
        timeout_ms = 0 if self._timeout is None else max(1, round(self._timeout * 1000))
        sent = time.monotonic()
        reply = yield "Begin", coordinator_pb2.BeginRequest(timeout_ms=timeout_ms)
        try:
            self._gtrid = validate_gtrid(reply.gtrid)
        except XatmError as error:
            raise MalformedReply(
                f"coordinator {self._manager.coordinator} answered Begin with {error.message}"
            ) from None
        self._deadline = sent + reply.timeout_ms / 1000 if reply.timeout_ms else None

    def _commit_flow(self) -> Flow[coordinator_pb2.CompletionResponse]:
        self._done = True
        reply = yield "Commit", coordinator_pb2.CompletionRequest(gtrid=self.gtrid)
        if reply.outcome != TxOutcome.TX_OK:
            raise TransactionError.of("commit", reply)
        return reply

    def _rollback_flow(self) -> Flow[coordinator_pb2.CompletionResponse]:
        self._done = True
        try:
            reply = yield "Rollback", coordinator_pb2.CompletionRequest(gtrid=self.gtrid)
        except XatmError as error:
            if error.code != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            # Refused: MarkedRollback only completes through commit, which rolls back (§2).
            info = yield "GetStatus", coordinator_pb2.StatusRequest(gtrid=self.gtrid)
            if info.status == xa_pb2.TRANSACTION_STATUS_ROLLEDBACK:
                return coordinator_pb2.CompletionResponse(
                    gtrid=self.gtrid, outcome=TxOutcome.TX_OK, status=info.status, branches=info.branches
                )
            if info.status != xa_pb2.TRANSACTION_STATUS_MARKED_ROLLBACK:
                raise error
            reply = yield "Commit", coordinator_pb2.CompletionRequest(gtrid=self.gtrid)
            if reply.outcome != TxOutcome.TX_ROLLBACK:
                raise TransactionError.of("rollback", reply) from None
            return reply
        if reply.outcome != TxOutcome.TX_OK:
            raise TransactionError.of("rollback", reply)
        return reply

    def _status_flow(self) -> Flow[xa_pb2.TransactionInfo]:
        return (yield "GetStatus", coordinator_pb2.StatusRequest(gtrid=self.gtrid))

    def _savepoint_flow(self) -> Flow[str]:
        reply = yield "CreateSavepoint", coordinator_pb2.CreateSavepointRequest(gtrid=self.gtrid)
        return reply.savepoint_id

    def _rollback_to_flow(self, savepoint_id: str) -> Flow[xa_pb2.TransactionInfo]:
        request = coordinator_pb2.RollbackToSavepointRequest(gtrid=self.gtrid, savepoint_id=savepoint_id)
        return (yield "RollbackToSavepoint", request)

    def _enter(self) -> None:
        self._scope = use(self.context)
        self._scope.__enter__()

    def _exit_flow(self, exc: BaseException | None) -> Flow[None]:
        """Leave the block: commit on success; on an exception roll back and let it propagate."""
        if self._scope is not None:
            self._scope.__exit__(None, None, None)
            self._scope = None
        if self._done:
            return
        if exc is None:
            yield from self._commit_flow()
            return
        try:
            yield from self._rollback_flow()
        except XatmError as error:
            # The block's own exception is what the caller must see; the coordinator times
            # the transaction out (presumed abort) if this rollback never arrived.
            log.warning("rollback of %s after %s failed: %s", self._gtrid, type(exc).__name__, error)
            exc.add_note(f"xatm: rollback of {self._gtrid} failed: {error}")

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._gtrid or '(not begun)'}>"


class Transaction(_TransactionBase):
    """A global transaction driven synchronously; ``with`` commits or rolls back at the end."""

    _manager: TransactionManager

    def commit(self) -> coordinator_pb2.CompletionResponse:
        """Commit; raises TransactionRolledBack (or TransactionError) for any outcome but TX_OK."""
        return self._manager._drive(self._commit_flow())

    def rollback(self) -> coordinator_pb2.CompletionResponse:
        return self._manager._drive(self._rollback_flow())

    def status(self) -> xa_pb2.TransactionInfo:
        return self._manager._drive(self._status_flow())

    def savepoint(self) -> str:
        return self._manager._drive(self._savepoint_flow())

    def rollback_to(self, savepoint_id: str) -> xa_pb2.TransactionInfo:
        return self._manager._drive(self._rollback_to_flow(savepoint_id))

    def __enter__(self) -> Transaction:
        self._enter()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._manager._drive(self._exit_flow(exc))


class AsyncTransaction(_TransactionBase):
    """A global transaction for asyncio: ``async with tm.begin() as tx`` or ``tx = await tm.begin()``."""

    _manager: AsyncTransactionManager

    async def commit(self) -> coordinator_pb2.CompletionResponse:
        return await self._manager._drive(self._commit_flow())

    async def rollback(self) -> coordinator_pb2.CompletionResponse:
        return await self._manager._drive(self._rollback_flow())

    async def status(self) -> xa_pb2.TransactionInfo:
        return await self._manager._drive(self._status_flow())

    async def savepoint(self) -> str:
        return await self._manager._drive(self._savepoint_flow())

    async def rollback_to(self, savepoint_id: str) -> xa_pb2.TransactionInfo:
        return await self._manager._drive(self._rollback_to_flow(savepoint_id))

    async def _begun(self) -> AsyncTransaction:
        if self._gtrid is None:
            await self._manager._drive(self._begin_flow())
        return self

    def __await__(self) -> Generator[Any, None, AsyncTransaction]:
        return self._begun().__await__()

    async def __aenter__(self) -> AsyncTransaction:
        await self._begun()
        self._enter()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._manager._drive(self._exit_flow(exc))


class _ManagerBase:
    def __init__(
        self,
        coordinator: str,
        *,
        timeout: float | None = None,
        channel_credentials: grpc.ChannelCredentials | None = None,
        token: str | None = None,
        call_timeout: float | None = 30.0,
    ):
        #: host:port of the coordinator; participants enlist there too.
        self.coordinator = coordinator
        #: Default transaction timeout in seconds (None: the coordinator's default).
        self.timeout = timeout
        #: Deadline of each call to the coordinator, separate from the transaction timeout.
        self.call_timeout = call_timeout
        self._credentials = channel_credentials
        self._metadata = auth_metadata(token)
        self._channel: Any = None
        self._stub: Any = None

    def _connect(self, aio: bool) -> Any:
        # On first use, so a grpc.aio channel binds to the running event loop.
        self._channel = coordinator_channel(self.coordinator, self._credentials, aio=aio)
        self._stub = coordinator_pb2_grpc.CoordinatorStub(self._channel)
        return self._stub

    def _call(self, stub: Any, method: str, request: Message) -> Any:
        return getattr(stub, method)(request, timeout=self.call_timeout, metadata=self._metadata)

    def _checked(self, method: str, reply: Any) -> Any:
        """``reply`` if it is a valid answer to ``method``; raises MalformedReply otherwise."""
        return checked_reply(reply, COORDINATOR_SERVICE, method, f"coordinator {self.coordinator}")


class TransactionManager(_ManagerBase):
    """Begins and completes global transactions on one coordinator, synchronously."""

    def begin(self, timeout: float | None = None) -> Transaction:
        """Begin a global transaction (``timeout`` seconds; None: the manager's default)."""
        tx = Transaction(self, timeout)
        self._drive(tx._begin_flow())
        return tx

    def _drive(self, flow: Flow[T]) -> T:
        stub = self._stub or self._connect(aio=False)
        try:
            method, request = next(flow)
            while True:
                try:
                    reply = self._checked(method, self._call(stub, method, request))
                except (grpc.RpcError, MalformedReply) as error:
                    method, request = flow.throw(to_xatm_error(error))
                else:
                    method, request = flow.send(reply)
        except StopIteration as stop:
            return stop.value

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
            self._channel = self._stub = None

    def __enter__(self) -> TransactionManager:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class AsyncTransactionManager(_ManagerBase):
    """Begins and completes global transactions on one coordinator, for asyncio."""

    def begin(self, timeout: float | None = None) -> AsyncTransaction:
        """A transaction handle, begun by ``async with`` or ``await``."""
        return AsyncTransaction(self, timeout)

    async def _drive(self, flow: Flow[T]) -> T:
        stub = self._stub or self._connect(aio=True)
        try:
            method, request = next(flow)
            while True:
                try:
                    reply = self._checked(method, await self._call(stub, method, request))
                except (grpc.RpcError, MalformedReply) as error:
                    method, request = flow.throw(to_xatm_error(error))
                else:
                    method, request = flow.send(reply)
        except StopIteration as stop:
            return stop.value

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None

    async def __aenter__(self) -> AsyncTransactionManager:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
