"""Prepare, commit and rollback calls to one participant endpoint, carried many to a message.

Each branch call still has its own deadline and its own answer; only the transport is shared.
A call queued for an endpoint goes out with every other call queued for it in the same pass of
the event loop, as one ``Batch`` RPC (at most ``max_batch`` branches to a message): a lone call
leaves at once, on its own per-branch RPC (cheaper than a batch of one) made from its caller's
own task (no task and no hand-over of the answer in between), and under load the
calls of many transactions share a message. The participant
streams each branch's result back as soon as it has it, so a slow branch holds up nobody else;
a branch whose own deadline passes first is answered here, as its own call's deadline would
have been (``XAER_RMFAIL``), whatever its neighbours do.

A participant that does not serve ``Batch`` (UNIMPLEMENTED) makes its queued calls raise
``Unbatched``: the caller sends them one by one and stops batching to that endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from xatm.coordinator import metrics
from xatm.participant.api.v1 import participant_pb2
from xatm.participant.xa import Phase, XaCode, Xid

__all__ = ["BATCHED_PHASES", "Batcher", "Stubs", "Unbatched", "add_item", "answer_of"]

#: The phases a batch carries, and the verb each one is sent as.
BATCHED_PHASES = {
    Phase.PREPARE: participant_pb2.BATCH_PREPARE,
    Phase.COMMIT: participant_pb2.BATCH_COMMIT,
    Phase.ONE_PHASE_COMMIT: participant_pb2.BATCH_COMMIT,
    Phase.ROLLBACK: participant_pb2.BATCH_ROLLBACK,
}

#: The per-branch method of each phase, named in reasons as the branch's own call would be.
_METHODS = {
    Phase.PREPARE: "Prepare",
    Phase.COMMIT: "Commit",
    Phase.ONE_PHASE_COMMIT: "Commit",
    Phase.ROLLBACK: "Rollback",
}


class Unbatched(Exception):
    """The endpoint does not serve batches (UNIMPLEMENTED): nothing was done; call per branch."""


class Stubs(Protocol):
    """The channel cache (``Peers``) as batches and streams use it."""

    def held_stub(self, endpoint: str) -> Any:
        """The endpoint's Participant stub, the channel held open until ``release``."""

    def release(self, endpoint: str) -> None:
        """The hold taken by ``held_stub`` is over: the channel may be closed again."""

    def failure_reason(self, endpoint: str, code: grpc.StatusCode, details: str, timeout: float) -> str:
        """The reason a call that failed with status ``code`` gives its branch (``XAER_RMFAIL``)."""

    @property
    def credentials(self) -> tuple[tuple[str, str], ...]:
        """Metadata every call to a participant carries (the coordinator's token, if it has one)."""


class Channels(Stubs, Protocol):
    """What the batcher needs of the channel cache: also a call on an RPC of its own."""

    async def single(
        self, endpoint: str, phase: Phase, xid: Xid, timeout: float, trace: tuple[tuple[str, str], ...]
    ) -> tuple[XaCode, str]:
        """The call on an RPC of its own; failures as ``XAER_RMFAIL``, never raises."""


@dataclass(slots=True, eq=False)
class _Call:
    """One branch's call waiting for its answer."""

    phase: Phase
    xid: Xid
    #: time.monotonic() by which it must be answered.
    deadline: float
    #: Trace-context pairs of the caller's span.
    trace: tuple[tuple[str, str], ...]
    #: The answer; None when the call is to go alone (its caller then makes it on its own RPC).
    future: asyncio.Future[tuple[XaCode, str] | None]

    def add_to(self, request: participant_pb2.BatchRequest, number: int, now: float) -> None:
        """Add the call to ``request`` as item ``number`` of a batch sent at ``now``."""
        add_item(request, number, self.phase, self.xid, self.deadline, self.trace, now)


def add_item(
    request: participant_pb2.BatchRequest,
    number: int,
    phase: Phase,
    xid: Xid,
    deadline: float,
    trace: tuple[tuple[str, str], ...],
    now: float,
) -> None:
    """Add one branch's call of ``phase`` to ``request`` as item ``number``, due at ``deadline``
    and sent at ``now`` (both time.monotonic()); filled in place, not built apart and copied in."""
    item = request.items.add(
        id=number,
        verb=BATCHED_PHASES[phase],
        one_phase=phase == Phase.ONE_PHASE_COMMIT,
        timeout_ms=max(1, math.ceil((deadline - now) * 1000)),
    )
    wire = item.xid
    wire.format_id, wire.gtrid, wire.bqual = xid.format_id, xid.gtrid, xid.bqual
    if trace:
        item.trace.update(trace)


def answer_of(result: participant_pb2.BatchResult, phase: Phase) -> tuple[XaCode, str]:
    """A batch result as the branch's (code, reason); a code outside the protocol is
    ``XAER_RMFAIL`` saying so, as the branch's own call would have been read."""
    try:
        return XaCode(result.code), result.reason
    except ValueError:
        what = f"participant answered {_METHODS[phase]} with unknown XaCode {result.code} in code"
        return XaCode.XAER_RMFAIL, what


