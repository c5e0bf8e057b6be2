"""Coordinator replicas on a real three-member etcd cluster, as real processes.

Three coordinators (r0, r1, r2) share the etcd store; the banks and the initiator talk to r0.
The tests kill r0 (SIGKILL), pause it past its lease (SIGSTOP/SIGCONT), and kill etcd members,
then check outcomes: final statuses where the store says, balances, no prepared branch left,
and what etcd holds. How long a takeover took is printed (``-s`` shows it), not asserted.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import random
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.bank_system import TEST_COORDINATOR_ENV, BankSystem, coordinator_status
from tests.chaos import (
    CRASH_EXIT,
    FAST_RECOVERY,
    eventually,
    logs,
    prepared_xids,
    wait_no_prepared,
    wait_quiescent,
)
from tests.etcdcluster import EtcdCluster, EtcdMember
from tests.system.test_etcd_txlog import etcd_call
from xatm.coordinator.app import EXIT_LOG_STOPPED
from xatm.coordinator.tools.bank._proto import bank_pb2
from xatm.coordinator.tools.bank.transfer import Bank, TransferResult
from xatm.coordinator.tools.procs import Proc, coordinator_proc, free_port
from xatm.coordinator.txlog._proto import wal_pb2
from xatm.participant.errors import UnavailableError, XatmError
from xatm.participant.xa import TxStatus

LEASE_TTL = 2
PATIENCE = 60.0
#: The timeout of a transfer whose coordinator is killed: short enough that a branch nobody
#: reached is ended by its participant within the test's patience.
KILLED_TIMEOUT = 5.0


class Replicas:
    """A bank system whose coordinator is replica r0, and replicas r1, r2 beside it."""

    def __init__(
        self,
        cluster: EtcdCluster,
        root: Path,
        r0_env: dict[str, str] | None = None,
        *,
        lease_ttl: int = LEASE_TTL,
    ):
        self.cluster = cluster

        def env(node: str) -> dict[str, str]:
            return {
                **TEST_COORDINATOR_ENV,
                "XATM_STORE": cluster.url,
                "XATM_LEASE_TTL": str(lease_ttl),
                "XATM_NODE_ID": node,
            }

        self.system = BankSystem(root, coordinator_env={**env("r0"), **(r0_env or {})})
        for bank in self.system.banks.values():  # a branch nobody reached is ended within a second
            bank.env.update(FAST_RECOVERY)
        self.others: list[Proc] = []
        for node in ("r1", "r2"):
            (root / node).mkdir()
            self.others.append(coordinator_proc(root / node, root / node, env=env(node)))
        for bank in self.system.banks.values():  # initiators may name every replica
            bank.env["XATM_ALLOW_COORDINATORS"] = ",".join(p.address for p in self.others)

    @property
    def r0(self) -> Proc:
        return self.system.coordinator

    def start(self) -> Replicas:
        for proc in self.others:
            proc.start()
        self.system.start()
        return self

    def stop(self) -> None:
        self.system.stop()
        for proc in self.others:
            proc.stop()

    def status_anywhere(self, gtrid: str, *, r0_too: bool = False) -> tuple[str, TxStatus] | None:
        """(owner, status) of ``gtrid`` asked of r1 or r2 (or r0 too): any replica answers for the
        one owning it. None when no replica holds it; UNAVAILABLE answers (the owner just died,
        or etcd is electing) try the next replica."""
        procs = [self.others[0], self.others[1], *([self.r0] if r0_too else [])]
        for i, proc in enumerate(procs):
            try:
                info = coordinator_status(proc.address, gtrid)
            except grpc.RpcError as err:
                if err.code() == grpc.StatusCode.NOT_FOUND:
                    return None
                if err.code() == grpc.StatusCode.UNAVAILABLE and i + 1 < len(procs):
                    continue
                raise
            return info.owner, TxStatus(info.status)
        raise AssertionError("no replica to ask")

    def metric(self, node: str, name: str) -> float:
        """The sum of every sample of ``name`` on replica ``node``'s /metrics."""
        proc = self.others[int(node[1:]) - 1]
        with urllib.request.urlopen(f"http://{proc.http}/metrics", timeout=5) as reply:
            text = reply.read().decode()
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name
        )

    def logs(self) -> str:
        return logs(self.system) + "".join(f"\n----- {p.log_path} -----\n{p.tail()}" for p in self.others)


