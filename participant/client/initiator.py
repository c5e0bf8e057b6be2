"""The initiator API: begin a global transaction, run business calls in it, commit or roll back.

    with TransactionManager("127.0.0.1:7070") as tm:
        with tm.begin() as tx:          # intercepted calls in the block carry tx.gtrid
            bank.Debit(...); shop.Order(...)
        # committed here; an exception in the block rolls back and propagates

        tx = tm.begin()                 # the same without a block: active from here ...
        bank.Debit(...)
        tx.commit()                     # ... until commit() or rollback()

``begin()`` makes the transaction active in the calling thread or asyncio task (a
contextvar) until it is committed or rolled back, so no intercepted call made in between
runs outside it. Work handed to a thread pool runs in the pool's threads, which do not
share that context: submit ``tx.run(fn, ...)`` instead of ``fn``.

By default a transaction costs one round trip to the coordinator, its Commit (or Rollback):
``begin()`` makes the gtrid here (the coordinator's node id, learnt from the manager's first
Begin, then random bits), participants report their branches back in the replies instead of
enlisting, and the Commit carries them. ``TransactionManager(eager=True)`` begins at the
coordinator and has participants enlist there themselves (see docs/initiator.md).

The protocol logic (what to send, how to read answers, the MarkedRollback fallback) is
written once as generators that yield ``(rpc_name, request)`` and receive the answer;
the sync and asyncio classes only differ in how they drive them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import warnings
from collections.abc import Callable, Generator
from contextlib import AbstractContextManager
from types import TracebackType
from typing import Any, ParamSpec, TypeVar

import grpc
from google.protobuf.message import Message

from xatm.participant.api.v1 import coordinator_pb2, coordinator_pb2_grpc, xa_pb2
from xatm.participant.client.context import Binding, Reported, TxContext, bind, bound, use
from xatm.participant.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    Status,
    XatmError,
    error_for,
)
from xatm.participant.runtime import tracing
from xatm.participant.runtime.grpc_status import from_rpc_error
from xatm.participant.runtime.replies import MalformedReply, checked_reply
from xatm.participant.runtime.targets import channel_target, parse_addresses
from xatm.participant.xa import (
    TxOutcome,
    TxStatus,
    XaCode,
    channel_options,
    new_gtrid,
    node_of,
    validate_gtrid,
)

__all__ = [
    "AsyncTransaction",
    "AsyncTransactionManager",
    "Transaction",
    "TransactionError",
    "TransactionHeuristicHazard",
    "TransactionHeuristicMixed",
    "TransactionManager",
    "TransactionOutcomeUnknown",
    "TransactionRolledBack",
    "coordinator_channel",
    "to_xatm_error",
]

log = logging.getLogger(__name__)

COORDINATOR_SERVICE = coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"]

T = TypeVar("T")
P = ParamSpec("P")
# A protocol step: yields (Coordinator rpc name, request), receives the reply or a thrown XatmError;
# or yields (PAUSE, seconds) and receives None once that time has passed.
Flow = Generator[tuple[str, Any], Any, T]
PAUSE = "pause"
#: Pauses between the tries of a Commit or Rollback that got no answer: doubling from the first
#: to the cap (seconds); a restarting coordinator is usually back within a few of them.
RETRY_FIRST, RETRY_CAP = 0.05, 1.0


def to_xatm_error(error: grpc.RpcError | XatmError) -> XatmError:
    """The hierarchy's error for the same status, with the server's message minus gRPC's debug noise."""
    if isinstance(error, XatmError):
        return error
    return from_rpc_error(error)


def coordinator_channel(
    address: str,
    credentials: grpc.ChannelCredentials | None = None,
    *,
    aio: bool = False,
    call_timeout: float | None = None,
) -> Any:
    """A plain (never intercepted) channel to a coordinator or any xatm peer; sync or grpc.aio.

    ``address`` may list several coordinator replicas, comma-separated: the channel fails over
    between them (see ``targets``). ``call_timeout``: the deadline of its calls in seconds, which
    bounds its reconnect backoff (``channel_options``).
    """
    module: Any = grpc.aio if aio else grpc
    target, failover = channel_target(address)
    options = (*channel_options(call_timeout), *failover)
    if credentials is not None:
        return module.secure_channel(target, credentials, options=options)
    return module.insecure_channel(target, options=options)


