"""The Participant gRPC service over a ResourceManager.

One synchronous core does all the work (validation, failpoints, RM call, mapping of the
result to an XA code, metrics); ``ParticipantServicer`` serves it on a threaded
``grpc.server`` and ``AsyncParticipantServicer`` on ``grpc.aio`` by running the same core in
a worker thread, since RMs are blocking. XA outcomes travel in ``XaReply.code``; a gRPC
error only ever means the call itself was refused (malformed xid, injected fault).

``Batch`` carries many branches' prepare, commit or rollback in one call: each branch goes
through the same core as its own call would, all of them at once (in worker threads), and each
result is streamed back as soon as it is known, the ones finished together in one message. A
branch whose own call would have been refused answers XAER_RMFAIL with that status as reason.
``BatchStream`` serves the same batches over one long-lived stream: every branch it carries runs
at once, whichever message brought it, and its result goes back, matched by its item id, as
soon as it is known (those finished together in one message); the stream ends once the
coordinator has closed its side and every branch was answered.

An RM whose verbs never wait (``ResourceManager.blocking`` False, e.g. ``MemoryRM``) gains
nothing from a thread per branch and pays for each hand-off: unless a participant failpoint (which
may sleep) is armed when the stream opens or the batch arrives, its branches are served one after
another on the thread (or event loop) that received them, each message's results going back
together in one message.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from concurrent import futures
from typing import Any

import grpc
from google.protobuf.message import Message

from xatm.participant import failpoints
from xatm.participant.api.v1 import participant_pb2, participant_pb2_grpc, xa_pb2
from xatm.participant.errors import InternalError, Status, UnauthenticatedError, XatmError
from xatm.participant.metrics import CALL_DURATION, CALLS
from xatm.participant.runtime import tracing
from xatm.participant.runtime.grpc_status import abort, abort_async
from xatm.participant.runtime.proto_enum import proto_enum
from xatm.participant.stores.base import ResourceManager
from xatm.participant.xa import (
    XaCode,
    XaError,
    Xid,
    validate_bqual,
    validate_gtrid,
    validate_savepoint_id,
)

__all__ = ["AsyncParticipantServicer", "ParticipantCore", "ParticipantServicer"]

log = logging.getLogger(__name__)


def _xid(message: xa_pb2.Xid) -> Xid:
    return Xid(validate_gtrid(message.gtrid), validate_bqual(message.bqual), message.format_id)


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _reply(code: XaCode, reason: str = "") -> participant_pb2.XaReply:
    return participant_pb2.XaReply(code=proto_enum(code, xa_pb2.XaCode), reason=reason)


#: What a verb answers: every reply carries the XA code in ``code``.
Reply = participant_pb2.XaReply | participant_pb2.RecoverReply

#: The verb a batch item names -> the core's verb.
_BATCH_VERBS = {
    participant_pb2.BATCH_PREPARE: "prepare",
    participant_pb2.BATCH_COMMIT: "commit",
    participant_pb2.BATCH_ROLLBACK: "rollback",
}

#: Worker threads a threaded server's servicer runs batch branches on (its own, since the
#: server's pool is busy with the batch call itself), started as needed. More than one
#: coordinator's calls out at once to a participant (32 by default), so a branch that blocks in
#: its RM (waiting for a pooled connection, a lock) never keeps the commits that would free it
#: waiting for a worker; more branches than this wait for a free one.
BATCH_WORKERS = 64

#: Put in a stream's queue once its requests are over (the caller closed its side, or left).
_READ_ALL = object()


class ParticipantCore:
    """Serves one XA verb at a time over an RM; thread-safe as far as the RM is.

    ``on_complete(xid)`` is told when a branch's business phase is over (prepare, commit,
    rollback or forget reached it), so the stub can drop what it keeps for the branch.
    """

    def __init__(self, rm: ResourceManager, *, on_complete: Callable[[Xid], None] | None = None):
        self.rm = rm
        self._on_complete = on_complete
        self._verbs: dict[str, Callable[[Any], Reply]] = {
            "prepare": self._prepare,
            "commit": self._commit,
            "rollback": self._rollback,
            "forget": self._forget,
            "recover": self._recover,
            "savepoint": self._savepoint,
            "rollback_to_savepoint": self._rollback_to_savepoint,
        }

    def serve(self, verb: str, request: Message) -> Reply:
        """Answer ``verb``; raises XatmError only when the call must fail as a whole."""
        started = time.perf_counter()
        label = "UNKNOWN"
        try:
            reply = self._verbs[verb](request)
            label = XaCode(reply.code).name
            return reply
        except XatmError as error:
            label = error.status.name
            raise
        except Exception as exc:  # a bug here, not in the RM: still a clean status, never a traceback
            label = Status.INTERNAL.name
            log.exception("participant %s failed", verb)
            raise InternalError(f"participant {verb} failed: {_reason(exc)}") from exc
        finally:
            CALLS.labels(verb, label).inc()
            CALL_DURATION.labels(verb).observe(time.perf_counter() - started)

    def in_turn(self) -> bool:
        """Whether branches may be served one after another on the thread that received them:
        the RM never waits and no participant failpoint (which may sleep) is armed."""
        return not self.rm.blocking and not failpoints.armed("participant.")

    def serve_item(self, item: participant_pb2.BatchItem, received: float) -> participant_pb2.BatchResult:
        """One branch of a batch, served as its own call would be; never raises.

        ``received``: time.monotonic() when the batch arrived; a branch whose ``timeout_ms``
        passed before it starts is not started (its caller has already given up on it).
        """
        verb = _BATCH_VERBS.get(item.verb)
        if verb is None:
            reason = f"INVALID_ARGUMENT: batch item has no known verb ({item.verb})"
            return _result(item, XaCode.XAER_RMFAIL, reason)
        if item.timeout_ms and time.monotonic() - received > item.timeout_ms / 1000:
            reason = "DEADLINE_EXCEEDED: the branch's deadline passed before the participant served it"
            return _result(item, XaCode.XAER_RMFAIL, reason)
        request: Message
        if verb == "commit":
            request = participant_pb2.CommitBranchRequest(xid=item.xid, one_phase=item.one_phase)
        else:
            request = participant_pb2.BranchRequest(xid=item.xid)
        ids = {"gtrid": item.xid.gtrid or None, "bqual": item.xid.bqual or None}
        with tracing.span(f"xatm.participant.{verb}", item.trace.items(), **ids) as span:
            try:
                reply = self.serve(verb, request)
                assert isinstance(reply, participant_pb2.XaReply)
            except XatmError as error:
                span.note(xa_code=XaCode.XAER_RMFAIL.name)
                return _result(item, XaCode.XAER_RMFAIL, f"{error.status.name}: {error.message}")
            span.note(xa_code=XaCode(reply.code).name)
        return participant_pb2.BatchResult(id=item.id, code=reply.code, reason=reply.reason)

    def answer_item(self, item: participant_pb2.BatchItem, received: float) -> participant_pb2.BatchResult:
        """``serve_item``, and should it raise all the same (a bug), still an answer."""
        try:
            return self.serve_item(item, received)
        except Exception as exc:
            log.exception("participant batch item failed")
            return _result(item, XaCode.XAER_RMFAIL, f"INTERNAL: {_reason(exc)}")

    def answer_in_turn(
        self, items: Sequence[participant_pb2.BatchItem], received: float
    ) -> participant_pb2.BatchReply:
        """Every one of ``items`` answered one after another here, the results in one reply
        (for an RM that never waits: ``in_turn``)."""
        answer = self.answer_item
        return participant_pb2.BatchReply(results=[answer(item, received) for item in items])

    # Each verb: validate, pass its failpoint, call the RM, map the result.

    def _call(self, verb: str, xid: Xid, action: Callable[[], XaCode | None]) -> participant_pb2.XaReply:
        try:
            result = action()
            code = XaCode.XA_OK if result is None else XaCode(result)
        except XaError as error:
            return _reply(error.code, error.reason)
        except Exception as exc:
            log.exception("%s %s failed in %s", verb, xid, type(self.rm).__name__)
            return _reply(XaCode.XAER_RMERR, _reason(exc))
        return _reply(code)

    def _completed(self, xid: Xid) -> None:
        if self._on_complete is not None:
            self._on_complete(xid)

    def _prepare(self, request: participant_pb2.BranchRequest) -> participant_pb2.XaReply:
        xid = _xid(request.xid)
        injected = failpoints.hit("participant.prepare")
        if injected is not None:
            if injected.is_rollback:
                # An XA_RB* vote says the branch is rolled back: make it so, as a real RM would.
                self._call("rollback", xid, lambda: self.rm.rollback(xid))
            return _reply(injected, "failpoint participant.prepare")
        self._completed(xid)
        reply = self._call("prepare", xid, lambda: self.rm.prepare(xid))
        injected = failpoints.hit("participant.after_prepare")
        if injected is not None:
            return _reply(injected, "failpoint participant.after_prepare")
        return reply

    def _commit(self, request: participant_pb2.CommitBranchRequest) -> participant_pb2.XaReply:
        xid = _xid(request.xid)
        injected = failpoints.hit("participant.commit")
        if injected is not None:
            return self._injected_commit(xid, injected, request.one_phase)
        self._completed(xid)
        reply = self._call("commit", xid, lambda: self.rm.commit(xid, request.one_phase))
        if request.one_phase:
            reply = self._one_phase_failed(xid, reply)
        injected = failpoints.hit("participant.after_commit")
        if injected is not None:
            return _reply(injected, "failpoint participant.after_commit")
        return reply

    def _injected_commit(self, xid: Xid, code: XaCode, one_phase: bool) -> participant_pb2.XaReply:
        """A failpoint's answer to a commit, made true at the RM as a real RM answering it would
        have: a heuristic commit commits, a heuristic rollback rolls back, a failed one-phase
        commit rolls back; the other codes leave the branch as it was."""
        reply = _reply(code, "failpoint participant.commit")
        if code == XaCode.XA_HEURCOM:
            self._call("commit", xid, lambda: self.rm.commit(xid, one_phase))
        elif code == XaCode.XA_HEURRB:
            self._call("rollback", xid, lambda: self.rm.rollback(xid))
        elif one_phase:
            return self._one_phase_failed(xid, reply)
        return reply

    def _one_phase_failed(self, xid: Xid, reply: participant_pb2.XaReply) -> participant_pb2.XaReply:
        """Make a failed one-phase commit's answer true.

        XA_RB* and XAER_RMERR from a one-phase commit tell the coordinator that the branch's work
        was rolled back (X/Open XA, xa_commit), so the branch is rolled back here before it is
        said; if that cannot be confirmed, the honest answer is XAER_RMFAIL (outcome unknown,
        the coordinator asks again).
        """
        code = XaCode(reply.code)
        if not (code.is_rollback or code == XaCode.XAER_RMERR):
            return reply
        undone = self._call("rollback", xid, lambda: self.rm.rollback(xid))
        if undone.code in (XaCode.XA_OK, XaCode.XAER_NOTA) or XaCode(undone.code).is_rollback:
            return reply
        return _reply(
            XaCode.XAER_RMFAIL,
            f"one-phase commit failed ({code.name} {reply.reason}) and rolling the branch back "
            f"failed too ({XaCode(undone.code).name} {undone.reason}); outcome unknown",
        )

    def _rollback(self, request: participant_pb2.BranchRequest) -> participant_pb2.XaReply:
        xid = _xid(request.xid)
        injected = failpoints.hit("participant.rollback")
        if injected is not None:
            return _reply(injected, "failpoint participant.rollback")
        self._completed(xid)
        return self._call("rollback", xid, lambda: self.rm.rollback(xid))

    def _forget(self, request: participant_pb2.BranchRequest) -> participant_pb2.XaReply:
        xid = _xid(request.xid)
        self._completed(xid)
        return self._call("forget", xid, lambda: self.rm.forget(xid))

    def _savepoint(self, request: participant_pb2.SavepointBranchRequest) -> participant_pb2.XaReply:
        xid, savepoint_id = _xid(request.xid), validate_savepoint_id(request.savepoint_id)
        return self._call("savepoint", xid, lambda: self.rm.savepoint(xid, savepoint_id))

    def _rollback_to_savepoint(
        self, request: participant_pb2.SavepointBranchRequest
    ) -> participant_pb2.XaReply:
        xid, savepoint_id = _xid(request.xid), validate_savepoint_id(request.savepoint_id)
        undo = self.rm.rollback_to_savepoint
        return self._call("rollback_to_savepoint", xid, lambda: undo(xid, savepoint_id))

    def _recover(self, request: participant_pb2.RecoverRequest) -> participant_pb2.RecoverReply:
        rm_id = self.rm.rm_id
        wanted = request.format_id
        try:
            xids = [
                xa_pb2.Xid(format_id=x.format_id, gtrid=x.gtrid, bqual=x.bqual)
                for x in self.rm.recover()
                if wanted == 0 or x.format_id == wanted
            ]
        except XaError as error:
            log.warning("recover failed in %s: %s", rm_id, error)
            return participant_pb2.RecoverReply(code=proto_enum(error.code, xa_pb2.XaCode), rm_id=rm_id)
        except Exception:
            log.exception("recover failed in %s", rm_id)
            return participant_pb2.RecoverReply(
                code=proto_enum(XaCode.XAER_RMERR, xa_pb2.XaCode), rm_id=rm_id
            )
        return participant_pb2.RecoverReply(
            code=proto_enum(XaCode.XA_OK, xa_pb2.XaCode), rm_id=rm_id, xids=xids
        )


def _result(item: participant_pb2.BatchItem, code: XaCode, reason: str) -> participant_pb2.BatchResult:
    return participant_pb2.BatchResult(id=item.id, code=proto_enum(code, xa_pb2.XaCode), reason=reason)


class _Tally:
    """A ``BatchStream``'s queue read on the sending side: what it carries, ending when the
    requests are over and every branch they brought was answered."""

    __slots__ = ("left", "reading")

    def __init__(self) -> None:
        self.reading = True
        #: Branches started and not answered yet.
        self.left = 0

    def open(self) -> bool:
        return self.reading or self.left > 0

    def take(self, entry: object, results: list[participant_pb2.BatchResult]) -> None:
        """Count one queue entry; a result is added to ``results``."""
        if entry is _READ_ALL:
            self.reading = False
        elif isinstance(entry, int):
            self.left += entry
        else:
            assert isinstance(entry, participant_pb2.BatchResult)
            results.append(entry)
            self.left -= 1


_NOT_THE_COORDINATOR = "this participant takes phase calls from its coordinator only: "


class _Base(participant_pb2_grpc.ParticipantServicer):
    def __init__(
        self,
        rm: ResourceManager,
        *,
        on_complete: Callable[[Xid], None] | None = None,
        caller_token: str | None = None,
    ):
        """``caller_token``: the bearer token every call must carry (the coordinator's
        participant token); None serves any caller."""
        self.core = ParticipantCore(rm, on_complete=on_complete)
        self._expected = f"Bearer {caller_token}".encode() if caller_token else None

    def _refusal(
        self, context: grpc.ServicerContext | grpc.aio.ServicerContext[Any, Any]
    ) -> XatmError | None:
        """Why this call may not be served (it does not carry the expected token), or None."""
        if self._expected is None:
            return None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                given = value if isinstance(value, bytes) else str(value).encode()
                if hmac.compare_digest(given, self._expected):
                    return None
                return UnauthenticatedError(_NOT_THE_COORDINATOR + "the token given is not its coordinator's")
        return UnauthenticatedError(_NOT_THE_COORDINATOR + "no token was given")


class ParticipantServicer(_Base):
    """The Participant service for a threaded ``grpc.server``."""

    def __init__(
        self,
        rm: ResourceManager,
        *,
        on_complete: Callable[[Xid], None] | None = None,
        caller_token: str | None = None,
    ):
        super().__init__(rm, on_complete=on_complete, caller_token=caller_token)
        self._batch_pool: futures.ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def _serve(self, verb: str, request: Message, context: grpc.ServicerContext) -> Reply:
        if (refused := self._refusal(context)) is not None:
            abort(context, refused)
        try:
            with tracing.served(f"xatm.participant.{verb}", context, request) as span:
                reply = self.core.serve(verb, request)
                span.note(xa_code=XaCode(reply.code).name)
                return reply
        except XatmError as error:
            abort(context, error)

    def Prepare(self, request: participant_pb2.BranchRequest, context: grpc.ServicerContext) -> Reply:
        return self._serve("prepare", request, context)

    def Commit(self, request: participant_pb2.CommitBranchRequest, context: grpc.ServicerContext) -> Reply:
        return self._serve("commit", request, context)

    def Rollback(self, request: participant_pb2.BranchRequest, context: grpc.ServicerContext) -> Reply:
        return self._serve("rollback", request, context)

    def Forget(self, request: participant_pb2.BranchRequest, context: grpc.ServicerContext) -> Reply:
        return self._serve("forget", request, context)

    def Recover(self, request: participant_pb2.RecoverRequest, context: grpc.ServicerContext) -> Reply:
        return self._serve("recover", request, context)

    def Savepoint(
        self, request: participant_pb2.SavepointBranchRequest, context: grpc.ServicerContext
    ) -> Reply:
        return self._serve("savepoint", request, context)

    def RollbackToSavepoint(
        self, request: participant_pb2.SavepointBranchRequest, context: grpc.ServicerContext
    ) -> Reply:
        return self._serve("rollback_to_savepoint", request, context)

    def Batch(
        self, request: participant_pb2.BatchRequest, context: grpc.ServicerContext
    ) -> Iterator[participant_pb2.BatchReply]:
        if (refused := self._refusal(context)) is not None:
            abort(context, refused)
        received = time.monotonic()
        items = request.items
        if len(items) == 1:  # nothing to run beside it: no thread hop
            yield participant_pb2.BatchReply(results=[self.core.serve_item(items[0], received)])
            return
        if self.core.in_turn():
            if items:  # an empty batch is answered by the end of the call alone, as below
                yield self.core.answer_in_turn(items, received)
            return
        # Each branch's result goes into one queue as it is known; every result known by the time
        # the previous message is out goes in the next one. A plain queue rather than futures: no
        # waiter to install on every pending branch each time one finishes.
        finished: queue.SimpleQueue[participant_pb2.BatchResult] = queue.SimpleQueue()
        pool = self._pool()
        for item in items:
            pool.submit(self._serve_into, finished, item, received)
        left = len(items)
        while left:
            results = [finished.get()]
            while len(results) < left:
                try:
                    results.append(finished.get_nowait())
                except queue.Empty:
                    break
            left -= len(results)
            yield participant_pb2.BatchReply(results=results)

    def BatchStream(
        self, requests: Iterator[participant_pb2.BatchRequest], context: grpc.ServicerContext
    ) -> Iterator[participant_pb2.BatchReply]:
        if (refused := self._refusal(context)) is not None:
            abort(context, refused)
        # The coordinator waits for this before its first message: it then knows the stream is
        # served (a refusal comes instead of it).
        context.send_initial_metadata(())
        if self.core.in_turn():
            yield from self._answer_in_turn(requests)
            return
        # One thread reads the requests and hands their branches to the batch workers, while the
        # server's thread sends the results: a slow branch holds up neither reading nor others.
        # The queue carries results, and from the reader, each message's number of branches
        # (before any of their results) and _READ_ALL when the requests are over.
        finished: queue.SimpleQueue[participant_pb2.BatchResult | int | object] = queue.SimpleQueue()
        reader = threading.Thread(
            target=self._take, args=(requests, finished), name="xatm-batch-stream", daemon=True
        )
        reader.start()
        tally = _Tally()
        while tally.open():
            results: list[participant_pb2.BatchResult] = []
            tally.take(finished.get(), results)
            while True:
                try:
                    tally.take(finished.get_nowait(), results)
                except queue.Empty:
                    break
            if results:
                yield participant_pb2.BatchReply(results=results)

    def _answer_in_turn(
        self, requests: Iterator[participant_pb2.BatchRequest]
    ) -> Iterator[participant_pb2.BatchReply]:
        """A stream over an RM that never waits, on the server's thread alone: each message's
        branches served one after another, their results in one message."""
        answer_in_turn = self.core.answer_in_turn
        try:
            for request in requests:
                received = time.monotonic()
                if items := request.items:
                    yield answer_in_turn(items, received)
        except Exception as exc:  # the call was cancelled or refused: nothing more comes
            log.debug("batch stream ended while reading: %s", _reason(exc))

    def _take(
        self,
        requests: Iterator[participant_pb2.BatchRequest],
        finished: queue.SimpleQueue[participant_pb2.BatchResult | int | object],
    ) -> None:
        """Read the stream's requests and start their branches; ends with _READ_ALL, always."""
        pool = self._pool()
        try:
            for request in requests:
                received = time.monotonic()
                finished.put(len(request.items))
                for item in request.items:
                    pool.submit(self._serve_into, finished, item, received)
        except Exception as exc:  # the call was cancelled or refused: nothing more comes
            log.debug("batch stream ended while reading: %s", _reason(exc))
        finally:
            finished.put(_READ_ALL)

    def _serve_into(
        self,
        finished: queue.SimpleQueue[Any],
        item: participant_pb2.BatchItem,
        received: float,
    ) -> None:
        """One branch of a batch in a worker; its result always reaches ``finished``."""
        finished.put(self.core.answer_item(item, received))

    def _pool(self) -> futures.ThreadPoolExecutor:
        """The batch workers, started with the first batch of more than one branch."""
        with self._pool_lock:
            if self._batch_pool is None:
                self._batch_pool = futures.ThreadPoolExecutor(BATCH_WORKERS, thread_name_prefix="xatm-batch")
            return self._batch_pool


