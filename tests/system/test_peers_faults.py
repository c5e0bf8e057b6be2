"""A participant that answers something other than a valid reply, against a real coordinator.

The fake participant (tests/fake_peer.py) serves the Participant service's method paths with
answers chosen by the test. Whatever comes back, the coordinator must read it as XAER_RMFAIL for
that branch at once, say in the reason what it got, and go on: the transaction completes, and a
recovery scan still reaches every other participant. The other direction, a fake coordinator
against the initiator and the stub, is in tests/unit/test_peers_faults.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.bank_system import TEST_COORDINATOR_ENV
from tests.chaos import FAST_RECOVERY, eventually
from tests.fake_peer import Answer, FakePeer, garbage, ok
from xatm.coordinator.tools.procs import Proc, coordinator_proc
from xatm.coordinator.txlog.file import read_records
from xatm.participant.api.v1 import coordinator_pb2, coordinator_pb2_grpc, participant_pb2, xa_pb2
from xatm.participant.client.initiator import (
    Transaction,
    TransactionManager,
    TransactionRolledBack,
    coordinator_channel,
)
from xatm.participant.errors import Status, XatmError
from xatm.participant.xa import FORMAT_ID, Phase, TxStatus, XaCode, node_of


def unknown_code(_: bytes, __: grpc.ServicerContext) -> bytes:
    return participant_pb2.XaReply(code=42, reason="made up").SerializeToString()


def data_loss(_: bytes, context: grpc.ServicerContext) -> bytes:
    context.abort(grpc.StatusCode.DATA_LOSS, "disk on fire")
    raise AssertionError("abort returned")


def raises(_: bytes, __: grpc.ServicerContext) -> bytes:
    raise RuntimeError("participant bug")


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
    # The coordinator's periodic in-doubt scan may ask it too (Recover: a read, not a phase call).
    assert [method for method in good.methods() if method != "Recover"] == ["Prepare", "Rollback"]


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