@contextlib.contextmanager
def running(replicas: Replicas) -> Iterator[Replicas]:
    """Start the replicas and banks; on a failed assertion print every log; stop them all."""
    try:
        yield replicas.start()
    except AssertionError:
        print(replicas.logs())
        raise
    finally:
        replicas.stop()


def fresh(etcd_cluster: EtcdCluster) -> EtcdCluster:
    """The session's cluster, every member running and nothing left of earlier tests' replicas."""
    for member in etcd_cluster.members:
        if not member.running:
            member.restart()
    etcd_cluster.wait_healthy()
    asyncio.run(etcd_call(etcd_cluster, lambda c: c.delete_prefix(b"/xatm/")))
    return etcd_cluster


@pytest.fixture
def etcd(etcd_cluster: EtcdCluster) -> EtcdCluster:
    return fresh(etcd_cluster)


def records_in_etcd(cluster: EtcdCluster, gtrid: str) -> list[wal_pb2.WalRecord]:
    kvs = asyncio.run(etcd_call(cluster, lambda c: c.get_prefix(f"/xatm/tx/{gtrid}/".encode())))
    out = []
    for kv in kvs:
        record = wal_pb2.WalRecord()
        record.ParseFromString(kv.value)
        out.append(record)
    return out


def transfer_in_background(system: BankSystem, amount: int) -> tuple[threading.Thread, list[TransferResult]]:
    results: list[TransferResult] = []
    assert system.bank is not None
    bank = system.bank
    worker = threading.Thread(target=lambda: results.append(bank.transfer("alice", "bob", amount)))
    worker.start()
    return worker, results


def commits_again(bank: Bank, when: str) -> None:
    """Wait until a transfer of 10 commits (etcd may need a moment to elect a leader)."""
    eventually(
        f"a transfer to commit {when}",
        lambda: True if bank.transfer("alice", "bob", 10).outcome == "committed" else None,
        PATIENCE,
        interval=0.5,
    )


def prepared_gtrid(system: BankSystem) -> str:
    """The gtrid prepared in both banks (waits for it)."""

    def probe() -> str | None:
        found = [{x.gtrid for x in prepared_xids(p.address)} for p in system.banks.values()]
        both = set.intersection(*found)
        return next(iter(both)) if both else None

    return eventually("a transfer prepared in both banks", probe, PATIENCE)


#: (failpoint where r0 dies, the path it dies on, the status the durable log then dictates).
KILL_CASES = [
    ("coordinator.before_prepare", "commit", TxStatus.ROLLEDBACK),
    ("coordinator.after_prepare", "commit", TxStatus.ROLLEDBACK),
    ("coordinator.before_decision", "commit", TxStatus.ROLLEDBACK),
    ("coordinator.after_decision", "commit", TxStatus.COMMITTED),
    ("coordinator.between_phase_two", "commit", TxStatus.COMMITTED),
    ("coordinator.before_rollback", "rollback", TxStatus.ROLLEDBACK),
]


class _Abandon(Exception):
    """Raised inside a transaction to make the initiator roll it back."""


def rollback_transfer(system: BankSystem, amount: int, timeout: float | None = None) -> str:
    """Apply ``amount`` in both banks, then roll back (the initiator's rollback path); the gtrid."""
    assert system.bank is not None
    bank = system.bank
    tx = bank.tm.begin(timeout=timeout)
    try:
        with tx:
            bank.source.Apply(bank_pb2.ApplyRequest(account="alice", amount=-amount), timeout=10)
            bank.target.Apply(bank_pb2.ApplyRequest(account="bob", amount=amount), timeout=10)
            raise _Abandon
    except (_Abandon, XatmError, grpc.RpcError):
        pass  # the coordinator died in the rollback: its takeover is what the test is about
    return tx.gtrid