class _Queue:
    """Calls to one endpoint not yet sent, and its batches not yet answered at all."""

    __slots__ = ("calls", "scheduled", "silent", "timer")

    def __init__(self) -> None:
        self.calls: list[_Call] = []
        #: A flush is due at the loop's next pass.
        self.scheduled = False
        #: Batches sent whose first reply has not come yet.
        self.silent = 0
        #: Flushes the queue when the calls in it waited ``linger`` seconds for a silent batch.
        self.timer: asyncio.TimerHandle | None = None


class Batcher:
    """Per-endpoint queues of branch calls, sent as ``Batch`` RPCs.

    Calls queued for an endpoint leave at the next pass of the event loop, all in one batch
    (``max_batch`` branches at most per batch), unless a batch already sent to the endpoint
    has not had its first reply yet: then they wait for that reply, for ``max_batch`` of them
    to be queued, or for ``linger`` seconds, whichever comes first. A lone call therefore goes
    at once, and under load the calls that arrive during a round trip share the next message.
    """

    def __init__(self, channels: Channels, *, max_batch: int = 64, linger: float = 0.005) -> None:
        self._channels = channels
        self._max_batch = max_batch
        self._linger = linger
        self._queues: dict[str, _Queue] = {}
        self._batches: set[asyncio.Task[None]] = set()

    async def call(
        self, endpoint: str, phase: Phase, xid: Xid, timeout: float, trace: tuple[tuple[str, str], ...] = ()
    ) -> tuple[XaCode, str]:
        """One branch's call of ``phase`` (one of ``BATCHED_PHASES``) within ``timeout`` seconds.

        Returns (code, reason), failures as ``XAER_RMFAIL``; raises ``Unbatched`` when the
        endpoint does not serve batches (the call was not made), and nothing else.
        """
        loop = asyncio.get_running_loop()
        call = _Call(phase, xid, time.monotonic() + timeout, trace, loop.create_future())
        queue = self._queues.get(endpoint)
        if queue is None:
            queue = self._queues[endpoint] = _Queue()
        queue.calls.append(call)
        self._kick(endpoint, queue)
        try:
            answer = await call.future
        except asyncio.CancelledError:
            if _told_to_go_alone(call.future):
                self._heard(endpoint, queue)  # cancelled before it could: the endpoint is not waited on
            raise
        if answer is not None:
            return answer
        # Alone in its turn: the per-branch RPC, sent from this task (the flush counted it as
        # a silent batch of the endpoint: what queues behind it waits for its answer).
        try:
            left = max(0.001, call.deadline - time.monotonic())
            return await self._channels.single(endpoint, call.phase, call.xid, left, call.trace)
        finally:
            self._heard(endpoint, queue)

    def _kick(self, endpoint: str, queue: _Queue) -> None:
        """Make sure the queued calls will leave: at the next pass, or after the silent batch."""
        if queue.scheduled or not queue.calls:
            return
        loop = asyncio.get_running_loop()
        if not queue.silent or len(queue.calls) >= self._max_batch:
            # Everything queued for the endpoint until the loop comes back to this goes along.
            queue.scheduled = True
            loop.call_soon(self._flush, endpoint, queue)
        elif queue.timer is None:
            queue.timer = loop.call_later(self._linger, self._flush, endpoint, queue)

    def _flush(self, endpoint: str, queue: _Queue) -> None:
        queue.scheduled = False
        if queue.timer is not None:
            queue.timer.cancel()
            queue.timer = None
        calls = [c for c in queue.calls if not c.future.done()]  # the cancelled ones stay home
        queue.calls = []
        loop = asyncio.get_running_loop()
        for start in range(0, len(calls), self._max_batch):
            queue.silent += 1
            chunk = calls[start : start + self._max_batch]
            if len(chunk) == 1:
                chunk[0].future.set_result(None)  # its caller sends it
                continue
            task = loop.create_task(self._send(endpoint, queue, chunk))
            self._batches.add(task)
            task.add_done_callback(self._batches.discard)
        self._forget_if_idle(endpoint, queue)

    def _heard(self, endpoint: str, queue: _Queue) -> None:
        """A batch to ``endpoint`` had its first reply (or ended): what waited for it may go."""
        queue.silent -= 1
        self._kick(endpoint, queue)
        self._forget_if_idle(endpoint, queue)

    def _forget_if_idle(self, endpoint: str, queue: _Queue) -> None:
        if not queue.silent and not queue.calls and self._queues.get(endpoint) is queue:
            del self._queues[endpoint]

    async def _send(self, endpoint: str, queue: _Queue, calls: list[_Call]) -> None:
        """One ``Batch`` RPC (two calls or more); every call in it is answered when it returns,
        whatever happened."""
        silent = True

        def heard() -> None:
            nonlocal silent
            if silent:
                silent = False
                self._heard(endpoint, queue)

        try:
            await self._batch(endpoint, calls, heard)
        except asyncio.CancelledError:
            for call in calls:
                call.future.cancel()
            raise
        finally:
            heard()

    async def _batch(self, endpoint: str, calls: list[_Call], heard: Callable[[], None]) -> None:
        """One ``Batch`` RPC carrying ``calls``; answers every one of them but for cancellation."""
        now = time.monotonic()
        latest = max(c.deadline for c in calls)
        timeout = max(0.001, latest - now)
        # The RPC's own deadline answers the latest calls; one timer, moved from deadline to
        # deadline, answers those due earlier (usually none is due before its answer comes).
        early = _Deadlines(self, endpoint, [c for c in calls if c.deadline < latest], now)
        metrics.PARTICIPANT_CALLS.labels(method="Batch").inc()
        metrics.BATCH_BRANCHES.observe(len(calls))
        request = participant_pb2.BatchRequest()
        for number, call in enumerate(calls):
            call.add_to(request, number, now)
        try:
            stub = self._channels.held_stub(endpoint)
            try:
                stream = stub.Batch(
                    request, timeout=timeout, wait_for_ready=True, metadata=self._channels.credentials or None
                )
                await self._read(stream, calls, heard)
            finally:
                self._channels.release(endpoint)
            _answer_rest(
                calls, (XaCode.XAER_RMFAIL, "participant ended the batch without answering this branch")
            )
        except grpc.aio.AioRpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                for call in calls:
                    if not call.future.done():
                        call.future.set_exception(Unbatched(endpoint))
            else:
                reason = self._channels.failure_reason(endpoint, err.code(), err.details() or "", timeout)
                _answer_rest(calls, (XaCode.XAER_RMFAIL, reason))
        except _Malformed as err:
            stream.cancel()
            _answer_rest(calls, (XaCode.XAER_RMFAIL, str(err)))
        except Exception as err:  # whatever else the channel raised: still these branches' failure
            _answer_rest(calls, (XaCode.XAER_RMFAIL, f"Batch call failed: {type(err).__name__}: {err}"))
        finally:
            early.cancel()

    @staticmethod
    async def _read(stream: Any, calls: list[_Call], heard: Callable[[], None]) -> None:
        """Answer each call as its result arrives; raises _Malformed for an invalid reply."""
        async for reply in stream:
            heard()
            if not isinstance(reply, participant_pb2.BatchReply):
                raise _Malformed("participant answered Batch with bytes that are not a valid BatchReply")
            for result in reply.results:
                if result.id >= len(calls):
                    raise _Malformed(f"participant answered Batch with a result for unknown item {result.id}")
                call = calls[result.id]
                if call.future.done():
                    continue  # past its own deadline already, or answered twice: the first answer stands
                call.future.set_result(answer_of(result, call.phase))

    def _expire(self, endpoint: str, call: _Call, timeout: float) -> None:
        """``call``'s own deadline (``timeout`` seconds after it was sent) passed unanswered."""
        if not call.future.done():
            deadline = grpc.StatusCode.DEADLINE_EXCEEDED
            reason = self._channels.failure_reason(endpoint, deadline, "Deadline Exceeded", timeout)
            call.future.set_result((XaCode.XAER_RMFAIL, reason))

    async def close(self) -> None:
        """Stop the batches out and drop the calls queued (their callers get CancelledError)."""
        for queue in self._queues.values():
            if queue.timer is not None:
                queue.timer.cancel()
            for call in queue.calls:
                call.future.cancel()
        self._queues.clear()
        for task in list(self._batches):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self._batches, return_exceptions=True)