def auth_metadata(token: str | None) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),) if token else ()


#: The longest transaction timeout the wire carries (ms in an unsigned 32-bit field), in seconds.
MAX_TIMEOUT = (2**32 - 1) / 1000


def checked_timeout(value: float | None, what: str = "timeout") -> float | None:
    """``value`` if it is a usable transaction timeout in seconds (None: the coordinator's default).

    Raises InvalidArgumentError, one line each, for a value that is not a number, not finite (NaN,
    infinity), zero or negative, or longer than the wire carries (``MAX_TIMEOUT``, ~49.7 days).
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidArgumentError(f"{what} must be a number of seconds or None, not {value!r}")
    if math.isnan(value) or math.isinf(value):
        raise InvalidArgumentError(f"{what} must be a finite number of seconds, not {value!r}")
    if value <= 0:
        raise InvalidArgumentError(f"{what} must be more than 0 seconds, not {value!r}")
    if value > MAX_TIMEOUT:
        raise InvalidArgumentError(f"{what} must be at most {MAX_TIMEOUT:.0f} seconds, not {value!r}")
    return float(value)


#: Failures of a call after which the coordinator may or may not have acted on it.
_NO_ANSWER = frozenset(
    {Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED, Status.UNKNOWN, Status.INTERNAL, Status.CANCELLED}
)


def _no_answer(error: XatmError) -> bool:
    """The call failed in a way that says nothing of what the coordinator did with it."""
    return not isinstance(error, MalformedReply) and error.status in _NO_ANSWER


class TransactionError(XatmError):
    """A commit or rollback that the coordinator answered with another outcome than asked.

    Raised as one of its subclasses for the outcomes a caller must tell apart; as itself for
    the rest (TX_COMMITTED to a rollback request, protocol errors).
    """

    def __init__(self, verb: str, reply: coordinator_pb2.CompletionResponse):
        self.gtrid = reply.gtrid
        self.outcome = TxOutcome(reply.outcome)
        #: The transaction's status in the answer (None when the answer gave none).
        self.transaction_status = TxStatus(reply.status) if reply.status else None
        self.branches = list(reply.branches)
        #: Last XA code of each branch that has one, by bqual.
        self.branch_codes = {b.bqual: XaCode(b.last_code) for b in reply.branches if b.has_last_code}
        known = bool(reply.rollback_code or reply.rollback_reason)
        #: Why the transaction rolled back, when it did and the coordinator knows (else None, "").
        self.rollback_code = XaCode(reply.rollback_code) if known else None
        self.rollback_reason = reply.rollback_reason
        message = f"{verb} of {reply.gtrid} ended {self.outcome.name}"
        if self.transaction_status:
            message += f", status {self.transaction_status}"
        if self.rollback_code is not None:
            message += f", rolled back for {self.rollback_code.name}"
            message += f": {self.rollback_reason}" if self.rollback_reason else ""
        if self.branch_codes:
            codes = ", ".join(f"{bqual}={code.name}" for bqual, code in self.branch_codes.items())
            message += f" (branches {codes})"
        super().__init__(message + self._advice())

    def _advice(self) -> str:
        return ""

    @staticmethod
    def of(verb: str, reply: coordinator_pb2.CompletionResponse) -> TransactionError:
        """The exception for a CompletionResponse whose outcome is not the one asked for.

        TX_ROLLBACK: TransactionRolledBack. TX_MIXED: TransactionHeuristicMixed. TX_HAZARD
        with a status that is not final (still Preparing, Prepared, Committing, ...):
        TransactionOutcomeUnknown; with a final one (HeuristicallyCompleted) or none:
        TransactionHeuristicHazard. Anything else: TransactionError.
        """
        outcome = reply.outcome
        cls: type[TransactionError] = TransactionError
        if outcome == TxOutcome.TX_ROLLBACK:
            cls = TransactionRolledBack
        elif outcome == TxOutcome.TX_MIXED:
            cls = TransactionHeuristicMixed
        elif outcome == TxOutcome.TX_HAZARD:
            known = not reply.status or TxStatus(reply.status).is_final
            cls = TransactionHeuristicHazard if known else TransactionOutcomeUnknown
        return cls(verb, reply)


class TransactionRolledBack(TransactionError):
    """Commit was asked but the transaction rolled back (a no vote, rollback-only, timeout)."""

    status = Status.ABORTED


class TransactionHeuristicMixed(TransactionError):
    """TX_MIXED: some branches committed and some rolled back, by heuristic decisions.

    The data is inconsistent across resource managers; an operator must repair it.
    ``branch_codes`` says which branch did what.
    """


class TransactionHeuristicHazard(TransactionError):
    """TX_HAZARD on a completed transaction: a branch's heuristic outcome is not known.

    Some branch may have committed or rolled back on its own; check that resource manager.
    """


class TransactionOutcomeUnknown(TransactionError):
    """The coordinator has not learnt the outcome yet (TX_HAZARD with a status not final).

    Neither committed nor rolled back as far as anyone knows: a one-phase commit was not
    acknowledged, or the commit decision is not yet durable. The coordinator keeps driving
    the transaction to its end; ask it later rather than assume either outcome.
    """

    def _advice(self) -> str:
        return (
            f"; the outcome is not known yet: ask the coordinator later (tx.status(), GetStatus,"
            f" or xactl show {self.gtrid})"
        )


class _TransactionBase:
    """State and protocol steps shared by the sync and asyncio transaction handles."""

    def __init__(self, manager: _ManagerBase, timeout: float | None):
        self._manager = manager
        self._timeout = manager.timeout if timeout is None else checked_timeout(timeout)
        #: The timeout in force, in ms, once begun (0: not known here, the coordinator's default).
        self._timeout_ms = 0
        self._gtrid: str | None = None
        self._binding: Binding | None = None
        self._begin_asked = False
        #: The coordinator holds the transaction (an eager Begin, or a call that needed it there).
        self._held = False
        #: Reported branches the coordinator was given before the commit (by ``_held_flow``).
        self._sent: set[str] = set()
        self._done = False
        self._scope: AbstractContextManager[Any] | None = None

    @property
    def gtrid(self) -> str:
        if self._gtrid is None:
            raise FailedPreconditionError("transaction not begun yet")
        return self._gtrid

    @property
    def context(self) -> TxContext:
        """What intercepted calls carry while this transaction is active."""
        if self._binding is None or self._binding.tx is None:
            raise FailedPreconditionError("transaction not begun yet")
        return self._binding.tx

    @property
    def active(self) -> bool:
        """True from begin until commit() or rollback() is asked (whatever its answer)."""
        return self._binding is not None and self._binding.open

    def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``fn(*args, **kwargs)`` with this transaction active, in whatever thread runs it.

        For work handed to threads that do not share the initiator's context, such as a
        ``ThreadPoolExecutor``: ``pool.submit(tx.run, bank.Debit, request)``. Raises
        XatmError FAILED_PRECONDITION once the transaction was committed or rolled back,
        rather than letting the call run outside it.
        """
        if not self.active:
            what = "not begun yet" if self._binding is None else "already committed or rolled back"
            raise FailedPreconditionError(f"transaction {self._gtrid or ''} {what}")
        with use(self._binding):
            return fn(*args, **kwargs)

    def _claim(self) -> None:
        """Make this transaction the active one in the calling thread or task, before Begin.

        Raises XatmError FAILED_PRECONDITION while another one is active there.
        """
        active = bound()
        if active is not None and not active.expired():
            # One transaction per thread or task: a call could not tell which one it belongs to.
            # One whose timeout passed was rolled back by the coordinator: nothing to tell apart.
            which = f"transaction {active.tx.gtrid}" if active.tx else "a transaction being begun"
            self._begin_asked = True  # refused, not forgotten: no never-begun warning
            raise FailedPreconditionError(
                f"{which} is still active here: commit or roll it back before"
                " beginning another (or begin the other in its own thread or task)",
            )
        self._binding = Binding(None)
        bind(self._binding)

    def _begin_flow(self) -> Flow[None]:
        """Begin at the coordinator; the binding ``_claim`` made carries the transaction from then on."""
        self._begin_asked = True
        assert self._binding is not None, "claimed by begin()"
        try:
            yield from self._begin_call()
        except BaseException:
            self._binding.close()  # never begun: the caller's context is free again
            raise

    def _begin_call(self) -> Flow[None]:
        manager = self._manager
        timeout_ms = 0 if self._timeout is None else max(1, round(self._timeout * 1000))
        sent = time.monotonic()
        # A transaction begun at the coordinator is timed out there, which must know its branches
        # by then: they enlist (``enlist``), and are reported all the same, so that the Commit carries
        # them to a coordinator that forgot them in a restart, which rolls them back at once.
        # Read once: another thread may clear it meanwhile (a dropped connection, a refusal).
        learnt = manager._learnt
        if manager.eager or learnt is None or not (timeout_ms or manager.default_timeout_ms):
            reply = yield "Begin", coordinator_pb2.BeginRequest(timeout_ms=timeout_ms)
            try:
                self._gtrid = validate_gtrid(reply.gtrid)
            except XatmError as error:
                raise MalformedReply(
                    f"coordinator {manager.coordinator} answered Begin with {error.message}"
                ) from None
            manager._learn(reply, asked_ms=timeout_ms)
            self._held = True
            timeout_ms = reply.timeout_ms
        else:
            # Made here: the coordinator hears of the transaction with its commit or rollback.
            self._gtrid = new_gtrid(*learnt)
            timeout_ms = min(timeout_ms or manager.default_timeout_ms, manager.max_timeout_ms)
        deadline = sent + timeout_ms / 1000 if timeout_ms else None
        self._timeout_ms = timeout_ms
        assert self._binding is not None
        # Filled in, not bound: it is active in the context that called begin(), even when this
        # flow runs in another task.
        self._binding.tx = TxContext(
            self._gtrid,
            manager.coordinator,
            deadline,
            reports=True,
            enlist=self._held,
            reported=Reported(self._gtrid),
        )

    def _left_ms(self) -> int:
        """What remains of the timeout in ms, for the coordinator; 0 (its default) when unknown.
        Never 0 once past the deadline, which would read as the default: 1 ms times it out."""
        tx = self._binding.tx if self._binding is not None else None
        remaining = tx.remaining() if tx is not None else None
        return 0 if remaining is None else max(1, round(remaining * 1000))

    def _reported(self) -> tuple[list[xa_pb2.BranchRef], str]:
        """The branches reported to this transaction so far, and why it must roll back ("")."""
        tx = self._binding.tx if self._binding is not None else None
        reported = tx.reported if tx is not None else None
        if reported is None:
            return [], ""
        return reported.refs(), reported.rollback_only

    def _held_flow(self) -> Flow[None]:
        """Make sure the coordinator holds the transaction and every branch reported so far, before
        a call that needs them there (status, savepoints): one Begin naming the gtrid."""
        branches, _ = self._reported()
        enlisting = self._binding is not None and self._binding.tx is not None and self._binding.tx.enlist
        if self._held and (enlisting or {b.bqual for b in branches} <= self._sent):
            return  # held, and its branches enlisted there themselves or were sent
        yield (
            "Begin",
            coordinator_pb2.BeginRequest(gtrid=self.gtrid, timeout_ms=self._left_ms(), branches=branches),
        )
        self._held, self._sent = True, {b.bqual for b in branches}

    def _end(self) -> None:
        """Commit or rollback is under way: from now on calls carry no transaction."""
        self._done = True
        if self._binding is not None:
            self._binding.close()

    def _completion(self, why: str = "") -> coordinator_pb2.CompletionRequest:
        """Commit or Rollback of this transaction, with what the coordinator may not know yet;
        ``why``: the reason a rollback gives when no reported branch gave one."""
        branches, rollback_only = self._reported()
        return coordinator_pb2.CompletionRequest(
            gtrid=self.gtrid,
            timeout_ms=self._left_ms(),
            branches=branches,
            rollback_only=rollback_only or why,
        )

    def _completion_flow(self, verb: str, why: str = "") -> Flow[coordinator_pb2.CompletionResponse]:
        """``verb`` ("Commit" or "Rollback") asked until the coordinator answers, for up to the
        manager's ``completion_retry`` seconds: a call that got no answer (the coordinator
        restarting, paused or out of reach) is asked again, which is safe for both — a repeated
        Commit waits for or reads the outcome of the first, and a restarted coordinator rolls
        back a transaction it never decided together with the branches the call carries, so
        their locks go at once instead of at the deadline. Each try says what is left of the
        timeout then. Raises the last failure once the time is spent."""
        give_up = time.monotonic() + self._manager.completion_retry
        pause = RETRY_FIRST
        while True:
            try:
                return (yield verb, self._completion(why))
            except XatmError as error:
                left = give_up - time.monotonic()
                if not _no_answer(error) or left <= 0:
                    raise
                log.info("%s of %s got no answer (%s); asking again", verb, self._gtrid, error.message)
            yield PAUSE, min(pause, left)
            pause = min(pause * 2, RETRY_CAP)

    def _timed_out(self) -> bool:
        """The transaction's timeout has passed here: a commit asked now would come too late."""
        return self._binding is not None and self._binding.expired()

    def _late_commit_flow(self) -> Flow[coordinator_pb2.CompletionResponse]:
        """Commit asked past the deadline: roll back instead (with the reported branches, so the
        coordinator undoes them at once) and raise TransactionRolledBack for XA_RBTIMEOUT. Never a
        Commit: the coordinator, hearing of the transaction only now, could not tell it is late."""
        reason = f"transaction timeout of {self._timeout_ms} ms expired before the commit was asked"
        try:
            reply = yield from self._rollback_flow(reason)
        except TransactionError:
            raise  # rolled back only in part: that says more than the timeout
        except XatmError as error:
            # Nothing commits without a Commit; the branches are ended by their participants past
            # the deadline (or by the coordinator's own timeout when they enlisted there).
            reason += f"; its rollback was not delivered ({error.message})"
            reply = coordinator_pb2.CompletionResponse(gtrid=self.gtrid)
        answer = coordinator_pb2.CompletionResponse()
        answer.CopyFrom(reply)
        answer.outcome = xa_pb2.TX_ROLLBACK
        answer.rollback_code = xa_pb2.XA_RBTIMEOUT
        answer.rollback_reason = reason
        raise TransactionError.of("commit", answer)

    def _commit_flow(self) -> Flow[coordinator_pb2.CompletionResponse]:
        if self._timed_out():
            self._end()
            return (yield from self._late_commit_flow())
        self._end()
        try:
            reply = yield from self._completion_flow("Commit")
            self._manager._restarted(reply)
        except XatmError as error:
            self._manager._unknown(error)
            if not _no_answer(error):
                raise  # a refusal, or a typed failure (a malformed reply) that says enough
            # The request may have reached the coordinator: say so, and where to look.
            raise error_for(
                error.status,
                f"{error.message}; the outcome of the commit of {self.gtrid} is unknown here:"
                f" ask tx.status(), GetStatus or xactl show {self.gtrid}",
            ) from None
        if reply.outcome != TxOutcome.TX_OK:
            raise TransactionError.of("commit", reply)
        return reply

    def _rollback_flow(self, why: str = "") -> Flow[coordinator_pb2.CompletionResponse]:
        self._end()
        try:
            reply = yield from self._completion_flow("Rollback", why)
            self._manager._restarted(reply)
        except XatmError as error:
            self._manager._unknown(error)
            if error.status != Status.FAILED_PRECONDITION:
                raise
            # Refused: MarkedRollback only completes through commit, which rolls back.
            info = yield "GetStatus", coordinator_pb2.StatusRequest(gtrid=self.gtrid)
            if info.status == xa_pb2.TRANSACTION_STATUS_ROLLEDBACK:
                return coordinator_pb2.CompletionResponse(
                    gtrid=self.gtrid, outcome=xa_pb2.TX_OK, status=info.status, branches=info.branches
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
        if not self._done:  # once completion was asked, the coordinator has it (or never will)
            yield from self._held_flow()
        return (yield "GetStatus", coordinator_pb2.StatusRequest(gtrid=self.gtrid))

    def _savepoint_flow(self) -> Flow[str]:
        yield from self._held_flow()
        reply = yield "CreateSavepoint", coordinator_pb2.CreateSavepointRequest(gtrid=self.gtrid)
        return reply.savepoint_id

    def _rollback_to_flow(self, savepoint_id: str) -> Flow[xa_pb2.TransactionInfo]:
        yield from self._held_flow()
        request = coordinator_pb2.RollbackToSavepointRequest(gtrid=self.gtrid, savepoint_id=savepoint_id)
        info = yield "RollbackToSavepoint", request
        # Branches opened after the savepoint were rolled back and left the transaction: the
        # commit must not bring them back.
        tx = self._binding.tx if self._binding is not None else None
        if tx is not None and tx.reported is not None:
            self._sent = {b.bqual for b in info.branches}
            tx.reported.retain(self._sent)
        return info

    def _enter(self) -> None:
        # Also active in this context when the block runs elsewhere than begin() did.
        self._scope = use(self._binding)
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
        """Commit; the transaction stops being active here, whatever the answer.

        Raises TransactionRolledBack, TransactionHeuristicMixed, TransactionHeuristicHazard or
        TransactionOutcomeUnknown (see ``TransactionError.of``) for any outcome but TX_OK, and
        XatmError when the coordinator cannot be asked.
        """
        return self._manager._drive(self._commit_flow())

    def rollback(self) -> coordinator_pb2.CompletionResponse:
        """Roll back; the transaction stops being active here. Errors as for ``commit``."""
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
    """A global transaction for asyncio: ``async with tm.begin() as tx`` or ``tx = await tm.begin()``.

    It is active in the task that called ``tm.begin()`` (and tasks it creates afterwards) from
    that call until commit or rollback, however the Begin is awaited (directly, ``wait_for``,
    ``gather``); ``tm.begin()`` called inside another task makes it active in that task only.
    """

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

    def __del__(self) -> None:
        # Like a coroutine never awaited: calls the caller thought transactional ran without one.
        if not getattr(self, "_begin_asked", True):
            if self._binding is not None:
                self._binding.close()  # frees the caller's task for another begin
            warnings.warn(
                "AsyncTransaction was never begun: use 'await tm.begin()' or 'async with tm.begin()'",
                RuntimeWarning,
                stacklevel=1,
            )

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
        eager: bool = False,
        completion_retry: float = 5.0,
    ):
        parse_addresses(coordinator)  # one line at construction, never a dial to a mangled target
        #: host:port of the coordinator (or several, comma-separated); participants enlist there too.
        self.coordinator = coordinator
        #: Begin at the coordinator and have participants enlist there (two round trips more per
        #: transaction, plus one per branch); by default gtrids are made here and branches
        #: reported back in replies.
        self.eager = eager
        #: (node id, incarnation) of the coordinator, learnt from a Begin and put in every gtrid
        #: made here; None before, after a reason to learn them again, or when the coordinator is
        #: too old to take gtrids made by initiators (every begin is eager then). Replaced whole,
        #: so a thread never pairs one start's node id with another's incarnation.
        self._learnt: tuple[str, str] | None = None
        self._incarnation = ""
        #: The coordinator's default and largest transaction timeouts (ms), learnt likewise.
        self.default_timeout_ms = 0
        self.max_timeout_ms = 0
        #: Default transaction timeout in seconds (None: the coordinator's default).
        self.timeout = checked_timeout(timeout)
        #: Deadline of each call to the coordinator, separate from the transaction timeout.
        self.call_timeout = checked_timeout(call_timeout, "call_timeout")
        #: Seconds a Commit or Rollback that got no answer is asked again (0: never).
        if isinstance(completion_retry, int | float) and completion_retry < 0:
            raise InvalidArgumentError(
                f"completion_retry must be 0 (ask once) or more seconds, not {completion_retry!r}"
            )
        self.completion_retry: float = (
            0.0 if completion_retry == 0 else checked_timeout(completion_retry, "completion_retry") or 0.0
        )
        self._credentials = channel_credentials
        self._metadata = auth_metadata(token)
        self._channel: Any = None
        self._stub: Any = None
        self._was_ready = False

    @property
    def node_id(self) -> str | None:
        """The coordinator's node id, learnt from the first Begin (None before, or when the
        coordinator is too old to take gtrids made by initiators). Set to None to learn it again
        at the next ``begin()`` (``relearn``)."""
        learnt = self._learnt
        return None if learnt is None else learnt[0]

    @node_id.setter
    def node_id(self, value: str | None) -> None:
        self._learnt = None if value is None else (value, self._incarnation)

    @property
    def incarnation(self) -> str:
        """The coordinator's incarnation (its current start) last learnt; "" from a coordinator
        that has none."""
        return self._incarnation

    def _learn(self, reply: coordinator_pb2.BeginResponse, asked_ms: int) -> None:
        """Take what the first Begin tells of the coordinator: its node id and timeouts."""
        node = reply.node_id
        if not node or node_of(reply.gtrid) != node or not reply.max_timeout_ms:
            return  # an older coordinator: it makes every gtrid itself
        try:
            # The gtrids made here must fit the contract's limits.
            validate_gtrid(new_gtrid(node, reply.incarnation))
        except XatmError:
            return
        if not asked_ms:
            self.default_timeout_ms = reply.timeout_ms
        self.max_timeout_ms = reply.max_timeout_ms
        self._incarnation = reply.incarnation
        self._learnt = (node, reply.incarnation)

    def relearn(self) -> None:
        """Have the next ``begin()`` go to the coordinator and learn again its node id, incarnation
        and default timeout (one ``Begin`` round trip), as the manager's first one did.

        For an application that knows the coordinator restarted (its supervisor told it, or an
        operator did): gtrids made here carry the incarnation learnt before, and a restarted
        coordinator rolls back the first commit that carries an older one. Without this call, that
        refusal is how the manager learns the new incarnation. Transactions already begun keep
        their gtrid.
        """
        self.node_id = None

    def _unknown(self, error: XatmError) -> None:
        """A Commit or Rollback refused as an unknown transaction: the coordinator answering is
        not the one the gtrids here are made for (another replica took over after the channel
        failed over), so the next transaction begins at it and learns its node."""
        if error.status == Status.NOT_FOUND:
            self.node_id = None

    def _restarted(self, reply: coordinator_pb2.CompletionResponse) -> None:
        """A Commit or Rollback answer naming another coordinator incarnation than the one the
        gtrids here are made with: the coordinator restarted and refuses those gtrids, so the
        next transaction begins at it and learns the new one."""
        learnt = self._learnt
        if reply.incarnation and learnt is not None and reply.incarnation != learnt[1]:
            self._learnt = None

    def _connect(self, aio: bool) -> Any:
        # On first use, so a grpc.aio channel binds to the running event loop.
        self._channel = coordinator_channel(
            self.coordinator, self._credentials, aio=aio, call_timeout=self.call_timeout
        )
        self._stub = coordinator_pb2_grpc.CoordinatorStub(self._channel)
        return self._stub

    def _look_at_connection(self) -> None:
        """At each ``begin()``: when the channel's connection was ready and is not any more (the
        coordinator closed it, restarted, or another replica answers now), this begin learns the
        incarnation again (``relearn``), so that a transaction begun after a restart is not made
        for the coordinator's earlier start and refused. Costs one Begin after a reconnection."""
        state = None if self._channel is None else self._connection_state()
        if state == grpc.ChannelConnectivity.READY:
            self._was_ready = True
        elif state is not None and self._was_ready:
            self._was_ready = False
            self.node_id = None

    def _connection_state(self) -> grpc.ChannelConnectivity | None:
        """The open channel's connectivity now, without connecting; None when it does not say."""
        raise NotImplementedError

    def _call(self, stub: Any, method: str, request: Message) -> Any:
        metadata = (*self._metadata, *tracing.inject())  # the caller's trace, when tracing is on
        return getattr(stub, method)(request, timeout=self.call_timeout, metadata=metadata)

    def _checked(self, method: str, reply: Any) -> Any:
        """``reply`` if it is a valid answer to ``method``; raises MalformedReply otherwise."""
        return checked_reply(reply, COORDINATOR_SERVICE, method, f"coordinator {self.coordinator}")