@pytest.mark.parametrize(
    ("failpoint", "path", "outcome"), KILL_CASES, ids=[c[0].split(".")[1] for c in KILL_CASES]
)
def test_a_replica_killed_mid_transaction_is_finished_by_another(
    etcd: EtcdCluster, tmp_path: Path, failpoint: str, path: str, outcome: TxStatus
) -> None:
    """kill -9 of the owner (a crash failpoint: os._exit at once) -> another replica claims the
    transaction once the lease expires and finishes it as the durable log says."""
    with running(Replicas(etcd, tmp_path, {"XATM_FAILPOINTS": f"{failpoint}=crash"})) as replicas:
        system = replicas.system
        results: list[str] = []
        if path == "commit":
            assert system.bank is not None
            bank = system.bank
            worker = threading.Thread(
                target=lambda: results.append(
                    bank.transfer("alice", "bob", 100, timeout=KILLED_TIMEOUT).gtrid
                )
            )
        else:
            worker = threading.Thread(
                target=lambda: results.append(rollback_transfer(system, 100, timeout=KILLED_TIMEOUT))
            )
        worker.start()
        assert replicas.r0.wait_exit(PATIENCE) == CRASH_EXIT
        died = time.monotonic()
        worker.join(PATIENCE)
        gtrid = results[0]
        if not records_in_etcd(etcd, gtrid):
            # Undecided when r0 died: presumed abort needs nothing of it in the log, so there is
            # nothing to take over, and its participants end their branches past its deadline.
            assert outcome == TxStatus.ROLLEDBACK, f"{gtrid} was decided but never reached etcd"

            def unknown() -> bool | None:
                try:
                    return True if replicas.status_anywhere(gtrid) is None else None
                except grpc.RpcError as err:
                    if err.code() != grpc.StatusCode.UNAVAILABLE:
                        raise
                    return None  # r0's lease still holds: the others route the question to it

            eventually(f"{gtrid} to be unknown to every replica", unknown, PATIENCE, interval=0.5)
            eventually(
                "the participants to roll back the branches nobody reached",
                lambda: (
                    (system.balance("bank-a", "alice"), system.balance("bank-b", "bob")) == (1000, 1000)
                    or None
                ),
                PATIENCE,
                interval=0.5,
            )
            wait_no_prepared(system, PATIENCE)
            return
        owner = eventually(
            f"another replica to finish {gtrid}",
            lambda: (lambda s: s if s is not None and s[1].is_final else None)(
                replicas.status_anywhere(gtrid)
            ),
            PATIENCE,
            interval=0.05,
        )
        took = time.monotonic() - died
        print(
            f"\ntakeover at {failpoint}: {owner[0]} made {gtrid} {owner[1].label} {took:.2f}s after r0 died"
        )
        assert owner[1] == outcome
        assert replicas.metric(owner[0], "xatm_takeovers_total") >= 1
        assert replicas.metric(owner[0], "xatm_etcd_lease_renewals_total") >= 1
        wait_no_prepared(system, PATIENCE)
        moved = (900, 1100) if outcome == TxStatus.COMMITTED else (1000, 1000)
        assert (system.balance("bank-a", "alice"), system.balance("bank-b", "bob")) == moved


def test_a_paused_replica_does_not_act_on_what_was_taken_over(etcd: EtcdCluster, tmp_path: Path) -> None:
    """r0 is paused before writing its commit decision until another replica has presumed abort;
    resumed, its decision write is refused and it exits: etcd holds no commit decision, no money moved."""
    with running(
        Replicas(etcd, tmp_path, {"XATM_FAILPOINTS": "coordinator.before_decision=sleep(1500)"})
    ) as replicas:
        system = replicas.system
        worker, _ = transfer_in_background(system, 100)
        gtrid = prepared_gtrid(system)
        assert replicas.r0.popen is not None
        replicas.r0.popen.send_signal(19)  # SIGSTOP while it sleeps before its decision
        owner = eventually(
            "another replica to roll the paused replica's transfer back",
            lambda: (lambda s: s if s is not None and s[1] == TxStatus.ROLLEDBACK else None)(
                replicas.status_anywhere(gtrid)
            ),
            PATIENCE,
        )
        replicas.r0.popen.send_signal(18)  # SIGCONT: it wakes up wanting to commit
        assert replicas.r0.wait_exit(PATIENCE) == EXIT_LOG_STOPPED
        assert "no longer owns" in replicas.r0.tail(200) or "lease of replica r0 expired" in replicas.r0.tail(
            200
        )
        worker.join(PATIENCE)
        decisions = [r for r in records_in_etcd(etcd, gtrid) if r.WhichOneof("body") == "decision"]
        assert decisions == [], f"{owner[0]} took over, yet a decision was logged: {decisions}"
        assert replicas.status_anywhere(gtrid) == (owner[0], TxStatus.ROLLEDBACK)
        wait_no_prepared(system, PATIENCE)
        assert (system.balance("bank-a", "alice"), system.balance("bank-b", "bob")) == (1000, 1000)


