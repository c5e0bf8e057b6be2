"""A mixed deployment as real processes: bank-a on PostgreSQL, bank-b on MariaDB, and an agent
(``xatm participant --resource mysql://...``) in front of a second MariaDB database.

One global transaction moves money from a PostgreSQL branch to a MariaDB branch and writes a note
through the agent; it commits everywhere or nowhere, and afterwards neither server holds a
prepared branch.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from tests.bank_system import BankSystem, PgStore
from tests.mariadb import MariaDB, MariaStore, mysql_url, xa_prepared
from tests.pgcluster import PgCluster, prepared
from tests.system.test_agent import FAST_RECOVERY, agent_client, agent_proc, integer, text
from xatm.coordinator.tools.procs import Proc, free_port
from xatm.participant import TransactionRolledBack
from xatm.participant.api.v1 import agent_pb2, agent_pb2_grpc
from xatm.participant.xa import BranchStatus, XaCode
from xatm.participant.xa import TxStatus as S

SEED = 1000


@dataclass
class Mixed:
    system: BankSystem
    agent: Proc
    notes: agent_pb2_grpc.AgentStub
    pg: PgCluster
    maria: MariaDB

    def balances(self) -> dict[str, int]:
        return {"alice": self.system.balance("bank-a", "alice"), "bob": self.system.balance("bank-b", "bob")}

    def note(self, value: str, amount: int) -> agent_pb2.ExecuteResponse:
        request = agent_pb2.ExecuteRequest(
            sql="INSERT INTO notes (text, amount) VALUES (%s, %s)", params=[text(value), integer(amount)]
        )
        return self.notes.Execute(request, timeout=10)

    def notes_committed(self) -> list[str]:
        with self.maria.connect("mixed_notes") as conn, conn.cursor() as cur:
            cur.execute("SELECT text FROM notes ORDER BY text")
            return [row[0] for row in cur.fetchall()]

    def settled(self) -> None:
        assert prepared(self.pg) == set()
        assert xa_prepared(self.maria) == []


@pytest.fixture(scope="module")
def mixed(
    pg_cluster: PgCluster, mariadb: MariaDB, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Mixed]:
    root = tmp_path_factory.mktemp("mixed")
    pg_cluster.create_database("mixed_bank_a")
    mariadb.create_database("mixed_bank_b")
    mariadb.create_database("mixed_notes")
    with mariadb.connect("mixed_notes") as conn, conn.cursor() as cur:
        cur.execute(
            "CREATE TABLE notes (text varchar(100) PRIMARY KEY, amount int NOT NULL CHECK (amount > 0))"
        )
    system = BankSystem(
        root,
        coordinator_env=FAST_RECOVERY,
        seeds=(("bank-a", "alice", SEED), ("bank-b", "bob", SEED)),
        stores={"bank-a": PgStore(pg_cluster, "mixed_bank_a"), "bank-b": MariaStore(mariadb, "mixed_bank_b")},
    )
    agent = agent_proc(
        "notes", system.coordinator.address, root, {"XATM_RESOURCE": mysql_url(mariadb, "mixed_notes")}
    )
    channel, notes = agent_client(agent.address)
    try:
        system.start(bank_env={name: FAST_RECOVERY for name in system.banks})
        agent.start()
        yield Mixed(system, agent, notes, pg_cluster, mariadb)
    finally:
        channel.close()
        agent.stop()
        system.stop()
    assert xa_prepared(mariadb) == []


def test_transfer_from_postgresql_to_mariadb_with_a_note_commits_everywhere(mixed: Mixed) -> None:
    system, before = mixed.system, mixed.balances()
    assert system.bank is not None
    with system.bank.tm.begin() as tx:
        system.apply("bank-a", "alice", -100)
        system.apply("bank-b", "bob", 100)
        reply = mixed.note("rent", 100)
        assert reply.rowcount == 1
        echo = mixed.notes.Execute(agent_pb2.ExecuteRequest(sql="SELECT text, amount FROM notes"), timeout=10)
        assert list(echo.columns) == ["text", "amount"]
        assert [(r.values[0].text_value, r.values[1].int_value) for r in echo.rows] == [("rent", 100)]
    info = system.status(tx.gtrid)
    assert info.status == S.COMMITTED and not info.one_phase
    assert {b.rm_id: BranchStatus(b.status) for b in info.branches} == {
        "bank-a": BranchStatus.COMMITTED,
        "bank-b": BranchStatus.COMMITTED,
        "notes": BranchStatus.COMMITTED,
    }
    assert mixed.balances() == {"alice": before["alice"] - 100, "bob": before["bob"] + 100}
    assert mixed.notes_committed() == ["rent"]
    mixed.settled()


def test_a_mariadb_check_violation_rolls_back_the_postgresql_branch_too(mixed: Mixed) -> None:
    system, before, notes = mixed.system, mixed.balances(), mixed.notes_committed()
    assert system.bank is not None
    tx = system.bank.tm.begin()
    with pytest.raises(TransactionRolledBack) as caught, tx:
        system.apply("bank-a", "alice", 50)
        mixed.note("refund", 50)
        assert system.apply("bank-b", "bob", -50 * SEED) == before["bob"]  # vetoed by the CHECK
    assert XaCode.XA_RBINTEGRITY in caught.value.branch_codes.values()
    info = system.status(tx.gtrid)
    assert info.status == S.ROLLEDBACK
    bank_b = next(b for b in info.branches if b.rm_id == "bank-b")
    assert XaCode(bank_b.last_code) == XaCode.XA_RBINTEGRITY
    assert "error 4025" in bank_b.last_reason
    assert mixed.balances() == before
    assert mixed.notes_committed() == notes
    mixed.settled()


def test_a_failed_statement_at_the_agent_aborts_the_call_and_the_transaction(mixed: Mixed) -> None:
    system, before = mixed.system, mixed.balances()
    assert system.bank is not None
    tx = system.bank.tm.begin()
    with pytest.raises(TransactionRolledBack), tx:
        system.apply("bank-b", "bob", 7)
        with pytest.raises(grpc.RpcError) as failed:
            mixed.note("zero", 0)  # the CHECK refuses it
        assert failed.value.code() == grpc.StatusCode.ABORTED
        assert failed.value.details().startswith("XA_RBINTEGRITY: business SQL: error 4025:")
    assert mixed.balances() == before
    mixed.settled()


def test_an_unreachable_mysql_stops_the_agent_with_one_line() -> None:
    port = free_port()  # nothing listens there
    done = subprocess.run(
        [sys.executable, "-m", "xatm", "participant", "--resource", f"mysql://root@127.0.0.1:{port}/x"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith(f"xatm participant: cannot connect to MySQL at 127.0.0.1:{port}: ")
    assert "Traceback" not in done.stderr
