"""A Commit or Rollback that the coordinator refuses before taking its transaction on (the log
cannot be reached, it is shutting down, too many transactions are open, the token is at its
quota) rolls the branches it carries back at once; one that gets no answer (the coordinator
restarting) is asked again, and the restarted coordinator rolls them back.

A lean transaction exists at the coordinator only from its Commit; its branches hold their
locks at the participants until a coordinator ends them or the transaction's deadline passes
(60 s by default). Found by CI: a transfer whose Commit met an etcd restart was refused with
UNAVAILABLE, and every transfer after it was vetoed on the locks it left for a minute; a
transfer whose coordinator was restarting left them the same way.
"""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.bank_system import TEST_COORDINATOR_ENV, BankSystem
from xatm.coordinator.tools.procs import Proc, coordinator_proc, free_port
from xatm.participant import (
    AsyncTransactionManager,
    TransactionHeuristicHazard,
    TransactionManager,
    TransactionOutcomeUnknown,
    TransactionRolledBack,
)
from xatm.participant.api.v1 import coordinator_pb2, coordinator_pb2_grpc, xa_pb2
from xatm.participant.errors import XatmError
from xatm.participant.xa import incarnation_of, new_bqual, new_gtrid


@pytest.fixture
def system(tmp_path: Path) -> Iterator[BankSystem]:
    made = BankSystem(tmp_path, coordinator_env={"XATM_MAX_OPEN_TRANSACTIONS": "1"}).start()
    try:
        yield made
    finally:
        made.stop()


@pytest.fixture
def coordinator(system: BankSystem) -> Iterator[coordinator_pb2_grpc.CoordinatorStub]:
    with grpc.insecure_channel(system.coordinator.address) as channel:
        yield coordinator_pb2_grpc.CoordinatorStub(channel)


def test_a_commit_refused_as_too_many_open_rolls_back_its_branches_and_says_so(
    system: BankSystem, coordinator: coordinator_pb2_grpc.CoordinatorStub
) -> None:
    assert system.bank is not None
    bank = system.bank
    assert bank.transfer("alice", "bob", 10).committed  # the manager knows the coordinator now
    held = coordinator.Begin(coordinator_pb2.BeginRequest(timeout_ms=120_000), timeout=5)

    refused = bank.transfer("alice", "bob", 10)  # its Commit finds the one slot taken

    assert refused.outcome == "rolledback", refused.detail
    assert "max_open_transactions" in refused.detail and "presumed abort" in refused.detail
    coordinator.Rollback(coordinator_pb2.CompletionRequest(gtrid=held.gtrid), timeout=5)
    # The refused transfer's branches are gone: the next one gets both rows at once (a lock
    # left behind would veto it after the banks' 2 s lock wait, for a minute).
    after = bank.transfer("alice", "bob", 10)
    assert after.committed, after.detail
    assert (system.balance("bank-a", "alice"), system.balance("bank-b", "bob")) == (980, 1020)


def test_a_refused_commit_with_an_unreachable_branch_claims_no_outcome(
    system: BankSystem, coordinator: coordinator_pb2_grpc.CoordinatorStub
) -> None:
    held = coordinator.Begin(coordinator_pb2.BeginRequest(timeout_ms=120_000), timeout=5)
    gtrid = new_gtrid(held.node_id, held.incarnation)
    ghost = xa_pb2.BranchRef(bqual=new_bqual(), rm_id="ghost", endpoint=f"127.0.0.1:{free_port()}")
    request = coordinator_pb2.CompletionRequest(gtrid=gtrid, timeout_ms=30_000, branches=[ghost])

    with pytest.raises(grpc.RpcError) as refused:
        coordinator.Commit(request, timeout=30)

    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "max_open_transactions" in refused.value.details()
    assert "0 of the 1 branches it carries were rolled back" in refused.value.details()
    # A lone branch its participant does not know, of a gtrid made for an earlier start: that
    # start may have committed it in one phase and logged nothing. The answer says the outcome
    # is unknown, never rolled back. Of this start's gtrid, "not known" is rolled back.
    bank_a = system.banks["bank-a"].address
    for incarnation, outcome in (("00000000", xa_pb2.TX_HAZARD), (held.incarnation, xa_pb2.TX_ROLLBACK)):
        unknown = xa_pb2.BranchRef(bqual=new_bqual(), rm_id="bank-a", endpoint=bank_a)
        lone = coordinator_pb2.CompletionRequest(
            gtrid=new_gtrid(held.node_id, incarnation), branches=[unknown]
        )
        answer = coordinator.Commit(lone, timeout=30)
        assert answer.outcome == outcome, answer
    assert answer.status == xa_pb2.TRANSACTION_STATUS_ROLLEDBACK
    # A refused Rollback with nothing carried stays a plain refusal.
    with pytest.raises(grpc.RpcError) as bare:
        coordinator.Rollback(coordinator_pb2.CompletionRequest(gtrid=gtrid), timeout=30)
    assert bare.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "branches" not in bare.value.details()


