"""Prepare, commit and rollback calls to one participant endpoint over one long-lived stream.

A ``Batch`` RPC per message costs the coordinator the start of a gRPC call each time; a
``BatchStream`` is started once per endpoint (lazily, on the first call) and kept open while it
is used (``IDLE_CLOSE``), and each message on it costs a write. The calls queued for an
endpoint while the stream's previous write was under way, or in the same pass of the event
loop, go out together as one request message (at most ``max_batch`` branches to a message); as
with ``Batch`` RPCs, calls queued while a message sent has had no reply yet wait for one (at
most ``linger`` seconds, at most ``max_batch`` of them), so that under load a round trip's worth
shares a message. Each branch's item carries an id, unique on the stream, that its result
echoes, so results come back in any order and in any grouping.

Each branch keeps its own deadline and its own answer: one timer per stream, set to the earliest
deadline among the branches not yet answered, answers a branch whose deadline passes as its
own call's deadline would have been (``XAER_RMFAIL``); a late result for it is then dropped, as
is any result whose id is not waited for (never answered twice, never to another branch). A
stream that breaks (the participant restarted, the connection dropped, any status) answers every
branch it carries ``XAER_RMFAIL`` with that status, as a failed call would have been, and the next
call opens a new one. A participant that answers the stream UNIMPLEMENTED (built before it)
has done none of the branches: they raise ``Unstreamed`` and their callers use ``Batch`` calls.

The stream holds its endpoint's channel open (``Peers``) while it has branches out, so an idle
channel closed under it ends only an idle stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from dataclasses import dataclass

import grpc

from xatm.coordinator import metrics
from xatm.coordinator.engine.batching import Stubs, add_item, answer_of
from xatm.participant.api.v1 import participant_pb2
from xatm.participant.xa import Phase, XaCode, Xid

__all__ = ["IDLE_CLOSE", "Streams", "Unstreamed"]

log = logging.getLogger("xatm.peers")

#: Item ids wrap around at the width of BatchItem.id; far more than branches in flight at once.
_ID_SPACE = 1 << 32
_ENDED = "participant ended the stream without answering this branch"
#: Seconds a stream with nothing out or queued stays open: long enough for the pauses inside a
#: transaction (a decision's fsync between its prepares and its commits), short enough that a
#: participant stopping gracefully waits for no stream nobody uses.
IDLE_CLOSE = 0.25
#: Each request message on a stream counts as one RPC sent (the calls it replaces).
_MESSAGES_SENT = metrics.PARTICIPANT_CALLS.labels(method="BatchStream")


class Unstreamed(Exception):
    """The endpoint does not serve ``BatchStream`` (UNIMPLEMENTED): nothing was done."""


@dataclass(slots=True, eq=False)
class _Call:
    """One branch's call on a stream, from its caller's wait to its answer."""

    phase: Phase
    xid: Xid
    #: Seconds it was given, and the time.monotonic() by which it must be answered.
    timeout: float
    deadline: float
    trace: tuple[tuple[str, str], ...]
    future: asyncio.Future[tuple[XaCode, str]]
    #: Its item id once written on the stream; -1 while queued.
    id: int = -1
    #: The number of the message that carried it.
    message: int = -1
    #: The stream it was last given to (a call moves when its stream is reopened).
    stream: _Stream | None = None


class Streams:
    """One ``BatchStream`` per participant endpoint, opened on first use and kept open."""

    def __init__(self, channels: Stubs, *, max_batch: int = 64, linger: float = 0.005) -> None:
        self._channels = channels
        self._max_batch = max_batch
        self._linger = linger
        self._streams: dict[str, _Stream] = {}
        #: Endpoints that answered the stream UNIMPLEMENTED (forgotten with their channel).
        self._unserved: set[str] = set()

    def serves(self, endpoint: str) -> bool:
        """False once ``endpoint`` answered the stream UNIMPLEMENTED (until ``forget``)."""
        return endpoint not in self._unserved

    def forget(self, endpoint: str) -> None:
        """The endpoint's channel was closed: a participant met anew may have been upgraded."""
        self._unserved.discard(endpoint)

    async def call(
        self, endpoint: str, phase: Phase, xid: Xid, timeout: float, trace: tuple[tuple[str, str], ...] = ()
    ) -> tuple[XaCode, str]:
        """One branch's call of ``phase`` (prepare, commit, one-phase commit or rollback) within
        ``timeout`` seconds. Returns (code, reason), failures as ``XAER_RMFAIL``; raises
        ``Unstreamed`` when the endpoint does not serve the stream (the call was not made)."""
        loop = asyncio.get_running_loop()
        call = _Call(phase, xid, timeout, time.monotonic() + timeout, trace, loop.create_future())
        stream = self._open(endpoint)
        stream.submit(call)
        try:
            return await call.future
        except asyncio.CancelledError:
            (call.stream or stream).drop(call)
            raise

    def _open(self, endpoint: str) -> _Stream:
        stream = self._streams.get(endpoint)
        if stream is None or stream.ended():
            stream = self._streams[endpoint] = _Stream(self, endpoint)
        return stream

    def _ended(self, stream: _Stream, *, unserved: bool) -> None:
        if self._streams.get(stream.endpoint) is stream:
            del self._streams[stream.endpoint]
        if unserved:
            log.info("participant %s does not serve BatchStream: Batch calls instead", stream.endpoint)
            self._unserved.add(stream.endpoint)

    def _reopen(self, stream: _Stream, calls: list[_Call]) -> None:
        """``stream`` is on a channel closed since it opened: ``calls`` (not sent) go on a new one."""
        stream.close()
        fresh = self._open(stream.endpoint)
        for call in calls:
            fresh.submit(call)

    async def close(self) -> None:
        """End every stream; the calls waiting on them get CancelledError."""
        streams = list(self._streams.values())
        self._streams.clear()
        for stream in streams:
            stream.close()
        with contextlib.suppress(Exception):
            await asyncio.gather(*(task for s in streams for task in s.tasks), return_exceptions=True)


