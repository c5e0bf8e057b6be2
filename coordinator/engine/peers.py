"""Calls from the coordinator to participants, with every failure read as an XA code.

A transport failure is XAER_RMFAIL with the gRPC status in the reason, and so is anything
else that is not a valid answer — an exception the channel raised, bytes that do not decode
as the reply message, an XA code outside the protocol — with a reason saying what came back.
The state machine therefore only ever sees XA codes, and no call task dies with an exception.
One channel per endpoint, cached and bounded: at most ``max_channels`` are kept, and one unused
for ``idle_after`` seconds is closed (the least recently used first, never one with a call out);
messages either way are bounded by ``max_message_bytes``.

Prepare, commit and rollback go over one long-lived ``BatchStream`` per endpoint (``Streams``):
the calls to one endpoint queued together share one message on it, each with its own deadline
and answer. An endpoint that answers the stream UNIMPLEMENTED (a participant built before it)
gets ``Batch`` RPCs instead (``Batcher``), and one that answers ``Batch`` UNIMPLEMENTED too gets
one call per branch; each is remembered for as long as the endpoint's channel is kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any

import grpc
from google.protobuf.message import Message

from xatm.coordinator import metrics
from xatm.coordinator.engine.batching import BATCHED_PHASES, Batcher, Unbatched
from xatm.coordinator.engine.streams import Streams, Unstreamed
from xatm.participant.api.v1 import participant_pb2, participant_pb2_grpc, xa_pb2
from xatm.participant.errors import XatmError
from xatm.participant.runtime import tracing
from xatm.participant.runtime.replies import MalformedReply, checked_reply
from xatm.participant.xa import Phase, XaCode, Xid, channel_options, validate_bqual, validate_gtrid

__all__ = ["REASON_MAX", "PeerError", "Peers"]

#: Characters of a participant's reason kept (on the branch, in the log and the WAL).
REASON_MAX = 500

log = logging.getLogger("xatm.peers")

_SERVICE = participant_pb2.DESCRIPTOR.services_by_name["Participant"]

#: Keepalive pings while a call is out, as the participant's stream always is: a connection that
#: died without a word (a host gone, a dropped route) ends the stream, and fails what it carries,
#: within about 30 s, rather than leaving every branch sent on it to its own deadline until TCP
#: gives up. xatm's servers take pings however often they come (SERVER_OPTIONS); toward any
#: other server, gRPC sends at most two pings while no data flows, as its default policy allows.
_KEEPALIVE = (
    ("grpc.keepalive_time_ms", 20_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 0),
)


class PeerError(XatmError):
    """A participant call that produced no valid answer.

    ``reason`` says what happened (gRPC status and details, the exception, or what came back);
    ``transport`` is True when the call failed in gRPC (unreachable, deadline, a status other
    than OK) and False when the participant answered something that is not a valid reply.
    """

    def __init__(self, reason: str, *, transport: bool):
        super().__init__(reason)
        self.reason = reason
        self.transport = transport


class Peers:
    """The coordinator's gRPC client to every participant endpoint (host:port)."""

    def __init__(
        self,
        *,
        max_message_bytes: int = 4 * 1024 * 1024,
        credentials: grpc.ChannelCredentials | None = None,
        max_channels: int = 256,
        idle_after: float = 300.0,
        max_batch: int = 64,
        call_timeout: float | None = None,
        token: str | None = None,
    ):
        """``max_batch``: branches carried in one ``Batch`` RPC or stream message at most (1 sends
        every branch on its own call, as to a participant without batches). ``call_timeout``: the
        deadline of most calls, in seconds, which bounds the channels' reconnect backoff
        (``channel_options``). ``token``: presented to participants as a bearer token (a
        participant given the same ``coordinator_token`` refuses calls without it)."""
        self._credentials_metadata: tuple[tuple[str, str], ...] = (
            (("authorization", f"Bearer {token}"),) if token else ()
        )
        self._options = [
            *channel_options(call_timeout),
            *_KEEPALIVE,
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
        ]
        self._credentials = credentials
        self._max_channels = max_channels
        self._idle_after = idle_after
        #: endpoint -> (channel, stub, time.monotonic() of its last use), least recently used first.
        self._channels: OrderedDict[str, tuple[grpc.aio.Channel, participant_pb2_grpc.ParticipantStub, float]]
        self._channels = OrderedDict()
        self._calls_out: dict[str, int] = {}
        self._closing: set[asyncio.Task[None]] = set()
        #: Endpoints that do not serve batches (forgotten with their channel).
        self._unbatched: set[str] = set()
        self._batcher = Batcher(self, max_batch=max_batch) if max_batch > 1 else None
        self._streams = Streams(self, max_batch=max_batch) if max_batch > 1 else None

    @property
    def credentials(self) -> tuple[tuple[str, str], ...]:
        """Metadata every call to a participant carries: the bearer token, if one was given."""
        return self._credentials_metadata

    @property
    def channel_count(self) -> int:
        """Channels open now (at most ``max_channels``)."""
        return len(self._channels)

    def _stub(self, endpoint: str) -> participant_pb2_grpc.ParticipantStub:
        now = time.monotonic()
        entry = self._channels.pop(endpoint, None)
        if entry is None:
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(endpoint, self._credentials, options=self._options)
            else:
                channel = grpc.aio.insecure_channel(endpoint, options=self._options)
            entry = (channel, participant_pb2_grpc.ParticipantStub(channel), now)
        self._channels[endpoint] = (entry[0], entry[1], now)
        self._evict(now)
        return entry[1]

    def _evict(self, now: float) -> None:
        """Close idle channels and, past ``max_channels``, the least recently used ones."""
        for endpoint, (channel, _, used) in list(self._channels.items()):
            over = len(self._channels) > self._max_channels
            if not over and now - used < self._idle_after:
                break  # the rest were used more recently still
            if self._calls_out.get(endpoint):
                continue  # a call is out on it: closing would cancel that call
            del self._channels[endpoint]
            self._unbatched.discard(endpoint)  # a participant met anew may have been upgraded
            if self._streams is not None:
                self._streams.forget(endpoint)
            task = asyncio.get_running_loop().create_task(channel.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)
        metrics.PARTICIPANT_CHANNELS.set(len(self._channels))

    def _unconnected(self, endpoint: str) -> bool:
        entry = self._channels.get(endpoint)
        return entry is not None and entry[0].get_state() != grpc.ChannelConnectivity.READY

    def _hold(self, endpoint: str) -> None:
        self._calls_out[endpoint] = self._calls_out.get(endpoint, 0) + 1

    def held_stub(self, endpoint: str) -> participant_pb2_grpc.ParticipantStub:
        """The endpoint's stub; its channel stays open until ``release(endpoint)``."""
        stub = self._stub(endpoint)
        self._hold(endpoint)
        return stub

    def release(self, endpoint: str) -> None:
        """A call to ``endpoint`` is over: its channel may be closed again, once unused for
        ``idle_after`` from now (a stream's hold may have lasted far longer than one call)."""
        left = self._calls_out.pop(endpoint) - 1
        if left:
            self._calls_out[endpoint] = left
        entry = self._channels.get(endpoint)
        if entry is not None:
            self._channels[endpoint] = (entry[0], entry[1], time.monotonic())
            self._channels.move_to_end(endpoint)

    def failure_reason(self, endpoint: str, code: grpc.StatusCode, details: str, timeout: float) -> str:
        """The reason a call to ``endpoint`` that ended with ``code`` gives (``XAER_RMFAIL``)."""
        if code == grpc.StatusCode.DEADLINE_EXCEEDED and self._unconnected(endpoint):
            # Waiting for a connection that never came: say so, not just "deadline".
            return f"UNAVAILABLE: no connection to {endpoint} within {timeout:g} s (deadline exceeded)"
        return f"{code.name}: {details}".strip()

    async def _invoke(
        self,
        endpoint: str,
        method: str,
        request: Message,
        timeout: float,
        *,
        wait_for_ready: bool = True,
        metadata: tuple[tuple[str, str], ...] = (),
    ) -> Any:
        """One unary call; returns a valid reply or raises PeerError, nothing else.

        ``wait_for_ready``: a channel still in its reconnect backoff after the peer restarted
        waits for the connection within ``timeout`` instead of failing at once with the last
        connection error (gRPC's default), so a participant back at its address takes part in
        the very next prepare.
        """
        self._hold(endpoint)
        metrics.PARTICIPANT_CALLS.labels(method=method).inc()
        try:
            call = getattr(self._stub(endpoint), method)
            sent = (*self._credentials_metadata, *metadata)
            reply = await call(request, timeout=timeout, wait_for_ready=wait_for_ready, metadata=sent or None)
        except grpc.aio.AioRpcError as err:
            reason = self.failure_reason(endpoint, err.code(), err.details() or "", timeout)
            raise PeerError(reason, transport=True) from None
        except Exception as err:  # whatever else the channel or the stub raised: still this branch's failure
            raise PeerError(f"{method} call failed: {type(err).__name__}: {err}", transport=True) from None
        finally:
            self.release(endpoint)
        try:
            return checked_reply(reply, _SERVICE, method, "participant")
        except MalformedReply as err:
            raise PeerError(err.message, transport=False) from None

    async def call(
        self, endpoint: str, phase: Phase, xid: Xid, *, timeout: float, savepoint_id: str = ""
    ) -> tuple[XaCode, str]:
        """Send one XA verb; returns (code, reason) and never raises (but for cancellation).

        Anything that is not a valid answer is ``XAER_RMFAIL`` with the reason saying what came back.
        """
        started = time.monotonic()
        with tracing.span(f"xatm.coordinator.{phase}", gtrid=xid.gtrid, bqual=xid.bqual) as span:
            trace = tracing.inject()
            if self._streams is not None and phase in BATCHED_PHASES and self._streams.serves(endpoint):
                try:
                    code, reason = await self._streams.call(endpoint, phase, xid, timeout, trace)
                except Unstreamed:
                    # Nothing was done: the call goes on by Batch within what is left of its time.
                    timeout = max(0.001, timeout - (time.monotonic() - started))
                else:
                    span.note(xa_code=code.name)
                    return code, reason[:REASON_MAX]
            if self._batcher is not None and phase in BATCHED_PHASES and endpoint not in self._unbatched:
                try:
                    code, reason = await self._batcher.call(endpoint, phase, xid, timeout, trace)
                except Unbatched:
                    if endpoint not in self._unbatched:
                        log.info("participant %s does not serve batches: one call per branch", endpoint)
                        self._unbatched.add(endpoint)
                else:
                    span.note(xa_code=code.name)
                    # A participant's reason is kept on the branch, logged and written to the log: bounded.
                    return code, reason[:REASON_MAX]
            code, reason = await self.single(endpoint, phase, xid, timeout, trace, savepoint_id)
            span.note(xa_code=code.name)
        return code, reason[:REASON_MAX]

    async def single(
        self,
        endpoint: str,
        phase: Phase,
        xid: Xid,
        timeout: float,
        trace: tuple[tuple[str, str], ...] = (),
        savepoint_id: str = "",
    ) -> tuple[XaCode, str]:
        """One XA verb on an RPC of its own (``trace``: its trace-context metadata); returns
        (code, reason), anything that is not a valid answer as ``XAER_RMFAIL``."""
        method, request = _request(phase, xid, savepoint_id)
        try:
            reply = await self._invoke(endpoint, method, request, timeout, metadata=trace)
        except PeerError as err:
            return XaCode.XAER_RMFAIL, err.reason
        return XaCode(reply.code), reply.reason

    async def recover(self, endpoint: str, format_id: int, *, timeout: float) -> tuple[list[Xid], str]:
        """The participant's prepared XIDs and its rm_id; raises PeerError and nothing else.

        An XID of ``format_id`` whose gtrid or bqual is malformed is left out and logged: no
        outcome can be looked up for it, and it must not hide the well-formed ones.
        """
        request = participant_pb2.RecoverRequest(format_id=format_id)
        reply = await self._invoke(
            endpoint, "Recover", request, timeout, wait_for_ready=False, metadata=tracing.inject()
        )
        xids = []
        for wire in reply.xids:
            if wire.format_id == format_id:
                try:
                    validate_gtrid(wire.gtrid)
                    validate_bqual(wire.bqual)
                except XatmError as err:
                    log.warning("recover at %s listed a malformed XID, left out: %s", endpoint, err.message)
                    continue
            xids.append(Xid(wire.gtrid, wire.bqual, wire.format_id))
        return xids, reply.rm_id

    async def close(self) -> None:
        if self._streams is not None:
            await self._streams.close()
        if self._batcher is not None:
            await self._batcher.close()
        for channel, _, _ in self._channels.values():
            await channel.close()
        self._channels.clear()
        await asyncio.gather(*self._closing, return_exceptions=True)
        metrics.PARTICIPANT_CHANNELS.set(0)


def _request(phase: Phase, xid: Xid, savepoint_id: str) -> tuple[str, Message]:
    """The Participant method for ``phase`` and its request."""
    request: Message
    wire = xa_pb2.Xid(format_id=xid.format_id, gtrid=xid.gtrid, bqual=xid.bqual)
    if phase == Phase.PREPARE:
        method, request = "Prepare", participant_pb2.BranchRequest(xid=wire)
    elif phase in (Phase.COMMIT, Phase.ONE_PHASE_COMMIT):
        method = "Commit"
        request = participant_pb2.CommitBranchRequest(xid=wire, one_phase=phase == Phase.ONE_PHASE_COMMIT)
    elif phase == Phase.ROLLBACK:
        method, request = "Rollback", participant_pb2.BranchRequest(xid=wire)
    elif phase == Phase.FORGET:
        method, request = "Forget", participant_pb2.BranchRequest(xid=wire)
    else:
        method = "Savepoint" if phase == Phase.SAVEPOINT else "RollbackToSavepoint"
        request = participant_pb2.SavepointBranchRequest(xid=wire, savepoint_id=savepoint_id)
    return method, request
