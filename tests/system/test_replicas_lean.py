"""Replicas failing under lean and eager transactions, on a real etcd cluster.

A lean transaction in its business phase when its replica dies:

Replica r0 made the gtrid (the initiator learnt r0 with its first Begin), the banks reported their
branches to the initiator instead of enlisting, and r0 is killed with SIGKILL before the commit: no
replica holds the transaction or ever can. The initiator, given every replica, commits through r1:
the commit must be answered rolled back (not NOT_FOUND), and the branches it carries rolled back at
once, so the next transfer on the same accounts does not wait for their locks.

A paused replica (SIGSTOP: it accepts connections and never answers) must not hold up the clients
that name it beside a healthy one: their calls give it up and go to the next replica.
"""

from __future__ import annotations

import signal
from pathlib import Path

import grpc
import pytest

from tests.chaos import eventually, wait_no_prepared
from tests.etcdcluster import EtcdCluster
from tests.system.test_replicas import PATIENCE, Replicas, fresh, running
from xatm.coordinator.tools.bank._proto import bank_pb2
from xatm.participant import TransactionManager, TransactionRolledBack
from xatm.participant.api.v1 import coordinator_pb2, coordinator_pb2_grpc
from xatm.participant.xa import node_of

#: Long enough that the banks' own expiry of a branch nobody reached cannot end it during the test.
TIMEOUT = 120.0


@pytest.fixture
def etcd(etcd_cluster: EtcdCluster) -> EtcdCluster:
    return fresh(etcd_cluster)


def move(replicas: Replicas, amount: int, timeout: float = 10) -> None:
    """Move ``amount`` from alice (bank-a) to bob (bank-b) in the transaction active here."""
    bank = replicas.system.bank
    assert bank is not None
    bank.source.Apply(bank_pb2.ApplyRequest(account="alice", amount=-amount), timeout=timeout)
    bank.target.Apply(bank_pb2.ApplyRequest(account="bob", amount=amount), timeout=timeout)


def test_a_lean_commit_whose_replica_died_rolls_back_its_carried_branches(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    with running(Replicas(etcd, tmp_path, lease_ttl=5)) as replicas:
        system = replicas.system
        r1 = replicas.others[0]
        with TransactionManager(f"{replicas.r0.address},{r1.address}", timeout=TIMEOUT) as tm:
            with tm.begin():  # the manager's first Begin, at r0: it makes the gtrids after it
                move(replicas, 1)
            tx = tm.begin()
            assert node_of(tx.gtrid) == "r0"
            move(replicas, 100)
            assert len(tx._reported()[0]) == 2  # reported to the initiator, not enlisted at r0
            replicas.r0.kill()

            def r0_is_gone() -> bool | None:
                """r1 stops answering UNAVAILABLE for r0's gtrids once r0's lease has run out."""
                stub = coordinator_pb2_grpc.CoordinatorStub(grpc.insecure_channel(r1.address))
                try:
                    stub.GetStatus(coordinator_pb2.StatusRequest(gtrid=tx.gtrid), timeout=10)
                except grpc.RpcError as err:
                    return True if err.code() == grpc.StatusCode.NOT_FOUND else None
                raise AssertionError(f"r1 holds {tx.gtrid}, which r0 never logged")

            eventually("r0's lease to run out", r0_is_gone, PATIENCE, interval=0.2)
            with pytest.raises(TransactionRolledBack) as caught:
                tx.commit()
            assert "replica r0" in caught.value.rollback_reason
            assert len(caught.value.branches) == 2
            # The same accounts again, well within the dead transaction's timeout: its branches'
            # locks must be gone already. The manager learns r1 from the refusal and begins there.
            with tm.begin(timeout=30) as again:
                move(replicas, 5)
            assert node_of(again.gtrid) == "r1"
        wait_no_prepared(system, PATIENCE)
        assert (system.balance("bank-a", "alice"), system.balance("bank-b", "bob")) == (994, 1006)


#: Each call's bound to the coordinator (the initiator's, the banks' enlistments): shorter than it
#: takes a call waiting on a paused replica to fail by its deadline alone, longer than the pings
#: need to give that replica up.
CALL_TIMEOUT = 8.0


def test_a_paused_replica_does_not_hold_up_eager_transactions_that_name_another(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    with running(Replicas(etcd, tmp_path, lease_ttl=5)) as replicas:
        system = replicas.system
        r1, r2 = replicas.others
        everyone = f"{r1.address},{r2.address}"
        with TransactionManager(everyone, timeout=30, eager=True, call_timeout=CALL_TIMEOUT) as tm:
            with tm.begin() as first:  # connects the initiator and the banks to r1
                move(replicas, 1)
            assert node_of(first.gtrid) == "r1"
            assert r1.popen is not None
            r1.popen.send_signal(signal.SIGSTOP)
            try:
                # Begin, both enlistments and the commit each find r1 paused and move on to r2.
                with tm.begin() as second:
                    move(replicas, 10, timeout=20)
                assert node_of(second.gtrid) == "r2"
            finally:
                r1.popen.send_signal(signal.SIGCONT)
        assert (system.balance("bank-a", "alice"), system.balance("bank-b", "bob")) == (989, 1011)