class _Stream:
    """One endpoint's open ``BatchStream``: a writer task sends what is queued, a reader task
    answers each branch as its result arrives."""

    def __init__(self, owner: Streams, endpoint: str) -> None:
        self.endpoint = endpoint
        self._owner = owner
        self._channels = owner._channels
        self._closed = False
        #: Calls not yet written, oldest first.
        self._queued: list[_Call] = []
        #: Calls written and not yet answered, by item id (in the order they were written).
        self._out: dict[int, _Call] = {}
        self._next_id = 0
        #: A reply came: an UNIMPLEMENTED from now on is not an old participant's answer.
        self._answered = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf
        self._wake: asyncio.Future[None] | None = None
        #: Messages sent, and those with no branch answered yet: while there is one, what is
        #: queued waits (for ``linger`` at most, for ``max_batch`` calls at most), to share the
        #: next message; ``_hurry`` once it waited ``linger``.
        self._messages = 0
        self._unheard: set[int] = set()
        self._hurry = False
        self._linger: asyncio.TimerHandle | None = None
        #: Ends the stream once nothing was out or queued on it for ``IDLE_CLOSE`` seconds.
        self._idle: asyncio.TimerHandle | None = None
        self._stub = self._channels.held_stub(endpoint)
        self._channels.release(endpoint)
        # No deadline: the stream lives as long as its channel; each branch has its own.
        self._rpc = self._stub.BatchStream(wait_for_ready=True, metadata=self._channels.credentials or None)
        loop = asyncio.get_running_loop()
        self.tasks = (loop.create_task(self._write()), loop.create_task(self._read()))

    def ended(self) -> bool:
        return self._closed or self._rpc.done()

    def submit(self, call: _Call) -> None:
        call.stream = self
        self._queued.append(call)
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        if call.deadline < self._timer_at:
            self._arm(call.deadline)
        if not self._unheard or len(self._queued) >= self._owner._max_batch:
            self._wake_writer()
        elif self._linger is None:
            self._linger = asyncio.get_running_loop().call_later(self._owner._linger, self._lingered)

    def _wake_writer(self) -> None:
        if self._wake is not None and not self._wake.done():
            self._wake.set_result(None)

    def _lingered(self) -> None:
        """The calls queued behind a silent message waited ``linger``: they go now."""
        self._linger = None
        self._hurry = True
        self._wake_writer()

    def _heard(self, call: _Call) -> None:
        """``call`` was answered (or given up on): its message is not silent any more."""
        unheard = self._unheard
        if call.message in unheard:
            unheard.discard(call.message)
            if not unheard and self._queued:
                self._wake_writer()

    def drop(self, call: _Call) -> None:
        """``call``'s caller stopped waiting (cancelled): its answer, if one comes, is dropped."""
        if call.id >= 0 and self._out.get(call.id) is call:
            self._settled(call.id)

    def _settled(self, ident: int) -> _Call:
        call = self._out.pop(ident)
        self._heard(call)
        if not self._out:
            self._channels.release(self.endpoint)
            if not self._queued and not self._closed:
                self._idle = asyncio.get_running_loop().call_later(IDLE_CLOSE, self._idled)
        return call

    def _idled(self) -> None:
        """Nothing went out on the stream for ``IDLE_CLOSE`` seconds: end it (nothing is lost:
        no branch is out or queued), so that a participant stopping is not held for its grace
        period by a stream nobody uses; the next call opens a new one."""
        self._idle = None
        if not self._out and not self._queued:
            self.close()

    # ------------------------------------------------------------ writing

    async def _write(self) -> None:
        try:
            # The participant's first word, before any write: a write racing its refusal would
            # fail, and gRPC would then report the call INTERNAL instead of UNIMPLEMENTED.
            await self._rpc.initial_metadata()
            if self._rpc.done():
                await self._over()
                return
            while True:
                queued = len(self._queued)
                if not queued or (self._unheard and not self._hurry and queued < self._owner._max_batch):
                    self._wake = asyncio.get_running_loop().create_future()
                    await self._wake
                    continue
                # Every call queued until the writer runs again goes along (the cancelled stay
                # home), ``max_batch`` to a message. The ones not written yet stay in the queue,
                # where the deadline timer and the stream's end still see them.
                due = queued
                while due > 0:
                    size = min(due, self._owner._max_batch)
                    chunk, self._queued = self._queued[:size], self._queued[size:]
                    due -= size
                    calls = [c for c in chunk if not c.future.done()]
                    if not calls:
                        continue
                    if not self._hold():
                        rest, self._queued = calls + self._queued, []
                        self._owner._reopen(self, rest)
                        return
                    await self._send(calls)
        except asyncio.CancelledError:
            self._cancelled()
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError):
            await self._over()  # the call is over: its status says why
        except Exception as err:  # whatever else the channel raised: still the stream's failure
            self._fail(f"BatchStream write failed: {type(err).__name__}: {err}")

    async def _over(self) -> None:
        """The call ended: end the stream with its status."""
        code = await self._rpc.code()
        if code == grpc.StatusCode.OK:
            self._fail(_ENDED)
        else:
            self._broke(code, await self._rpc.details() or "")

    def _hold(self) -> bool:
        """Hold the channel open for the calls about to go out (held already while some are out);
        False when the channel this stream runs on has been closed and replaced."""
        if self._out:
            return True
        if self._channels.held_stub(self.endpoint) is self._stub:
            return True
        self._channels.release(self.endpoint)
        return False

    async def _send(self, calls: list[_Call]) -> None:
        request = participant_pb2.BatchRequest()
        now = time.monotonic()
        out = self._out
        message = self._messages = self._messages + 1
        for call in calls:
            ident = self._next_id
            self._next_id = (ident + 1) % _ID_SPACE
            call.id, call.message = ident, message
            out[ident] = call  # before the write: its answer may come before the write returns
            add_item(request, ident, call.phase, call.xid, call.deadline, call.trace, now)
        _MESSAGES_SENT.inc()
        metrics.BATCH_BRANCHES.observe(len(calls))
        self._unheard.add(message)
        self._hurry = False
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        await self._rpc.write(request)

    # ------------------------------------------------------------ reading

    async def _read(self) -> None:
        try:
            while True:
                reply = await self._rpc.read()
                if reply is grpc.aio.EOF:
                    self._fail(_ENDED)
                    return
                self._answered = True
                if not isinstance(reply, participant_pb2.BatchReply):
                    self._fail("participant answered BatchStream with bytes that are not a valid BatchReply")
                    return
                out = self._out
                for result in reply.results:
                    if result.id not in out:
                        continue  # past its deadline, its caller gone, or answered already
                    call = self._settled(result.id)
                    if not call.future.done():
                        call.future.set_result(answer_of(result, call.phase))
        except asyncio.CancelledError:
            self._cancelled()
        except grpc.aio.AioRpcError as err:
            self._broke(err.code(), err.details() or "")
        except Exception as err:  # whatever else the channel raised: still the stream's failure
            self._fail(f"BatchStream read failed: {type(err).__name__}: {err}")

    # ------------------------------------------------------------ deadlines

    def _arm(self, when: float) -> None:
        """Set the stream's one timer to ``when`` (time.monotonic())."""
        if self._timer is not None:
            self._timer.cancel()
        loop = asyncio.get_running_loop()
        # Loop time and time.monotonic() are the same clock on asyncio's default loops; the
        # delay is taken relative to each so that no assumption is needed.
        self._timer = loop.call_at(loop.time() + (when - time.monotonic()), self._expire)
        self._timer_at = when

    def _expire(self) -> None:
        """Answer every call whose deadline passed; set the timer to the next deadline."""
        self._timer, self._timer_at = None, math.inf
        now = time.monotonic()
        due: list[_Call] = []
        following = math.inf
        for call in [*self._out.values(), *self._queued]:
            if call.future.done():
                continue
            if call.deadline <= now:
                due.append(call)
            elif call.deadline < following:
                following = call.deadline
        for call in due:
            if call.id >= 0:
                self._settled(call.id)
            else:
                self._queued.remove(call)
            code = grpc.StatusCode.DEADLINE_EXCEEDED
            reason = self._channels.failure_reason(self.endpoint, code, "Deadline Exceeded", call.timeout)
            call.future.set_result((XaCode.XAER_RMFAIL, reason))
        if following < math.inf and not self._closed:
            self._arm(following)

    # ------------------------------------------------------------ ending

    def _cancelled(self) -> None:
        """A CancelledError reached a task of the stream: the task itself was cancelled (the
        stream is closing, or the loop is), or the call was, with its channel."""
        task = asyncio.current_task()
        if self._closed or (task is not None and task.cancelling()):
            self.close()
            raise asyncio.CancelledError
        self._fail("CANCELLED: the stream to the participant was cancelled (its channel closed)")

    def _broke(self, code: grpc.StatusCode, details: str) -> None:
        if code == grpc.StatusCode.UNIMPLEMENTED and not self._answered:
            # An older participant: it has done none of these calls, which go by Batch instead.
            calls = self._end(unserved=True)
            for call in calls:
                if not call.future.done():
                    call.future.set_exception(Unstreamed(self.endpoint))
            return
        self._fail(self._channels.failure_reason(self.endpoint, code, details, 0.0))

    def _fail(self, reason: str) -> None:
        """The stream is over: every call it carries (or holds queued) is answered ``XAER_RMFAIL``."""
        for call in self._end(unserved=False):
            if not call.future.done():
                call.future.set_result((XaCode.XAER_RMFAIL, reason))

    def _end(self, *, unserved: bool) -> list[_Call]:
        """Stop the stream; returns the calls it carried or held queued."""
        if self._closed:
            return []
        self._closed = True
        self._owner._ended(self, unserved=unserved)
        calls = [*self._out.values(), *self._queued]
        if self._out:
            self._channels.release(self.endpoint)
        self._out, self._queued = {}, []
        for timer in (self._timer, self._linger, self._idle):
            if timer is not None:
                timer.cancel()
        self._timer = self._linger = self._idle = None
        self._rpc.cancel()
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()
        return calls

    def close(self) -> None:
        """End the stream; the calls on it get CancelledError."""
        for call in self._end(unserved=False):
            call.future.cancel()