def test_a_commit_asked_while_the_coordinator_restarts_is_answered_and_frees_the_locks(
    tmp_path: Path,
) -> None:
    system = BankSystem(tmp_path).start()
    try:
        assert system.bank is not None
        bank = system.bank
        assert bank.transfer("alice", "bob", 10).committed
        tx = bank.tm.begin()
        system.apply("bank-a", "alice", -10)
        system.apply("bank-b", "bob", 10)
        system.coordinator.kill()  # the branches are open, and nothing of them was logged
        back = threading.Timer(1.0, system.coordinator.start)
        back.start()

        with pytest.raises(TransactionRolledBack) as raised:
            tx.commit()  # no answer at first: asked again until the restarted coordinator answers

        back.join()
        assert "restarted before the transaction was decided" in raised.value.message
        after = bank.transfer("alice", "bob", 10)  # the rolled-back branches left no lock
        assert after.committed, after.detail
        assert (system.balance("bank-a", "alice"), system.balance("bank-b", "bob")) == (980, 1020)
    finally:
        system.stop()


def test_a_one_phase_commit_cut_by_a_coordinator_crash_is_never_answered_rolled_back(
    tmp_path: Path,
) -> None:
    """Found by a newcomer: the coordinator dies while its one-phase commit is at the lone
    branch's participant (slowed here by a failpoint); the initiator asks again, the restarted
    coordinator rolls the branch back, and the participant, which committed it, answers
    XAER_NOTA. That was answered rolled back while the row had committed."""
    system = BankSystem(tmp_path, coordinator_env={"XATM_CALL_TIMEOUT": "10", "XATM_COMMIT_WAIT": "10"})
    system.start({"bank-a": {"XATM_FAILPOINTS": "participant.commit=sleep(1500)"}})
    try:
        assert system.bank is not None
        tm = system.bank.tm
        with tm.begin():  # the manager learns the coordinator; one branch: one phase
            system.apply("bank-a", "alice", -1)
        tx = tm.begin()
        system.apply("bank-a", "alice", -10)

        def crash_and_restart() -> None:
            time.sleep(0.5)  # the one-phase commit is at bank-a, sleeping
            system.coordinator.kill()
            time.sleep(1.5)  # bank-a has committed the branch meanwhile, and forgotten it
            system.coordinator.start()

        crash = threading.Thread(target=crash_and_restart)
        crash.start()
        with pytest.raises(XatmError) as raised:
            tx.commit()
        crash.join()

        assert not isinstance(raised.value, TransactionRolledBack), raised.value
        assert isinstance(raised.value, TransactionHeuristicHazard | TransactionOutcomeUnknown) or (
            "is unknown" in raised.value.message
        ), raised.value
        assert system.balance("bank-a", "alice") == 989  # both commits: the second did commit
    finally:
        system.stop()


@pytest.mark.parametrize("aio", [False, True], ids=["sync", "aio"])
@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_a_transaction_begun_after_a_coordinator_restart_is_made_for_the_new_start(
    tmp_path: Path, aio: bool, how: signal.Signals
) -> None:
    """Found by a newcomer: after any restart, clean ones included, each initiator's next
    transaction was rolled back ("the coordinator restarted before the transaction was decided"):
    its gtrid was still made for the earlier start. The manager now relearns the incarnation once
    its connection to the coordinator dropped."""
    proc = coordinator_proc(tmp_path / "coordinator", tmp_path, env=TEST_COORDINATOR_ENV)
    proc.start()
    try:
        if aio:

            async def main() -> list[str]:
                async with AsyncTransactionManager(proc.address) as tm:
                    first = await tm.begin()
                    await first.commit()
                    before = tm.incarnation
                    await asyncio.to_thread(_restart, proc, how)
                    second = await tm.begin()
                    await second.commit()  # raised TransactionRolledBack
                    return [before, tm.incarnation, second.gtrid]

            before, after, gtrid = asyncio.run(main())
        else:
            with TransactionManager(proc.address) as tm:
                tm.begin().commit()
                before = tm.incarnation
                _restart(proc, how)
                second = tm.begin()
                second.commit()  # raised TransactionRolledBack
                after, gtrid = tm.incarnation, second.gtrid
        assert before != after and incarnation_of(gtrid) == after
    finally:
        proc.stop()


def _restart(proc: Proc, how: signal.Signals) -> None:
    proc.kill() if how == signal.SIGKILL else proc.stop()
    proc.start()
    time.sleep(0.5)  # the client side notices the dropped connection meanwhile
