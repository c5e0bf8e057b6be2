"""Two-phase commit across PostgreSQL databases, with real processes and real clusters.

The module's system: a coordinator, bank-a (alice, carol) and bank-b (bob) on two databases of
the session cluster, and a participant agent on a third. Before it starts, each bank database
gets prepared transactions made by hand with foreign gids — a plain one and an xatm-shaped one of
another coordinator node — that nothing in xatm may touch: teardown checks them, then rolls them
back itself. In-doubt resolution (banks, agent) and recovery scans (coordinator) run every 0.3 s.

``test_pg_outage_in_phase_two`` uses a second cluster and is parametrized by ``Outage`` so that
a crash matrix can add rows (another failpoint, another stop mode, another victim).
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from psycopg import sql

from tests.bank_system import BankSystem, PgStore
from tests.pgcluster import PgCluster, pg_url, prepared
from tests.system.test_agent import FAST_RECOVERY, agent_client, agent_proc
from xatm.coordinator.tools.procs import Proc
from xatm.participant import TransactionRolledBack
from xatm.participant.api.v1 import agent_pb2, agent_pb2_grpc, xa_pb2
from xatm.participant.xa import BranchStatus, XaCode
from xatm.participant.xa import TxStatus as S

SEED = 1000
ACCOUNTS = (("bank-a", "alice"), ("bank-a", "carol"), ("bank-b", "bob"))


def codes(info: xa_pb2.TransactionInfo) -> dict[str, XaCode]:
    return {b.rm_id: XaCode(b.last_code) for b in info.branches if b.has_last_code}


@dataclass(frozen=True)
class Foreign:
    """Prepared transactions made by hand, which xatm must never touch: a non-xatm gid, and an
    xatm-shaped gid of another coordinator node (recover() lists it; nobody may decide it)."""

    cluster: PgCluster
    dbname: str
    gids: frozenset[str]

    @classmethod
    def prepare(cls, cluster: PgCluster, dbname: str) -> Foreign:
        gids = {f"foreign-{dbname}", f"xatm/7861746d/othernode.{os.urandom(8).hex()}/{os.urandom(4).hex()}"}
        with cluster.connect(dbname) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS foreign_work (gid text)")
            for gid in gids:
                conn.execute("BEGIN")
                conn.execute("INSERT INTO foreign_work VALUES (%s)", (gid,))
                conn.execute(sql.SQL("PREPARE TRANSACTION {}").format(sql.Literal(gid)))
        return cls(cluster, dbname, frozenset(gids))

    def untouched(self) -> bool:
        return self.gids <= prepared(self.cluster, self.dbname)

    def release(self) -> None:
        """Roll them back, as their owner would."""
        with self.cluster.connect(self.dbname) as conn:
            for gid in self.gids & prepared(self.cluster, self.dbname):
                conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))


def pg_bank_system(
    root: Path, stores: dict[str, PgStore], coordinator_env: dict[str, str] | None = None
) -> BankSystem:
    """BankSystem whose banks keep their accounts in PostgreSQL (``--store``) instead of SQLite."""
    return BankSystem(
        root,
        coordinator_env={**FAST_RECOVERY, **(coordinator_env or {})},
        seeds=(
            ("bank-a", "alice", SEED),
            ("bank-b", "bob", SEED),
        ),
        stores=stores,
    )


@dataclass
class PgBank:
    system: BankSystem
    agent: Proc
    notes: agent_pb2_grpc.AgentStub
    cluster: PgCluster
    foreign: list[Foreign]

    def balances(self) -> dict[str, int]:
        return {account: self.system.balance(bank, account) for bank, account in ACCOUNTS}

    def note(self, text: str) -> None:
        request = agent_pb2.ExecuteRequest(
            sql="INSERT INTO notes VALUES (%s)", params=[agent_pb2.Value(text_value=text)]
        )
        self.notes.Execute(request, timeout=10)

    def settled(self) -> None:
        """No xatm branch is left prepared; the foreign ones are all still there."""
        assert prepared(self.cluster) == {gid for f in self.foreign for gid in f.gids}


@pytest.fixture(scope="module")
def pg_bank(pg_cluster: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PgBank]:
    root = tmp_path_factory.mktemp("pg_bank")
    for dbname in ("e2e_bank_a", "e2e_bank_b", "e2e_notes"):
        pg_cluster.create_database(dbname)
    with pg_cluster.connect("e2e_notes") as conn:
        conn.execute("CREATE TABLE notes (text text PRIMARY KEY)")
    foreign = [Foreign.prepare(pg_cluster, "e2e_bank_a"), Foreign.prepare(pg_cluster, "e2e_bank_b")]
    system = pg_bank_system(
        root, {"bank-a": PgStore(pg_cluster, "e2e_bank_a"), "bank-b": PgStore(pg_cluster, "e2e_bank_b")}
    )
    system.banks["bank-a"].argv += ["--seed", f"carol={SEED}"]
    agent = agent_proc(
        "notes", system.coordinator.address, root, {"XATM_RESOURCE": pg_url(pg_cluster, "e2e_notes")}
    )
    channel, notes = agent_client(agent.address)
    try:
        system.start(bank_env={name: FAST_RECOVERY for name in system.banks})
        agent.start()
        yield PgBank(system, agent, notes, pg_cluster, foreign)
        time.sleep(1)  # a few more recovery passes over the foreign branches
        assert all(f.untouched() for f in foreign), "a foreign prepared transaction was touched"
    finally:
        channel.close()
        agent.stop()
        system.stop()
        for f in foreign:
            f.release()
    assert prepared(pg_cluster) == set()


def test_transfer_commits_on_two_databases(pg_bank: PgBank) -> None:
    before = pg_bank.balances()
    result = pg_bank.system.bank.transfer("alice", "bob", 100)
    assert result.committed, result.detail
    info = pg_bank.system.status(result.gtrid)
    assert info.status == S.COMMITTED and not info.one_phase
    assert codes(info) == {"bank-a": XaCode.XA_OK, "bank-b": XaCode.XA_OK}
    assert [BranchStatus(b.status) for b in info.branches] == [BranchStatus.COMMITTED] * 2
    assert pg_bank.balances() == {**before, "alice": before["alice"] - 100, "bob": before["bob"] + 100}
    pg_bank.settled()


def test_check_violation_votes_rbintegrity(pg_bank: PgBank) -> None:
    system, before = pg_bank.system, pg_bank.balances()
    tx = system.bank.tm.begin()
    with pytest.raises(TransactionRolledBack) as caught, tx:
        assert system.apply("bank-a", "alice", -50 * SEED) == before["alice"]  # vetoed, not failed
        assert system.apply("bank-a", "alice", -1) == before["alice"]  # the vetoed branch takes no more
        system.apply("bank-b", "bob", 50 * SEED)
    assert XaCode.XA_RBINTEGRITY in caught.value.branch_codes.values()
    info = system.status(tx.gtrid)
    assert info.status == S.ROLLEDBACK
    assert codes(info)["bank-a"] == XaCode.XA_RBINTEGRITY
    assert "SQLSTATE 23514" in next(b.last_reason for b in info.branches if b.rm_id == "bank-a")
    assert info.rollback_code == XaCode.XA_RBINTEGRITY
    assert all(b.status == BranchStatus.ROLLEDBACK for b in info.branches)
    assert pg_bank.balances() == before
    pg_bank.settled()


def test_deadlock_one_victim_votes_rbdeadlock_the_other_commits(pg_bank: PgBank) -> None:
    """tx1 moves alice -> carol, tx2 carol -> alice, both on bank-a's database, interleaved."""
    system, before = pg_bank.system, pg_bank.balances()
    both_hold_one = threading.Barrier(2, timeout=10)
    outcomes: dict[str, tuple[str, XaCode | None]] = {}

    def move(name: str, src: str, dst: str) -> None:
        tx = system.bank.tm.begin(timeout=30)
        try:
            with tx:
                system.apply("bank-a", src, -1)
                both_hold_one.wait()
                system.apply("bank-a", dst, 1)  # waits for the other's lock: a deadlock
            outcomes[name] = (tx.gtrid, None)
        except TransactionRolledBack as err:
            outcomes[name] = (tx.gtrid, next(iter(err.branch_codes.values())))

    threads = [
        threading.Thread(target=move, args=("tx1", "alice", "carol")),
        threading.Thread(target=move, args=("tx2", "carol", "alice")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sorted(code or XaCode.XA_OK for _, code in outcomes.values()) == [
        XaCode.XA_OK,
        XaCode.XA_RBDEADLOCK,
    ]
    for gtrid, code in outcomes.values():
        info = system.status(gtrid)
        assert info.status == (S.ROLLEDBACK if code else S.COMMITTED)
        assert codes(info) == {"bank-a": code or XaCode.XA_OK}
    after = pg_bank.balances()
    assert sum(after.values()) == sum(before.values()) and after != before
    pg_bank.settled()


def test_savepoint_rollback_across_two_databases(pg_bank: PgBank) -> None:
    system, before = pg_bank.system, pg_bank.balances()
    with system.bank.tm.begin() as tx:
        system.apply("bank-a", "alice", -10)
        system.apply("bank-b", "bob", 10)
        savepoint = tx.savepoint()
        system.apply("bank-a", "alice", -500)
        system.apply("bank-b", "bob", 500)
        pg_bank.note("after the savepoint")  # a third branch, enlisted after the savepoint
        assert len(tx.status().branches) == 3
        info = tx.rollback_to(savepoint)
        assert sorted(b.rm_id for b in info.branches) == ["bank-a", "bank-b"]  # the later one left
        assert system.apply("bank-a", "alice", 0) == before["alice"] - 10  # earlier work kept
        assert system.apply("bank-b", "bob", 0) == before["bob"] + 10
        pg_bank.note("after the rollback")  # enlists again, as a new branch
    info = system.status(tx.gtrid)
    assert info.status == S.COMMITTED and len(info.branches) == 3
    assert pg_bank.balances() == {**before, "alice": before["alice"] - 10, "bob": before["bob"] + 10}
    with pg_bank.cluster.connect("e2e_notes") as conn:
        assert conn.execute("SELECT text FROM notes").fetchall() == [("after the rollback",)]
    pg_bank.settled()


def test_read_only_branch_gets_no_phase_two(pg_bank: PgBank) -> None:
    system = pg_bank.system
    before, commits = pg_bank.balances(), _results(system, "commit")
    with system.bank.tm.begin() as tx:
        system.apply("bank-a", "alice", -10)
        assert system.apply("bank-b", "bob", 0) == before["bob"]  # reads only
    info = system.status(tx.gtrid)
    assert info.status == S.COMMITTED and not info.one_phase
    assert codes(info) == {"bank-a": XaCode.XA_OK, "bank-b": XaCode.XA_RDONLY}
    assert all(b.status == BranchStatus.COMMITTED for b in info.branches)
    assert _results(system, "commit") - commits == 1  # bank-a only
    assert pg_bank.balances()["alice"] == before["alice"] - 10
    pg_bank.settled()


def test_single_branch_commits_in_one_phase(pg_bank: PgBank) -> None:
    system = pg_bank.system
    before, prepares = pg_bank.balances(), _results(system, "prepare")
    with system.bank.tm.begin() as tx:
        system.apply("bank-b", "bob", 25)
    info = system.status(tx.gtrid)
    assert info.status == S.COMMITTED and info.one_phase
    assert codes(info) == {"bank-b": XaCode.XA_OK}
    assert _results(system, "prepare") == prepares
    assert pg_bank.balances()["bob"] == before["bob"] + 25
    pg_bank.settled()


def _results(system: BankSystem, phase: str) -> float:
    return sum(
        value
        for (name, labels), value in system.metrics().items()
        if name == "xatm_branch_results_total" and ("phase", phase) in labels
    )


@dataclass(frozen=True)
class Outage:
    """PostgreSQL goes down while a two-cluster transfer's branches are prepared.

    ``failpoint`` (armed in the coordinator) holds the transaction in ``window`` long enough for
    the test to stop the cluster of ``victim`` with ``pg_ctl -m stop_mode``; the cluster restarts
    once the coordinator has recorded a failed attempt, and the ``expected`` outcome must then be
    applied on both clusters.
    """

    failpoint: str
    window: S
    victim: str
    stop_mode: str
    expected: S

    def __str__(self) -> str:
        return f"{self.failpoint}-{self.victim}-{self.stop_mode}"


OUTAGES = [Outage("coordinator.after_decision=1*sleep(3000)", S.PREPARED, "bank-b", "immediate", S.COMMITTED)]


@pytest.mark.parametrize("outage", OUTAGES, ids=str)
def test_pg_outage_in_phase_two(outage: Outage, pg_cluster: PgCluster, tmp_path: Path) -> None:
    """bank-a on the session cluster, bank-b on a cluster of its own; the victim's goes down."""
    with PgCluster({"deadlock_timeout": "100ms"}) as other:
        clusters = {"bank-a": pg_cluster, "bank-b": other}
        foreign = []
        for name, cluster in clusters.items():
            cluster.create_database(f"outage_{name[-1]}")
            foreign.append(Foreign.prepare(cluster, f"outage_{name[-1]}"))
        stores = {name: PgStore(cluster, f"outage_{name[-1]}") for name, cluster in clusters.items()}
        system = pg_bank_system(tmp_path, stores, {"XATM_FAILPOINTS": outage.failpoint})
        try:
            system.start(bank_env={name: FAST_RECOVERY for name in system.banks})
            _outage(system, outage, clusters[outage.victim])
            system.coordinator.kill()  # its recovery from the log must leave foreign gids alone too
            system.coordinator.start()
            time.sleep(1)  # several recovery passes of the coordinator and the banks
            assert all(f.untouched() for f in foreign)
            assert system.total() == 2 * SEED
        finally:
            system.stop()
            for f in foreign:
                if f.cluster.running:
                    f.release()
        assert prepared(other) == set()
    assert prepared(pg_cluster, "outage_a") == set()


def _outage(system: BankSystem, outage: Outage, cluster: PgCluster) -> None:
    """Transfer alice -> bob; stop ``cluster`` inside the window, start it after a failed attempt."""
    tx = system.bank.tm.begin(timeout=60)
    failures: list[BaseException] = []

    def stop_in_window() -> None:
        try:
            system.wait_status(tx.gtrid, outage.window, timeout=20)
            cluster.stop(outage.stop_mode)
        except BaseException as err:  # re-raised in the test's thread
            failures.append(err)

    stopper = threading.Thread(target=stop_in_window)
    stopper.start()
    try:
        with tx:  # the commit at the end blocks in the failpoint's window
            system.apply("bank-a", "alice", -100)
            system.apply("bank-b", "bob", 100)
    finally:
        stopper.join(30)
    if failures:
        raise failures[0]
    try:
        deadline = time.monotonic() + 20
        while True:  # the coordinator tried the victim and failed
            info = system.status(tx.gtrid)
            victim = next(b for b in info.branches if b.rm_id == outage.victim)
            if victim.has_last_code and XaCode(victim.last_code) == XaCode.XAER_RMFAIL:
                break
            assert time.monotonic() < deadline, f"no failed attempt on {outage.victim}:\n{info}"
            time.sleep(0.05)
    finally:
        cluster.start()
    info = system.wait_status(tx.gtrid, outage.expected, timeout=60)
    expected = BranchStatus.COMMITTED if outage.expected == S.COMMITTED else BranchStatus.ROLLEDBACK
    assert all(b.status == expected for b in info.branches)
    moved = 100 if outage.expected == S.COMMITTED else 0
    assert (system.balance("bank-a", "alice"), system.balance("bank-b", "bob")) == (
        SEED - moved,
        SEED + moved,
    )
