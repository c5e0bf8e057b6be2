"""A coordinator that answers something other than a valid reply: the initiator and the
participant stub turn a bad answer into one clear error.

The fake coordinator (tests/fake_peer.py) serves the Coordinator service's method paths with raw
bytes chosen by the test. A fake participant against a real coordinator is in
tests/system/test_peers_faults.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message

from tests.fake_peer import GARBAGE, Answer, FakePeer, garbage
from xatm.participant.api.v1 import coordinator_pb2, xa_pb2
from xatm.participant.client.context import TxContext, use
from xatm.participant.client.initiator import (
    AsyncTransactionManager,
    TransactionManager,
)
from xatm.participant.errors import Status
from xatm.participant.runtime.replies import MalformedReply
from xatm.participant.stores.sqlite import SqliteRM
from xatm.participant.stub import EnlistError, ParticipantStub
from xatm.participant.xa import XaCode, Xid


def test_fake_participant_answers_raw_bytes() -> None:
    """The fake itself: what it answers is exactly the bytes chosen (so the tests that use it test xatm)."""
    fake = FakePeer()
    fake.answers["Prepare"] = garbage
    try:
        with grpc.insecure_channel(fake.endpoint) as channel:
            call = channel.unary_unary("/xatm.v1.Participant/Prepare")
            assert call(b"", timeout=5) == GARBAGE
    finally:
        fake.stop()


# ---------------------------------------------------------------- the other direction


@pytest.fixture
def fake_coordinator() -> Iterator[FakePeer]:
    fake = FakePeer("xatm.v1.Coordinator", default=garbage)
    yield fake
    fake.stop()


def _bytes(message: Message) -> Answer:
    return lambda _, __: message.SerializeToString()


def test_the_async_initiator_reports_a_garbage_answer(fake_coordinator: FakePeer) -> None:
    async def begin() -> None:
        async with AsyncTransactionManager(fake_coordinator.endpoint) as tm:
            await tm.begin()

    with pytest.raises(MalformedReply) as failed:
        asyncio.run(begin())
    assert failed.value.status == Status.INTERNAL
    expected = "answered Begin with bytes that are not a valid BeginResponse"
    assert failed.value.message == f"coordinator {fake_coordinator.endpoint} {expected}"


def test_the_initiator_reports_replies_outside_the_protocol(fake_coordinator: FakePeer) -> None:
    with TransactionManager(fake_coordinator.endpoint) as tm:
        fake_coordinator.answers["Begin"] = _bytes(coordinator_pb2.BeginResponse())
        with pytest.raises(MalformedReply, match="answered Begin with malformed gtrid ''"):
            tm.begin()
        fake_coordinator.answers["Begin"] = _bytes(
            coordinator_pb2.BeginResponse(gtrid="n1.0abc", timeout_ms=1000)
        )
        tx = tm.begin()
        fake_coordinator.answers["Commit"] = _bytes(
            coordinator_pb2.CompletionResponse(gtrid=tx.gtrid, outcome=42)
        )
        with pytest.raises(MalformedReply, match="answered Commit with unknown TxOutcome 42 in outcome"):
            tx.commit()
        branch = xa_pb2.BranchInfo(bqual="b1", last_code=-99)
        fake_coordinator.answers["GetStatus"] = _bytes(
            xa_pb2.TransactionInfo(gtrid=tx.gtrid, branches=[branch])
        )
        with pytest.raises(MalformedReply, match="answered GetStatus with unknown XaCode -99 in last_code"):
            tx.status()


def test_the_stub_reports_bad_coordinator_answers(tmp_path: Path, fake_coordinator: FakePeer) -> None:
    rm = SqliteRM(tmp_path / "rm.db", "rm1")
    stub = ParticipantStub(rm, coordinator=fake_coordinator.endpoint, advertise="127.0.0.1:1")
    try:
        fake_coordinator.answers["Enlist"] = _bytes(coordinator_pb2.EnlistResponse(code=42))
        with (
            use(TxContext("n1.0abc", fake_coordinator.endpoint, None)),
            pytest.raises(EnlistError, match="answered Enlist with unknown XaCode 42 in code"),
            stub.branch(),
        ):
            pass
        # Two in-doubt branches: the coordinator answers neither with a decision; both are asked.
        for n in range(2):
            xid = Xid(f"n1.0abc{n}", "b1")
            rm.start(xid)
            rm.put(xid, f"k{n}", n)
            rm.end(xid)
            assert rm.prepare(xid) is XaCode.XA_OK
        fake_coordinator.answers["QueryOutcome"] = _bytes(coordinator_pb2.QueryOutcomeResponse())
        assert stub.resolve_in_doubt()["unreachable"] == 2
        fake_coordinator.answers["QueryOutcome"] = _bytes(coordinator_pb2.QueryOutcomeResponse(decision=42))
        assert stub.resolve_in_doubt()["unreachable"] == 2
        assert [method for method in fake_coordinator.methods() if method == "QueryOutcome"] == [
            "QueryOutcome"
        ] * 4
    finally:
        stub.close()
        rm.close()
