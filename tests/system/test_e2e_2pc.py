"""Two-phase commit across real processes: a coordinator and bank services over real gRPC."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import pytest

from tests.bank_system import BankSystem
from xatm.participant import TransactionManager, TransactionRolledBack
from xatm.participant.api.v1 import coordinator_pb2, coordinator_pb2_grpc, xa_pb2
from xatm.participant.xa import BranchStatus, XaCode
from xatm.participant.xa import TxStatus as S

FSYNCS = "xatm_wal_fsync_duration_seconds_count"


def _results(system: BankSystem, phase: str) -> float:
    return sum(
        v
        for (name, labels), v in system.metrics().items()
        if name == "xatm_branch_results_total" and ("phase", phase) in labels
    )


def _codes(info) -> dict[str, XaCode]:  # type: ignore[no-untyped-def]
    return {b.rm_id: XaCode(b.last_code) for b in info.branches if b.has_last_code}


def test_two_branch_commit_makes_exactly_one_forced_write(bank_system: BankSystem) -> None:
    fsyncs, prepares = bank_system.metric(FSYNCS), _results(bank_system, "prepare")
    result = bank_system.bank.transfer("alice", "bob", 100)
    assert result.committed
    info = bank_system.status(result.gtrid)
    assert info.status == S.COMMITTED
    assert [BranchStatus(b.status) for b in info.branches] == [BranchStatus.COMMITTED] * 2
    assert set(_codes(info).values()) == {XaCode.XA_OK}
    assert bank_system.metric(FSYNCS) - fsyncs == 1
    assert _results(bank_system, "prepare") - prepares == 2
    assert (bank_system.balance("bank-a", "alice"), bank_system.balance("bank-b", "bob")) == (900, 1100)


def test_vote_no_rolls_back_everywhere_without_a_forced_write(bank_system: BankSystem) -> None:
    fsyncs = bank_system.metric(FSYNCS)
    result = bank_system.bank.transfer("alice", "bob", 5000)
    assert not result.committed
    info = bank_system.status(result.gtrid)
    assert info.status == S.ROLLEDBACK
    assert _codes(info)["bank-a"] == XaCode.XA_RBINTEGRITY
    assert info.rollback_code == XaCode.XA_RBINTEGRITY
    assert all(b.status == BranchStatus.ROLLEDBACK for b in info.branches)
    assert bank_system.metric(FSYNCS) - fsyncs == 0
    assert bank_system.total() == 2000


def test_single_branch_commits_in_one_phase_with_no_prepare(bank_system: BankSystem) -> None:
    fsyncs, prepares = bank_system.metric(FSYNCS), _results(bank_system, "prepare")
    with bank_system.bank.tm.begin() as tx:
        bank_system.apply("bank-a", "alice", 50)
    info = bank_system.status(tx.gtrid)
    assert info.status == S.COMMITTED and info.one_phase
    assert info.branches[0].last_phase == 3  # PHASE_ONE_PHASE_COMMIT
    assert _results(bank_system, "prepare") - prepares == 0
    assert bank_system.metric(FSYNCS) - fsyncs == 0
    assert bank_system.balance("bank-a", "alice") == 1050


def test_read_only_branch_gets_no_phase_two(bank_system: BankSystem) -> None:
    commits = _results(bank_system, "commit")
    with bank_system.bank.tm.begin() as tx:
        bank_system.apply("bank-a", "alice", -10)
        assert bank_system.apply("bank-b", "bob", 0) == 1000  # reads only
    info = bank_system.status(tx.gtrid)
    assert info.status == S.COMMITTED
    codes = _codes(info)
    assert codes == {"bank-a": XaCode.XA_OK, "bank-b": XaCode.XA_RDONLY}
    assert all(b.status == BranchStatus.COMMITTED for b in info.branches)
    assert _results(bank_system, "commit") - commits == 1  # only bank-a
    assert bank_system.balance("bank-a", "alice") == 990


def test_timeout_rolls_back_with_rbtimeout(bank_system: BankSystem) -> None:
    """Eager: the coordinator, which holds the transaction from its Begin, times it out."""
    tm = TransactionManager(bank_system.coordinator.address, eager=True)
    tx = tm.begin(timeout=1.0)
    with pytest.raises(TransactionRolledBack), tx:
        bank_system.apply("bank-a", "alice", -300)
        bank_system.wait_status(tx.gtrid, S.ROLLEDBACK, timeout=10)
    tm.close()
    info = bank_system.status(tx.gtrid)
    assert info.rollback_code == XaCode.XA_RBTIMEOUT
    assert info.branches[0].status == BranchStatus.ROLLEDBACK
    # The lock on alice was released: another transfer goes through.
    assert bank_system.bank.transfer("alice", "bob", 1).committed
    assert bank_system.balance("bank-a", "alice") == 999


def test_a_commit_past_the_timeout_rolls_back_with_rbtimeout(bank_system: BankSystem) -> None:
    """Lazy: the coordinator first hears of the transaction from its Commit, which comes too late:
    no prepare is sent, the reported branch is rolled back, and the answer says why."""
    tx = bank_system.bank.tm.begin(timeout=0.5)
    with pytest.raises(TransactionRolledBack) as caught, tx:
        bank_system.apply("bank-a", "alice", -300)
        time.sleep(0.6)  # the initiator dawdles past its timeout before committing
    assert caught.value.rollback_code == XaCode.XA_RBTIMEOUT
    info = bank_system.wait_status(tx.gtrid, S.ROLLEDBACK)
    assert [BranchStatus(b.status) for b in info.branches] == [BranchStatus.ROLLEDBACK]
    assert [b.last_phase for b in info.branches] == [xa_pb2.PHASE_ROLLBACK]  # never asked to prepare
    assert bank_system.bank.transfer("alice", "bob", 1).committed
    assert bank_system.balance("bank-a", "alice") == 999


def test_participant_unreachable_during_prepare_rolls_back(bank_system: BankSystem) -> None:
    tx = bank_system.bank.tm.begin()
    with pytest.raises(TransactionRolledBack) as err, tx:
        bank_system.apply("bank-a", "alice", -200)
        bank_system.apply("bank-b", "bob", 200)
        bank_system.banks["bank-b"].kill()
    assert err.value.outcome.name == "TX_ROLLBACK"
    info = bank_system.status(tx.gtrid)
    # bank-b cannot acknowledge while it is down; the decision is rollback either way.
    assert info.status in (S.ROLLINGBACK, S.ROLLEDBACK)
    assert _codes(info)["bank-b"] == XaCode.XAER_RMFAIL
    assert "UNAVAILABLE" in next(b.last_reason for b in info.branches if b.rm_id == "bank-b")
    bank_system.banks["bank-b"].start()
    bank_system.wait_status(tx.gtrid, S.ROLLEDBACK)
    assert (bank_system.balance("bank-a", "alice"), bank_system.balance("bank-b", "bob")) == (1000, 1000)


def test_participant_unreachable_in_phase_two_is_retried_until_committed(tmp_path: Path) -> None:
    system = BankSystem(tmp_path).start(bank_env={"bank-b": {"XATM_FAILPOINTS": "participant.commit=crash"}})
    try:
        result = system.bank.transfer("alice", "bob", 250)
        assert result.committed  # the decision is durable: the initiator is told it committed
        info = system.status(result.gtrid)
        assert info.status == S.COMMITTING
        assert system.metric("xatm_in_doubt_branches") == 1
        bank_b = next(b for b in info.branches if b.rm_id == "bank-b")
        assert bank_b.attempts >= 1 and XaCode(bank_b.last_code) == XaCode.XAER_RMFAIL
        system.banks["bank-b"].wait_exit(10)
        time.sleep(0.5)  # a few retries against a dead participant
        system.banks["bank-b"].start()  # restarted without the failpoint
        info = system.wait_status(result.gtrid, S.COMMITTED)
        assert all(b.status == BranchStatus.COMMITTED for b in info.branches)
        assert system.metric("xatm_in_doubt_branches") == 0
        assert system.metric("xatm_retries_total", phase="commit") >= 1
        assert (system.balance("bank-a", "alice"), system.balance("bank-b", "bob")) == (750, 1250)
    finally:
        system.stop()


def test_stub_in_an_asyncio_service(tmp_path: Path) -> None:
    system = BankSystem(tmp_path, aio=True).start()
    try:
        ok = system.bank.transfer("alice", "bob", 10)
        refused = system.bank.transfer("alice", "bob", 10_000)
        assert ok.committed and not refused.committed
        assert system.status(ok.gtrid).status == S.COMMITTED
        info = system.status(refused.gtrid)
        assert info.status == S.ROLLEDBACK and _codes(info)["bank-a"] == XaCode.XA_RBINTEGRITY
        assert system.total() == 2000 and system.balance("bank-b", "bob") == 1010
    finally:
        system.stop()


def test_bad_ids_and_unknown_transactions(bank_system: BankSystem) -> None:
    with grpc.insecure_channel(bank_system.coordinator.address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        for bad in ("", "x" * 65, "bad id", "semi;colon"):
            with pytest.raises(grpc.RpcError) as err:
                stub.GetStatus(coordinator_pb2.StatusRequest(gtrid=bad), timeout=5)
            assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as err:
            stub.Commit(coordinator_pb2.CompletionRequest(gtrid="nope.123"), timeout=5)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        begun = stub.Begin(coordinator_pb2.BeginRequest(timeout_ms=10_000_000), timeout=5)
        assert begun.timeout_ms == 600_000  # capped by max_timeout
        enlist = coordinator_pb2.EnlistRequest(
            gtrid=begun.gtrid, bqual="b1", rm_id="rm", endpoint="127.0.0.1:1"
        )
        assert stub.Enlist(enlist, timeout=5).code == XaCode.XA_OK
        assert stub.Enlist(enlist, timeout=5).code == XaCode.XAER_DUPID
        for savepoint, code in (
            ("bad id", "INVALID_ARGUMENT"),
            ("", "INVALID_ARGUMENT"),
            ("sp.nope", "NOT_FOUND"),
        ):
            request = coordinator_pb2.RollbackToSavepointRequest(gtrid=begun.gtrid, savepoint_id=savepoint)
            with pytest.raises(grpc.RpcError) as err:
                stub.RollbackToSavepoint(request, timeout=5)
            assert err.value.code().name == code
        stub.Rollback(coordinator_pb2.CompletionRequest(gtrid=begun.gtrid), timeout=5)


def test_an_enlist_refusal_reaches_the_caller_with_its_status(bank_system: BankSystem) -> None:
    from xatm.participant.client.context import TxContext, use

    fake = TxContext("n0.00000000000000000001", bank_system.coordinator.address)
    with use(fake), pytest.raises(grpc.RpcError) as err:
        bank_system.apply("bank-a", "alice", 1)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "cannot enlist" in err.value.details() and "unknown transaction" in err.value.details()
    assert bank_system.balance("bank-a", "alice") == 1000


def test_commit_answer_carries_the_decision_even_when_prepare_outlasts_commit_wait(tmp_path: Path) -> None:
    system = BankSystem(tmp_path, coordinator_env={"XATM_COMMIT_WAIT": "0.2"}).start(
        bank_env={"bank-b": {"XATM_FAILPOINTS": "participant.prepare=1*sleep(600)"}}
    )
    try:
        result = system.bank.transfer("alice", "bob", 5)
        assert result.committed, result.detail  # not TX_ROLLBACK for a transaction still preparing
        system.wait_status(result.gtrid, S.COMMITTED)
    finally:
        system.stop()
