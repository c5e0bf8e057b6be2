"""Calls from the coordinator to participants, with transport failures read as XA codes.

Per DESIGN §4 a transport failure is XAER_RMFAIL with the gRPC status in the reason, so the
state machine only ever sees XA codes. Channels are cached per endpoint and bounded in size.
"""

from __future__ import annotations

import grpc

from participant._proto import participant_pb2, participant_pb2_grpc, xa_pb2
from participant.xa import RECONNECT_OPTIONS, Phase, XaCode, Xid

__all__ = ["Peers"]


class Peers:
    def __init__(
        self, *, max_message_bytes: int = 4 * 1024 * 1024, credentials: grpc.ChannelCredentials | None = None
    ):
        self._options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            *RECONNECT_OPTIONS,
        ]
        self._credentials = credentials
        self._stubs: dict[str, participant_pb2_grpc.ParticipantStub] = {}
        self._channels: list[grpc.aio.Channel] = []

    def _stub(self, endpoint: str) -> participant_pb2_grpc.ParticipantStub:
        stub = self._stubs.get(endpoint)
        if stub is None:
            if self._credentials is not None:
                channel = grpc.aio.secure_channel(endpoint, self._credentials, options=self._options)
            else:
                channel = grpc.aio.insecure_channel(endpoint, options=self._options)
            self._channels.append(channel)
            stub = self._stubs[endpoint] = participant_pb2_grpc.ParticipantStub(channel)
        return stub

    async def call(
        self, endpoint: str, phase: Phase, xid: Xid, *, timeout: float, savepoint_id: str = ""
    ) -> tuple[XaCode, str]:
        """Send one XA verb; never raises for transport problems."""
        stub = self._stub(endpoint)
        wire = xa_pb2.Xid(format_id=xid.format_id, gtrid=xid.gtrid, bqual=xid.bqual)
        try:
            if phase == Phase.PREPARE:
                reply = await stub.Prepare(participant_pb2.BranchRequest(xid=wire), timeout=timeout)
            elif phase in (Phase.COMMIT, Phase.ONE_PHASE_COMMIT):
                request = participant_pb2.CommitBranchRequest(
                    xid=wire, one_phase=phase == Phase.ONE_PHASE_COMMIT
                )
                reply = await stub.Commit(request, timeout=timeout)
            elif phase == Phase.ROLLBACK:
                reply = await stub.Rollback(participant_pb2.BranchRequest(xid=wire), timeout=timeout)
            elif phase == Phase.FORGET:
                reply = await stub.Forget(participant_pb2.BranchRequest(xid=wire), timeout=timeout)
            elif phase == Phase.SAVEPOINT:
                request = participant_pb2.SavepointBranchRequest(xid=wire, savepoint_id=savepoint_id)
                reply = await stub.Savepoint(request, timeout=timeout)
            else:
                request = participant_pb2.SavepointBranchRequest(xid=wire, savepoint_id=savepoint_id)
                reply = await stub.RollbackToSavepoint(request, timeout=timeout)
        except grpc.aio.AioRpcError as err:
            return XaCode.XAER_RMFAIL, f"{err.code().name}: {err.details() or ''}".strip()
        try:
            return XaCode(reply.code), reply.reason
        except ValueError:
            return XaCode.XAER_PROTO, f"participant answered unknown XA code {reply.code}"

    async def recover(self, endpoint: str, format_id: int, *, timeout: float) -> tuple[list[Xid], str]:
        """The participant's prepared XIDs of ``format_id``; raises grpc.aio.AioRpcError."""
        reply = await self._stub(endpoint).Recover(
            participant_pb2.RecoverRequest(format_id=format_id), timeout=timeout
        )
        return [Xid(x.gtrid, x.bqual, x.format_id) for x in reply.xids], reply.rm_id

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()
        self._channels.clear()
        self._stubs.clear()
