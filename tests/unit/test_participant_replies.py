"""What a participant answers is bounded before the coordinator keeps it: a reason of a megabyte
becomes ``REASON_MAX`` characters, whether it comes in a valid reply or in a failed call's details."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest

from tests.fake_peer import FakePeer
from xatm.coordinator.engine.peers import REASON_MAX, Peers
from xatm.participant.api.v1 import participant_pb2
from xatm.participant.xa import Phase, XaCode, Xid

HUGE = "r" * (1 << 20)


@pytest.fixture
def participant() -> Iterator[FakePeer]:
    fake = FakePeer()
    yield fake
    fake.stop()


def _prepare(endpoint: str) -> tuple[XaCode, str]:
    async def run() -> tuple[XaCode, str]:
        peers = Peers(max_message_bytes=4 << 20)
        try:
            xid = Xid("n1.0000000000000000000000000001", "b1", 0x7861746D)
            return await peers.call(endpoint, Phase.PREPARE, xid, timeout=10)
        finally:
            await peers.close()

    return asyncio.run(run())


def test_a_reply_reason_is_cut_to_reason_max(participant: FakePeer) -> None:
    reply = participant_pb2.XaReply(code=XaCode.XA_RBROLLBACK, reason=HUGE)
    participant.answers["Prepare"] = lambda _, __: reply.SerializeToString()
    code, reason = _prepare(participant.endpoint)
    assert code == XaCode.XA_RBROLLBACK and reason == HUGE[:REASON_MAX]


def test_a_failed_calls_details_are_cut_to_reason_max(participant: FakePeer) -> None:
    def refuse(_: bytes, context: grpc.ServicerContext) -> bytes:
        context.abort(grpc.StatusCode.INTERNAL, HUGE[:8000])
        raise AssertionError("abort raises")

    participant.answers["Prepare"] = refuse
    code, reason = _prepare(participant.endpoint)
    assert code == XaCode.XAER_RMFAIL and len(reason) == REASON_MAX
