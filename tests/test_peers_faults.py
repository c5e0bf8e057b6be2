"""Peers that answer something other than a valid reply: a participant against a real
coordinator, a coordinator against the initiator and the participant stub.

The fake participant serves the Participant service's method paths with a generic handler whose
answers are raw bytes chosen by the test: garbage that is no message at all, a valid message with
an XA code outside the protocol, an odd gRPC status, an exception. Whatever comes back, the
coordinator must read it as XAER_RMFAIL for that branch at once, say in the reason what it got,
and go on: the transaction completes, and a recovery scan still reaches every other participant.
A fake coordinator checks the other direction: the initiator and the stub turn a bad answer into
one clear error.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
from google.protobuf.message import Message

from tests.bank_system import TEST_COORDINATOR_ENV
from tests.chaos import FAST_RECOVERY, eventually
from xatm.coordinator.tools.procs import Proc, coordinator_proc
from xatm.coordinator.txlog.file import read_records
from xatm.participant.api.v1 import coordinator_pb2, coordinator_pb2_grpc, participant_pb2, xa_pb2
from xatm.participant.client.context import TxContext, use
from xatm.participant.client.initiator import (
    AsyncTransactionManager,
    Transaction,
    TransactionManager,
    TransactionRolledBack,
    coordinator_channel,
)
from xatm.participant.errors import Status, XatmError
from xatm.participant.runtime.replies import MalformedReply
from xatm.participant.stores.sqlite import SqliteRM
from xatm.participant.stub import EnlistError, ParticipantStub
from xatm.participant.xa import FORMAT_ID, Phase, TxStatus, XaCode, Xid, node_of

#: What the fake answers one call with: raw reply bytes, or it aborts / raises on ``context``.
Answer = Callable[[bytes, grpc.ServicerContext], bytes]

GARBAGE = b"\xff\xff\xff\xff\x0fnot a protobuf message"


def ok(_: bytes, __: grpc.ServicerContext) -> bytes:
    return participant_pb2.XaReply(code=XaCode.XA_OK).SerializeToString()


def garbage(_: bytes, __: grpc.ServicerContext) -> bytes:
    return GARBAGE


def unknown_code(_: bytes, __: grpc.ServicerContext) -> bytes:
    return participant_pb2.XaReply(code=42, reason="made up").SerializeToString()


def data_loss(_: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.DATA_LOSS, "disk on fire")
    raise AssertionError("abort returned")


def raises(_: bytes, __: grpc.ServicerContext) -> bytes:
    raise RuntimeError("participant bug")


class FakePeer(grpc.GenericRpcHandler):
    """One service's paths on a real port; ``answers[method]`` chooses each answer (else ``default``)."""

    def __init__(self, service: str = "xatm.v1.Participant", default: Answer = ok) -> None:
        self.answers: dict[str, Answer] = {}
        self._service = f"/{service}"
        self._default = default
        #: (method, request bytes) of every call received, in order.
        self.calls: list[tuple[str, bytes]] = []
        self._server = grpc.server(ThreadPoolExecutor(max_workers=4))
        self._server.add_generic_rpc_handlers((self,))
        self.endpoint = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._server.start()

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        service, _, method = handler_call_details.method.rpartition("/")  # type: ignore[attr-defined]
        if service != self._service:
            return None

        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.calls.append((method, request))
            return self.answers.get(method, self._default)(request, context)

        # No (de)serializers: the handler sees and answers raw bytes.
        return grpc.unary_unary_rpc_method_handler(handle)

    def methods(self) -> list[str]:
        return [method for method, _ in self.calls]

    def stop(self) -> None:
        self._server.stop(None)


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    root = tmp_path_factory.mktemp("peers-faults")
    proc = coordinator_proc(root / "data", root, env={**TEST_COORDINATOR_ENV, **FAST_RECOVERY})
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def fakes() -> Iterator[list[FakePeer]]:
    made = [FakePeer(), FakePeer()]
    yield made
    for fake in made:
        fake.stop()


def _coordinator_stub(address: str) -> coordinator_pb2_grpc.CoordinatorStub:
    return coordinator_pb2_grpc.CoordinatorStub(coordinator_channel(address))


def _enlist(stub: coordinator_pb2_grpc.CoordinatorStub, gtrid: str, *fakes: FakePeer) -> None:
    for n, fake in enumerate(fakes):
        request = coordinator_pb2.EnlistRequest(
            gtrid=gtrid, bqual=f"b{n}", rm_id=f"rm{n}", endpoint=fake.endpoint
        )
        assert stub.Enlist(request, timeout=5).code == XaCode.XA_OK


@contextlib.contextmanager
def _transaction(
    coordinator: Proc, *fakes: FakePeer
) -> Iterator[tuple[coordinator_pb2_grpc.CoordinatorStub, Transaction]]:
    """A begun transaction (60 s timeout) with one branch at each fake, and a Coordinator stub."""
    stub = _coordinator_stub(coordinator.address)
    with TransactionManager(coordinator.address, timeout=60) as tm:
        tx = tm.begin()
        _enlist(stub, tx.gtrid, *fakes)
        yield stub, tx