class AsyncParticipantServicer(_Base):
    """The Participant service for ``grpc.aio.server``: the core runs in a worker thread."""

    async def _serve(self, verb: str, request: Message, context: grpc.aio.ServicerContext[Any, Any]) -> Reply:
        if (refused := self._refusal(context)) is not None:
            await abort_async(context, refused)
        try:
            with tracing.served(f"xatm.participant.{verb}", context, request) as span:
                reply = await asyncio.to_thread(self.core.serve, verb, request)
                span.note(xa_code=XaCode(reply.code).name)
                return reply
        except XatmError as error:
            await abort_async(context, error)

    async def Prepare(
        self, request: participant_pb2.BranchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Reply:
        return await self._serve("prepare", request, context)

    async def Commit(
        self, request: participant_pb2.CommitBranchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Reply:
        return await self._serve("commit", request, context)

    async def Rollback(
        self, request: participant_pb2.BranchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Reply:
        return await self._serve("rollback", request, context)

    async def Forget(
        self, request: participant_pb2.BranchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Reply:
        return await self._serve("forget", request, context)

    async def Recover(
        self, request: participant_pb2.RecoverRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Reply:
        return await self._serve("recover", request, context)

    async def Savepoint(
        self, request: participant_pb2.SavepointBranchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Reply:
        return await self._serve("savepoint", request, context)

    async def RollbackToSavepoint(
        self, request: participant_pb2.SavepointBranchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Reply:
        return await self._serve("rollback_to_savepoint", request, context)

    async def Batch(
        self, request: participant_pb2.BatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[participant_pb2.BatchReply]:
        if (refused := self._refusal(context)) is not None:
            await abort_async(context, refused)
        received = time.monotonic()
        if self.core.in_turn():
            if items := request.items:  # an empty batch is answered by the end of the call alone
                yield self.core.answer_in_turn(items, received)
            return
        serve = self.core.serve_item
        pending = {asyncio.ensure_future(asyncio.to_thread(serve, item, received)) for item in request.items}
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            yield participant_pb2.BatchReply(results=[task.result() for task in done])

    async def BatchStream(
        self,
        requests: AsyncIterator[participant_pb2.BatchRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[participant_pb2.BatchReply]:
        if (refused := self._refusal(context)) is not None:
            await abort_async(context, refused)
        await context.send_initial_metadata(())  # as on a threaded server
        # As on a threaded server: a task reads the requests and starts each branch in a worker
        # thread; the results, each message's number of branches and _READ_ALL share one queue.
        finished: asyncio.Queue[participant_pb2.BatchResult | int | object] = asyncio.Queue()
        branches: set[asyncio.Task[None]] = set()
        answer = self.core.answer_item
        in_turn = self.core.in_turn

        async def serve(item: participant_pb2.BatchItem, received: float) -> None:
            finished.put_nowait(await asyncio.to_thread(answer, item, received))

        async def take() -> None:
            try:
                async for request in requests:
                    received = time.monotonic()
                    finished.put_nowait(len(request.items))
                    # Asked for each message: a failpoint armed meanwhile (it may sleep) must not
                    # sleep on the event loop.
                    here = in_turn()
                    for item in request.items:
                        if here:  # on the event loop: the RM never waits
                            finished.put_nowait(answer(item, received))
                            continue
                        task = asyncio.ensure_future(serve(item, received))
                        branches.add(task)
                        task.add_done_callback(branches.discard)
            except Exception as exc:  # the call was cancelled or refused: nothing more comes
                log.debug("batch stream ended while reading: %s", _reason(exc))
            finally:
                finished.put_nowait(_READ_ALL)

        reader = asyncio.ensure_future(take())
        try:
            tally = _Tally()
            while tally.open():
                results: list[participant_pb2.BatchResult] = []
                tally.take(await finished.get(), results)
                while not finished.empty():
                    tally.take(finished.get_nowait(), results)
                if results:
                    yield participant_pb2.BatchReply(results=results)
        finally:
            reader.cancel()