class TransactionManager(_ManagerBase):
    """Begins and completes global transactions on one coordinator, synchronously."""

    def begin(self, timeout: float | None = None) -> Transaction:
        """Begin a global transaction (``timeout`` seconds; None: the manager's default).

        The transaction is active in the calling thread until ``commit()`` or ``rollback()``.
        Raises XatmError: FAILED_PRECONDITION while another one is active here, or the code
        of the failed Begin call (e.g. UNAVAILABLE).
        """
        self._look_at_connection()
        tx = Transaction(self, timeout)
        tx._claim()
        self._drive(tx._begin_flow())
        return tx

    def _drive(self, flow: Flow[T]) -> T:
        stub = self._stub or self._connect(aio=False)
        try:
            method, request = next(flow)
            while True:
                if method == PAUSE:
                    time.sleep(request)
                    method, request = flow.send(None)
                    continue
                try:
                    reply = self._checked(method, self._call(stub, method, request))
                except (grpc.RpcError, MalformedReply) as error:
                    method, request = flow.throw(to_xatm_error(error))
                else:
                    self._was_ready = True  # an answer came over the connection
                    method, request = flow.send(reply)
        except StopIteration as stop:
            return stop.value

    def _connection_state(self) -> grpc.ChannelConnectivity | None:
        """The channel's connectivity, without connecting; None when this grpc does not say.

        Asked of the channel's core directly: ``grpc.Channel.subscribe`` would poll it from a
        thread with wall-clock deadlines, which a stepped clock turns into a hang."""
        check = getattr(getattr(self._channel, "_channel", None), "check_connectivity_state", None)
        if check is None:
            return None
        number = check(False)
        return next((state for state in grpc.ChannelConnectivity if state.value[0] == number), None)

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
        """A transaction handle, begun by ``async with`` or ``await`` (errors as the sync begin).

        It is active in the calling task from this call until ``commit()`` or ``rollback()``,
        even when the Begin is awaited in another task (``asyncio.wait_for``). Raises XatmError
        FAILED_PRECONDITION at once while another transaction is active in this task.
        """
        self._look_at_connection()
        tx = AsyncTransaction(self, timeout)
        tx._claim()
        return tx

    def _connection_state(self) -> grpc.ChannelConnectivity:
        state: grpc.ChannelConnectivity = self._channel.get_state(try_to_connect=False)
        return state

    async def _drive(self, flow: Flow[T]) -> T:
        stub = self._stub or self._connect(aio=True)
        try:
            method, request = next(flow)
            while True:
                if method == PAUSE:
                    await asyncio.sleep(request)
                    method, request = flow.send(None)
                    continue
                try:
                    reply = self._checked(method, await self._call(stub, method, request))
                except (grpc.RpcError, MalformedReply) as error:
                    method, request = flow.throw(to_xatm_error(error))
                else:
                    self._was_ready = True  # an answer came over the connection
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