class _Deadlines:
    """The calls of one batch due before the batch's own deadline, answered as each one's
    deadline passes, by one loop timer set to the earliest deadline still unanswered."""

    __slots__ = ("_batcher", "_calls", "_endpoint", "_loop", "_sent", "_timer")

    def __init__(self, batcher: Batcher, endpoint: str, calls: list[_Call], sent: float) -> None:
        self._batcher = batcher
        self._endpoint = endpoint
        #: Latest deadline first, so the next one due is at the end.
        self._calls = sorted(calls, key=lambda c: c.deadline, reverse=True)
        self._sent = sent
        self._loop = asyncio.get_running_loop()
        self._timer: asyncio.TimerHandle | None = None
        self._arm()

    def _arm(self) -> None:
        calls = self._calls
        while calls and calls[-1].future.done():
            calls.pop()
        if calls:
            # Loop time and time.monotonic() are the same clock on asyncio's default loops, but
            # the delay is taken relative to each so that no assumption is needed.
            delay = calls[-1].deadline - time.monotonic()
            self._timer = self._loop.call_at(self._loop.time() + delay, self._fire)
        else:
            self._timer = None

    def _fire(self) -> None:
        now = time.monotonic()
        calls = self._calls
        while calls and calls[-1].deadline <= now:
            call = calls.pop()
            self._batcher._expire(self._endpoint, call, max(0.001, call.deadline - self._sent))
        self._arm()

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._calls.clear()


class _Malformed(Exception):
    """The participant's reply cannot be read as answers to the batch."""


def _answer_rest(calls: list[_Call], answer: tuple[XaCode, str]) -> None:
    for call in calls:
        if not call.future.done():
            call.future.set_result(answer)


def _told_to_go_alone(future: asyncio.Future[tuple[XaCode, str] | None]) -> bool:
    return future.done() and not future.cancelled() and future.exception() is None and future.result() is None