def _results(coordinator: Proc, gtrid: str, bqual: str, phase: Phase) -> list[tuple[XaCode, str]]:
    """Every (code, reason) the coordinator logged for one branch in one phase, read from its log."""
    data_dir = Path(coordinator.argv[coordinator.argv.index("--data-dir") + 1])
    return [
        (XaCode(rec.branch_result.code), rec.branch_result.reason)
        for _, _, rec in read_records(data_dir)
        if rec.gtrid == gtrid
        and rec.WhichOneof("body") == "branch_result"
        and rec.branch_result.bqual == bqual
        and rec.branch_result.phase == phase
    ]


def _branch(info: xa_pb2.TransactionInfo, fake: FakePeer) -> xa_pb2.BranchInfo:
    (branch,) = [b for b in info.branches if b.endpoint == fake.endpoint]
    return branch


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (garbage, "participant answered Prepare with bytes that are not a valid XaReply"),
        (unknown_code, "participant answered Prepare with unknown XaCode 42 in code"),
        (data_loss, "DATA_LOSS: disk on fire"),
        (raises, "UNKNOWN"),
    ],
    ids=["garbage", "unknown-code", "odd-status", "exception"],
)
def test_a_bad_prepare_answer_rolls_back_at_once(
    coordinator: Proc, fakes: list[FakePeer], answer: Answer, reason: str
) -> None:
    good, bad = fakes
    bad.answers["Prepare"] = answer
    # Rolled back now, not when the 60 s transaction timeout fires.
    with _transaction(coordinator, good, bad) as (stub, tx), pytest.raises(TransactionRolledBack):
        tx.commit()
    info = stub.GetStatus(coordinator_pb2.StatusRequest(gtrid=tx.gtrid), timeout=5)
    assert TxStatus(info.status) is TxStatus.ROLLEDBACK
    ((code, logged),) = _results(coordinator, tx.gtrid, _branch(info, bad).bqual, Phase.PREPARE)
    assert code is XaCode.XAER_RMFAIL
    assert reason in logged
    assert good.methods() == ["Prepare", "Rollback"]


def test_a_bad_commit_answer_is_retried_as_rmfail(coordinator: Proc, fakes: list[FakePeer]) -> None:
    good, bad = fakes
    bad.answers["Commit"] = garbage
    with _transaction(coordinator, good, bad) as (stub, tx):
        stub.Commit(coordinator_pb2.CompletionRequest(gtrid=tx.gtrid), timeout=10)

        def recorded() -> xa_pb2.BranchInfo | None:
            info = stub.GetStatus(coordinator_pb2.StatusRequest(gtrid=tx.gtrid), timeout=5)
            branch = _branch(info, bad)
            return branch if branch.has_last_code and branch.last_phase == xa_pb2.PHASE_COMMIT else None

        branch = eventually("the bad commit answer recorded", recorded, timeout=10)
        assert XaCode(branch.last_code) is XaCode.XAER_RMFAIL
        assert "participant answered Commit with bytes that are not a valid XaReply" in branch.last_reason
        # The decision stands and phase two keeps retrying: once the participant answers, it ends.
        bad.answers["Commit"] = ok
        assert TxStatus(tx.status().status) in (TxStatus.COMMITTING, TxStatus.COMMITTED)

        def committed() -> bool | None:
            return TxStatus(tx.status().status) is TxStatus.COMMITTED or None

        eventually("commit after the participant mends", committed, timeout=10)


def test_a_bad_savepoint_answer_is_reported(coordinator: Proc, fakes: list[FakePeer]) -> None:
    good, bad = fakes
    bad.answers["Savepoint"] = garbage
    with _transaction(coordinator, good, bad) as (_, tx):
        with pytest.raises(XatmError) as failed:
            tx.savepoint()
        assert failed.value.status == Status.FAILED_PRECONDITION
        assert "XAER_RMFAIL participant answered Savepoint with bytes that are not a valid XaReply" in str(
            failed.value
        )
        assert TxStatus(tx.status().status) is TxStatus.MARKED_ROLLBACK
        tx.rollback()


def test_one_bad_endpoint_never_stops_the_recovery_scan(coordinator: Proc, fakes: list[FakePeer]) -> None:
    # The scan visits endpoints in sorted order: the bad one comes first.
    bad, good = sorted(fakes, key=lambda fake: fake.endpoint)
    with _transaction(coordinator, bad, good) as (_, tx):  # the coordinator now knows both endpoints
        tx.rollback()
    bad.answers["Recover"] = garbage
    # An orphan of this coordinator (never begun here: presumed abort), after a malformed XID.
    orphan = xa_pb2.Xid(format_id=FORMAT_ID, gtrid=f"{node_of(tx.gtrid)}.0badc0ffee", bqual="orphan")
    malformed = xa_pb2.Xid(format_id=FORMAT_ID, gtrid=f"{node_of(tx.gtrid)}.0badc0ffef", bqual="no spaces")
    listed = participant_pb2.RecoverReply(rm_id="rm1", xids=[malformed, orphan]).SerializeToString()
    good.answers["Recover"] = lambda _, __: listed
    wire = orphan.SerializeToString()

    def rolled_back() -> bool | None:
        return any(m == "Rollback" and wire in request for m, request in good.calls) or None

    eventually("the orphan at the good endpoint rolled back", rolled_back, timeout=20)
    assert "Recover" in bad.methods()
    assert "recover scan failed" not in coordinator.tail(200)


def test_fake_participant_answers_raw_bytes() -> None:
    """The fake itself: what it answers is exactly the bytes chosen (so the tests above test xatm)."""
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