def test_one_etcd_member_down_changes_nothing(etcd: EtcdCluster, tmp_path: Path) -> None:
    with running(Replicas(etcd, tmp_path)) as replicas:
        system = replicas.system
        assert system.bank is not None
        etcd.members[0].kill()
        outcomes = [system.bank.transfer("alice", "bob", 10).outcome for _ in range(10)]
        assert outcomes == ["committed"] * 10
        assert (system.balance("bank-a", "alice"), system.balance("bank-b", "bob")) == (900, 1100)


def test_quorum_lost_refuses_new_work_then_recovers_with_nothing_lost(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    with running(Replicas(etcd, tmp_path)) as replicas:
        system = replicas.system
        assert system.bank is not None
        bank = system.bank
        assert bank.transfer("alice", "bob", 10).outcome == "committed"
        etcd.members[0].kill()
        etcd.members[1].kill()
        tried: list[TransferResult] = []

        def refused() -> str | None:
            try:
                tried.append(bank.transfer("alice", "bob", 10, timeout=5))
            except UnavailableError as err:  # an eager begin refused
                return err.message
            # The commit that would create the transaction (a gtrid the initiator made) refused.
            # Refused by the engine (no quorum for the log) or, first, by the routing that asks
            # etcd which replica owns a gtrid this one does not hold.
            detail = tried[-1].detail
            return detail if "no quorum" in detail or "etcd cannot answer" in detail else None

        message = eventually("a transfer refused for want of quorum", refused, PATIENCE, interval=0.2)
        assert (
            "has no quorum or cannot be reached: new transactions are refused" in message
            or "UNAVAILABLE: etcd cannot answer" in message
        ), message
        etcd.members[0].restart()
        etcd.members[1].restart()
        etcd.wait_healthy()
        commits_again(bank, "once quorum is back")
        assert replicas.r0.alive
        wait_quiescent(system, PATIENCE)
        wait_no_prepared(system, PATIENCE)
        alice, bob = system.balance("bank-a", "alice"), system.balance("bank-b", "bob")
        assert alice + bob == 2000
        for attempt in tried:  # what the initiator was told committed is committed
            if attempt.outcome == "committed":
                assert (
                    TxStatus(coordinator_status(replicas.r0.address, attempt.gtrid).status)
                    == TxStatus.COMMITTED
                )


def test_the_whole_etcd_cluster_restarted_keeps_every_decision(etcd: EtcdCluster, tmp_path: Path) -> None:
    with running(Replicas(etcd, tmp_path)) as replicas:
        system = replicas.system
        assert system.bank is not None
        bank = system.bank
        committed = [bank.transfer("alice", "bob", 10) for _ in range(5)]
        assert [r.outcome for r in committed] == ["committed"] * 5
        etcd.restart_all()
        commits_again(bank, "after the restart")
        assert replicas.r0.alive  # its lease outlived the restart
        for result in committed:
            records = records_in_etcd(etcd, result.gtrid)
            assert any(r.WhichOneof("body") == "decision" and r.decision.commit for r in records)
            assert (
                TxStatus(coordinator_status(replicas.r0.address, result.gtrid).status) == TxStatus.COMMITTED
            )
        assert (system.balance("bank-a", "alice"), system.balance("bank-b", "bob")) == (940, 1060)


def test_an_unreachable_etcd_stops_start_up_in_one_line(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    argv = ["coordinator", "--store", f"etcd://127.0.0.1:{port}", "--data-dir", str(tmp_path)]
    done = subprocess.run(
        [sys.executable, "-m", "xatm", *argv, "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=PATIENCE,
    )
    assert done.returncode == 1
    assert done.stderr.splitlines() == [done.stderr.strip()]
    assert f"etcd at 127.0.0.1:{port} cannot be reached" in done.stderr


SOAK_SECONDS = 45.0


def settled(replicas: Replicas, gtrid: str) -> tuple[str, TxStatus] | None:
    """(replica, final status) of ``gtrid``; ("nowhere", Rolledback) when no replica knows it
    (presumed abort); None while it is not final."""
    found = replicas.status_anywhere(gtrid, r0_too=True)
    if found is None:
        return "nowhere", TxStatus.ROLLEDBACK
    return found if found[1].is_final else None


def test_soak_with_replicas_and_etcd_members_killed_at_random(etcd: EtcdCluster, tmp_path: Path) -> None:
    """Transfers run while replicas (the one the clients use included) and etcd members are
    killed with SIGKILL and restarted at random, one at a time. Afterwards money is conserved,
    no branch is left prepared, every transfer has one outcome everywhere, and every commit the
    initiator saw is Committed."""
    rng = random.Random(20261204)
    with running(Replicas(etcd, tmp_path)) as replicas:
        system = replicas.system
        assert system.bank is not None
        bank = system.bank
        results: list[tuple[TransferResult, int]] = []
        refused = 0
        stop = threading.Event()

        def transfers() -> None:
            nonlocal refused
            while not stop.is_set():
                # From alice (bank-a) to bob (bank-b), or back as a negative amount.
                amount = rng.choice((-1, 1)) * rng.randint(1, 20)
                try:
                    results.append((bank.transfer("alice", "bob", amount, timeout=5), amount))
                except (XatmError, grpc.RpcError):
                    refused += 1  # begin refused or the replica down: nothing began
                    time.sleep(0.1)

        worker = threading.Thread(target=transfers)
        worker.start()
        victims: list[Proc | EtcdMember] = [replicas.r0, *replicas.others, *etcd.members]
        kills = 0
        ends = time.monotonic() + SOAK_SECONDS
        try:
            while time.monotonic() < ends:
                time.sleep(rng.uniform(1.0, 4.0))
                victim = rng.choice(victims)
                if isinstance(victim, Proc):
                    victim.kill()
                    time.sleep(rng.uniform(0.0, LEASE_TTL + 1.0))
                    victim.start(wait=PATIENCE)
                else:
                    victim.kill()
                    time.sleep(rng.uniform(0.0, 2.0))
                    victim.restart()
                    etcd.wait_healthy()
                kills += 1
        finally:
            stop.set()
            worker.join(PATIENCE)
        wait_quiescent(system, PATIENCE)
        wait_no_prepared(system, PATIENCE)
        moved = 0
        outcomes = {"committed": 0, "rolledback": 0, "unknown": 0}
        for result, amount in results:
            final = eventually(
                f"{result.gtrid} to be final", lambda g=result.gtrid: settled(replicas, g), PATIENCE
            )
            assert final[1] in (TxStatus.COMMITTED, TxStatus.ROLLEDBACK), (result, final)
            if result.outcome == "committed":
                assert final[1] == TxStatus.COMMITTED, (result, final)
            if result.outcome == "rolledback":
                assert final[1] == TxStatus.ROLLEDBACK, (result, final)
            outcomes[result.outcome if result.outcome in outcomes else "unknown"] += 1
            moved += amount if final[1] == TxStatus.COMMITTED else 0
        alice, bob = system.balance("bank-a", "alice"), system.balance("bank-b", "bob")
        print(f"\nsoak: {kills} kills, {len(results)} transfers {outcomes}, {refused} refused, moved {moved}")
        assert (alice, bob) == (1000 - moved, 1000 + moved)
        reasons = collections.Counter(r.detail[-90:] for r, _ in results if r.outcome == "rolledback")
        assert outcomes["committed"] > outcomes["rolledback"], reasons.most_common(5)
