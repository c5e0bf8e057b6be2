"""Every way the coordinator calls a participant carries its token, on threaded and grpc.aio
participant servers: a stream message, a ``Batch`` call (participants without the stream) and a
call of its own. A coordinator without the token is refused, and its branches get XAER_RMFAIL
with the participant's reason, as for any call that fails."""

from __future__ import annotations

import asyncio

import pytest

from tests.unit.test_batch_calls import serving
from xatm.coordinator.engine.peers import Peers
from xatm.participant.stores.memory import MemoryRM
from xatm.participant.xa import Phase, XaCode, Xid, new_gtrid

TOKEN = "only-the-coordinator"


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
        transport_kind = "stream" if streams else "batch"
        async with serving(MemoryRM("guarded"), kind, transport_kind, caller_token=TOKEN) as endpoint:
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
