"""Forwarding: any replica serves any client.

A call about a transaction this replica does not hold goes where the transaction is: to the
replica that owns it when that one is alive (the same gRPC method, with the caller's
credential and trace id), or it is taken over here first when its owner's lease expired. A
forwarded call carries ``FORWARDED_BY`` and is never forwarded again, so two replicas that
disagree for a moment (a takeover under way) cannot bounce a call between them.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Any

import grpc
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass

from xatm.coordinator.cluster.directory import Directory, Replica
from xatm.coordinator.cluster.metrics import FORWARD_DURATION, FORWARDED
from xatm.coordinator.cluster.takeover import Takeover
from xatm.coordinator.engine.core import Engine
from xatm.coordinator.txlog.etcd.client import is_outage
from xatm.coordinator.txlog.interface import LogStopped
from xatm.participant.api.v1 import admin_pb2, coordinator_pb2
from xatm.participant.errors import Status, UnavailableError, XatmError
from xatm.participant.runtime.grpc_status import from_rpc_error
from xatm.participant.xa import channel_options, node_of, validate_gtrid

__all__ = ["FORWARDED_BY", "PASS_ON", "Forwarder", "pass_on"]

log = logging.getLogger("xatm.coordinator.cluster")

#: Metadata naming the replica that forwarded a call.
FORWARDED_BY = "xatm-forwarded-by"
#: What a forwarded call keeps of the call it forwards: who asks, and the trace that ties the
#: owner's audit record to the operator's request.
_PASSED = ("authorization", "x-trace-id", FORWARDED_BY)
#: The passed-on metadata of the call being served, set where callers are authenticated.
PASS_ON: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("xatm_pass_on", default=())

_SERVICES = {
    "Coordinator": coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"],
    "Admin": admin_pb2.DESCRIPTOR.services_by_name["Admin"],
}


def pass_on(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """The headers (gRPC metadata or HTTP headers, lower-case names) a forwarded call keeps."""
    return tuple((name, headers[name]) for name in _PASSED if headers.get(name))


def forwarded() -> bool:
    """True while serving a call another replica forwarded here."""
    return any(name == FORWARDED_BY for name, _ in PASS_ON.get())


class Forwarder:
    """Routes calls about transactions of other replicas for ``engine``'s replica.

    ``takeover`` claims a transaction whose owner died; ``credentials`` are the channel
    credentials to reach the other replicas (None: plaintext); ``timeout`` (s) bounds a
    forwarded call.
    """

    def __init__(
        self,
        engine: Engine,
        directory: Directory,
        takeover: Takeover,
        *,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = 30.0,
    ):
        self.engine = engine
        self.directory = directory
        self.takeover = takeover
        self.credentials = credentials
        self.timeout = timeout
        self._channels: dict[str, grpc.aio.Channel] = {}

    async def route(self, gtrid: str) -> Replica | None:
        """Where a call about ``gtrid`` must be served: None for here (held here, just taken
        over from a dead owner, or held by no replica at all: then this replica answers as for
        an unknown transaction), else the live replica that owns it.

        Raises UnavailableError while etcd cannot answer or the owner published no address.
        """
        if self.engine.known(gtrid) is not None or forwarded():
            return None
        try:
            validate_gtrid(gtrid)
        except XatmError:
            return None  # refused here, as malformed
        try:
            owner = await self.directory.owner(gtrid)
            if owner is None:
                # Not in etcd (yet): the replica that began it may hold it still unwritten.
                begun_by = node_of(gtrid)
                owner = await self.directory.replica(begun_by) if begun_by != self.directory.me else None
                if owner is None or not owner.live:
                    return None
            if owner.name == self.directory.me:
                return None
            if not owner.live:
                await self.takeover.claim(owner.name, gtrid)
                return None
        except LogStopped:
            raise
        except Exception as err:
            if not is_outage(err):
                raise
            raise UnavailableError(
                f"etcd cannot answer, so the replica owning {gtrid} is not known: retry later"
            ) from None
        if not owner.grpc:
            raise UnavailableError(f"replica {owner.name} owns {gtrid} but has not said where it serves yet")
        return owner

    async def call(
        self, replica: Replica, service: str, method: str, request: Message, *, timeout: float | None = None
    ) -> Any:
        """``service``/``method`` ("Coordinator"/"Commit") with ``request`` at ``replica``; its
        reply, within ``timeout`` seconds (the forwarder's own when None). Raises the owner's
        error as the hierarchy's, UnavailableError when it does not answer (it may have just
        died: another replica takes over within its lease TTL)."""
        described = _SERVICES[service].methods_by_name[method]
        reply_type = GetMessageClass(described.output_type)
        stub: Any = self._channel(replica.grpc).unary_unary(
            f"/{_SERVICES[service].full_name}/{method}",
            request_serializer=lambda message: message.SerializeToString(),
            response_deserializer=reply_type.FromString,
        )
        passed = [(k, v) for k, v in PASS_ON.get() if k != FORWARDED_BY]
        metadata = (*passed, (FORWARDED_BY, self.directory.me))
        started = time.monotonic()
        try:
            reply = await stub(request, metadata=metadata, timeout=timeout or self.timeout)
        except grpc.aio.AioRpcError as err:
            error = from_rpc_error(err)
            FORWARDED.labels(method=method, result=error.status.name.lower()).inc()
            if error.status in (Status.UNAVAILABLE, Status.DEADLINE_EXCEEDED):
                raise UnavailableError(
                    f"replica {replica.name} at {replica.grpc}, which owns the transaction, does not "
                    f"answer ({error.message}); another replica takes it over once its lease expires"
                ) from None
            raise error from None
        finally:
            FORWARD_DURATION.observe(time.monotonic() - started)
        FORWARDED.labels(method=method, result="ok").inc()
        return reply

    def _channel(self, address: str) -> grpc.aio.Channel:
        channel = self._channels.get(address)
        if channel is None:
            options = channel_options(self.timeout)
            if self.credentials is not None:
                channel = grpc.aio.secure_channel(address, self.credentials, options=options)
            else:
                channel = grpc.aio.insecure_channel(address, options=options)
            self._channels[address] = channel
        return channel

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
