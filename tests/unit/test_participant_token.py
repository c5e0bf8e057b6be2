"""Every way the coordinator calls a participant carries its token, on threaded and grpc.aio
participant servers: a stream message, a ``Batch`` call (participants without the stream) and a
call of its own. A coordinator without the token is refused, and its branches get XAER_RMFAIL
with the participant's reason, as for any call that fails."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from tests.unit.test_batch_calls import AsyncBatchOnly, BatchOnly
from xatm.coordinator.engine.peers import Peers
from xatm.participant.api.v1 import participant_pb2_grpc
from xatm.participant.servicer import AsyncParticipantServicer, ParticipantServicer
from xatm.participant.stores.memory import MemoryRM
from xatm.participant.xa import Phase, XaCode, Xid, new_gtrid

TOKEN = "only-the-coordinator"


@contextlib.asynccontextmanager
async def _participant(kind: str, streams: bool) -> AsyncIterator[str]:
    rm = MemoryRM("guarded")
    if kind == "aio":
        aio_server = grpc.aio.server()
        aio_kind = AsyncParticipantServicer if streams else AsyncBatchOnly
        participant_pb2_grpc.add_ParticipantServicer_to_server(aio_kind(rm, caller_token=TOKEN), aio_server)
        port = aio_server.add_insecure_port("127.0.0.1:0")
        await aio_server.start()
        try:
            yield f"127.0.0.1:{port}"
        finally:
            await aio_server.stop(None)
    else:
        server = grpc.server(ThreadPoolExecutor(max_workers=8))
        threaded_kind = ParticipantServicer if streams else BatchOnly
        participant_pb2_grpc.add_ParticipantServicer_to_server(threaded_kind(rm, caller_token=TOKEN), server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            yield f"127.0.0.1:{port}"
        finally:
            server.stop(None)


@pytest.mark.parametrize("kind", ["threaded", "aio"])
@pytest.mark.parametrize(
    ("transport", "max_batch", "streams"),
    [("stream", 64, True), ("batch", 64, False), ("own call", 1, True)],
)
def test_the_coordinators_calls_carry_its_token(
    kind: str, transport: str, max_batch: int, streams: bool
) -> None:
    tries = ((TOKEN, XaCode.XA_OK), (None, XaCode.XAER_RMFAIL), ("other", XaCode.XAER_RMFAIL))

    async def run() -> None:
        async with _participant(kind, streams) as endpoint:
            for token, expected in tries:
                peers = Peers(max_batch=max_batch, token=token)
                try:
                    xid = Xid(new_gtrid("t1"), "b1")
                    code, reason = await peers.call(endpoint, Phase.PREPARE, xid, timeout=5)
                finally:
                    await peers.close()
                assert code == expected, (transport, token, code, reason)
                if expected == XaCode.XAER_RMFAIL:
                    assert reason.startswith("UNAUTHENTICATED") and "its coordinator only" in reason, reason

    asyncio.run(run())
