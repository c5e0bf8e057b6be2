"""``xatm participant``: the standalone agent as a real process, in front of PostgreSQL and SQLite.

One coordinator and two agents serve the whole module: ``pg`` (PostgreSQL, configured by flags
and XATM_RESOURCE) and ``kv`` (SQLite, configured by XATM_* variables only). Start-up failures
run the command itself and check its exit code and message. How its settings resolve is checked
in process in tests/unit/test_agent.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.bank_system import TEST_COORDINATOR_ENV
from tests.pgcluster import PgCluster, pg_url
from xatm.coordinator.tools.procs import Proc, coordinator_proc, free_port
from xatm.participant import TransactionManager, TransactionRolledBack, intercept_channel
from xatm.participant.agent.server import XA_CODE_KEY
from xatm.participant.api.v1 import (
    agent_pb2,
    agent_pb2_grpc,
    coordinator_pb2,
    coordinator_pb2_grpc,
    xa_pb2,
)
from xatm.participant.xa import BranchStatus, TxStatus, XaCode

XATM = str(Path(sys.executable).parent / "xatm")
#: In-doubt resolution every 0.3 s, so the tests see it run against their prepared branches.
FAST_RECOVERY = {"XATM_RECOVERY_INTERVAL": "0.3"}


def agent_proc(name: str, coordinator: str, log_dir: Path, env: dict[str, str]) -> Proc:
    """``xatm participant`` on free ports; the resource and anything else come from ``env``."""
    port, http = free_port(), free_port()
    argv = ["-m", "xatm", "participant", "--listen", f"127.0.0.1:{port}"]
    argv += ["--http-listen", f"127.0.0.1:{http}", "--coordinator", coordinator, "--rm-id", name]
    return Proc(
        name,
        argv,
        f"127.0.0.1:{port}",
        log_dir / f"{name}.log",
        {**FAST_RECOVERY, **env},
        f"127.0.0.1:{http}",
    )


def agent_client(address: str) -> tuple[grpc.Channel, agent_pb2_grpc.AgentStub]:
    """A client whose calls carry the active transaction, as an initiator's do."""
    channel = grpc.insecure_channel(address)
    return channel, agent_pb2_grpc.AgentStub(intercept_channel(channel))


def text(value: str) -> agent_pb2.Value:
    return agent_pb2.Value(text_value=value)


def integer(value: int) -> agent_pb2.Value:
    return agent_pb2.Value(int_value=value)


@dataclass
class Agents:
    coordinator: Proc
    pg: Proc
    kv: Proc
    cluster: PgCluster
    dbname: str
    tm: TransactionManager
    sql: agent_pb2_grpc.AgentStub
    store: agent_pb2_grpc.AgentStub

    def execute(self, sql: str, *params: agent_pb2.Value) -> agent_pb2.ExecuteResponse:
        return self.sql.Execute(agent_pb2.ExecuteRequest(sql=sql, params=params), timeout=10)

    def rows(self, query: str) -> list[tuple[object, ...]]:
        """Committed rows, read directly from PostgreSQL."""
        with self.cluster.connect(self.dbname) as conn:
            return conn.execute(query).fetchall()

    def status(self, gtrid: str) -> xa_pb2.TransactionInfo:
        with grpc.insecure_channel(self.coordinator.address) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            return stub.GetStatus(coordinator_pb2.StatusRequest(gtrid=gtrid), timeout=5)


@pytest.fixture(scope="module")
def agents(pg_cluster: PgCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Agents]:
    root = tmp_path_factory.mktemp("agents")
    dbname = "agent_items"
    pg_cluster.create_database(dbname)
    with pg_cluster.connect(dbname) as conn:
        conn.execute("CREATE TABLE items (name text PRIMARY KEY, qty int NOT NULL CHECK (qty >= 0))")
        conn.execute("INSERT INTO items VALUES ('apple', 10), ('pear', 5)")
    coordinator = coordinator_proc(root / "coordinator", root, env={**TEST_COORDINATOR_ENV, **FAST_RECOVERY})
    address = coordinator.address
    pg = agent_proc("agent-pg", address, root, {"XATM_RESOURCE": pg_url(pg_cluster, dbname)})
    kv = Proc(  # configured through the environment alone
        "agent-kv",
        ["-m", "xatm", "participant"],
        f"127.0.0.1:{free_port()}",
        root / "agent-kv.log",
        {"XATM_RESOURCE": f"sqlite:{root / 'kv.db'}", "XATM_COORDINATOR": address, **FAST_RECOVERY},
    )
    kv.env |= {"XATM_LISTEN": kv.address, "XATM_HTTP_LISTEN": f"127.0.0.1:{free_port()}"}
    channels: list[grpc.Channel] = []
    try:
        for proc in (coordinator, pg, kv):
            proc.start()
        (sql_channel, sql), (kv_channel, store) = agent_client(pg.address), agent_client(kv.address)
        channels += [sql_channel, kv_channel]
        with TransactionManager(address) as tm:
            yield Agents(coordinator, pg, kv, pg_cluster, dbname, tm, sql, store)
    finally:
        for channel in channels:
            channel.close()
        for proc in (kv, pg, coordinator):
            proc.stop()
    with pg_cluster.connect() as conn:
        assert conn.execute("SELECT gid FROM pg_prepared_xacts").fetchall() == []


def test_execute_and_put_commit_together_in_two_phases(agents: Agents) -> None:
    with agents.tm.begin() as tx:
        done = agents.execute("UPDATE items SET qty = qty - %s WHERE name = %s", integer(3), text("apple"))
        assert (done.status, done.rowcount, list(done.columns)) == ("UPDATE 1", 1, [])
        agents.store.Put(agent_pb2.PutRequest(key="apple-orders", value=integer(1)), timeout=10)
        seen = agents.execute("SELECT qty FROM items WHERE name = 'apple'")  # the branch sees its own work
        assert [list(row.values) for row in seen.rows] == [[integer(7)]]
        assert agents.rows("SELECT qty FROM items WHERE name = 'apple'") == [(10,)]  # not yet committed
    info = agents.status(tx.gtrid)
    assert info.status == TxStatus.COMMITTED and not info.one_phase
    assert {b.rm_id: XaCode(b.last_code) for b in info.branches} == {
        "agent-pg": XaCode.XA_OK,
        "kv": XaCode.XA_OK,  # the default rm id: the store file's name
    }
    assert agents.rows("SELECT qty FROM items WHERE name = 'apple'") == [(7,)]
    with agents.tm.begin():
        got = agents.store.Get(agent_pb2.GetRequest(key="apple-orders"), timeout=10)
        missing = agents.store.Get(agent_pb2.GetRequest(key="nothing"), timeout=10)
    assert got.value == integer(1) and not missing.HasField("value")


def test_rollback_undoes_execute(agents: Agents) -> None:
    tx = agents.tm.begin()
    with tx:
        agents.execute("INSERT INTO items VALUES (%s, %s)", text("plum"), integer(1))
        agents.execute("DELETE FROM items WHERE name = 'pear'")
        tx.rollback()
    assert agents.status(tx.gtrid).status == TxStatus.ROLLEDBACK
    assert agents.rows("SELECT name, qty FROM items WHERE name IN ('plum', 'pear')") == [("pear", 5)]


def test_failed_statement_votes_its_code_and_dooms_the_transaction(agents: Agents) -> None:
    tx = agents.tm.begin()
    with pytest.raises(TransactionRolledBack), tx:
        agents.execute("UPDATE items SET qty = qty - 1 WHERE name = 'pear'")
        with pytest.raises(grpc.RpcError) as caught:
            agents.execute("UPDATE items SET qty = qty - 100 WHERE name = 'apple'")
        error = caught.value
        assert error.code() == grpc.StatusCode.ABORTED
        assert error.details().startswith("XA_RBINTEGRITY: business SQL: SQLSTATE 23514: ")
        assert (XA_CODE_KEY, "XA_RBINTEGRITY") in error.trailing_metadata()
    info = agents.status(tx.gtrid)
    assert info.status == TxStatus.ROLLEDBACK
    assert "XA_RBINTEGRITY" in info.rollback_reason
    assert [BranchStatus(b.status) for b in info.branches] == [BranchStatus.ROLLEDBACK]
    assert agents.rows("SELECT qty FROM items WHERE name = 'pear'") == [(5,)]


def test_refused_calls_leave_the_transaction_alone(agents: Agents) -> None:
    def refused(call: object) -> tuple[grpc.StatusCode, str]:
        with pytest.raises(grpc.RpcError) as caught:
            call()  # type: ignore[operator]
        return caught.value.code(), caught.value.details()

    outside = refused(lambda: agents.execute("SELECT 1"))
    assert outside[0] == grpc.StatusCode.FAILED_PRECONDITION and "no global transaction" in outside[1]
    with agents.tm.begin() as tx:
        for statement in (
            "COMMIT",
            "  rollback",
            "/* sneaky */ -- really\n PREPARE TRANSACTION 'x'",
            "begin",
        ):
            code, message = refused(lambda statement=statement: agents.execute(statement))
            assert (
                code == grpc.StatusCode.INVALID_ARGUMENT and "the coordinator owns the transaction" in message
            )
        assert refused(lambda: agents.execute("  "))[0] == grpc.StatusCode.INVALID_ARGUMENT
        code, message = refused(
            lambda: agents.store.Execute(agent_pb2.ExecuteRequest(sql="SELECT 1"), timeout=5)
        )
        assert code == grpc.StatusCode.UNIMPLEMENTED and "use Get and Put" in message
        code, message = refused(lambda: agents.sql.Get(agent_pb2.GetRequest(key="k"), timeout=5))
        assert code == grpc.StatusCode.UNIMPLEMENTED and "use Execute" in message
        bad_value = agent_pb2.PutRequest(key="k", value=agent_pb2.Value(double_value=1.5))
        assert refused(lambda: agents.store.Put(bad_value, timeout=5))[0] == grpc.StatusCode.INVALID_ARGUMENT
        agents.execute("UPDATE items SET qty = qty WHERE name = 'pear'")
    assert agents.status(tx.gtrid).status == TxStatus.COMMITTED


def test_values_round_trip(agents: Agents) -> None:
    params = [
        agent_pb2.Value(bool_value=True),
        integer(-(2**63)),
        agent_pb2.Value(double_value=2.5),
        text("héllo"),
        agent_pb2.Value(bytes_value=b"\x00\xff"),
        agent_pb2.Value(),
    ]
    query = "SELECT %s::bool, %s::bigint, %s::float8, %s::text, %s::bytea, %s::int, 1.50::numeric,"
    query += " '2024-01-02'::date, '{\"a\": [1]}'::jsonb, ARRAY[1, 2], 100 AS pct"
    with agents.tm.begin() as tx:
        result = agents.execute(query, *params)
        percent = agents.execute("SELECT '50%%' || %s", text("!"))  # with params, % is written %%
    assert list(result.rows[0].values) == [
        *params,
        text("1.50"),
        text("2024-01-02"),
        text('{"a": [1]}'),
        text("[1, 2]"),
        integer(100),
    ]
    assert result.columns[-1] == "pct" and result.rowcount == 1 and not result.truncated
    assert percent.rows[0].values[0] == text("50%!")
    info = agents.status(tx.gtrid)  # a read-only branch: one phase, nothing written
    assert info.status == TxStatus.COMMITTED and info.one_phase


def _metrics(address: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
        families = text_string_to_metric_families(resp.read().decode())
    return {(s.name, tuple(sorted(s.labels.items()))): s.value for f in families for s in f.samples}


def test_health_metrics_and_healthz(agents: Agents) -> None:
    with grpc.insecure_channel(agents.pg.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "xatm.v1.Participant", "xatm.v1.Agent"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
    with urllib.request.urlopen(f"http://{agents.pg.http}/healthz", timeout=5) as resp:
        assert json.loads(resp.read()) == {"status": "ok", "rm_id": "agent-pg", "resource": "postgresql"}
    with agents.tm.begin():
        agents.execute("UPDATE items SET qty = qty WHERE name = 'apple'")
    calls = _metrics(agents.pg.http)
    key = ("xatm_participant_calls_total", (("code", "XA_OK"), ("verb", "commit")))
    assert calls[key] >= 1
    assert calls[("xatm_participant_call_duration_seconds_count", (("verb", "commit"),))] >= 1


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([XATM, "participant", *args], capture_output=True, text=True, timeout=60, env=env)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ((), "--resource (or XATM_RESOURCE) is required"),
        (("--resource", "oracle://db/x"), "unsupported resource 'oracle://db/x'"),
        (
            ("--resource", "mysql://db/x"),
            "malformed MySQL URL: expected mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE",
        ),
        (("--resource", "sqlite:"), "mysql://USER[:PASSWORD]@HOST[:PORT]/DBNAME or sqlite:PATH"),
        (("--resource", "postgresql://h/db?nosuch=1"), "malformed PostgreSQL URI in --resource: invalid URI"),
        (("--resource", "sqlite:x.db", "--listen", "no-port"), "--listen 'no-port' must be HOST:PORT"),
        (("--resource", "sqlite:x.db", "--pool-size", "0"), "--pool-size must be >= 1"),
    ],
)
def test_bad_flags_exit_2(args: tuple[str, ...], message: str) -> None:
    done = _run(*args, env={k: v for k, v in os.environ.items() if not k.startswith("XATM_")})
    assert done.returncode == 2, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr


def test_database_that_cannot_prepare_or_be_reached_stops_the_agent_at_start() -> None:
    with PgCluster(max_prepared_transactions=0) as cluster:
        done = _run("--resource", pg_url(cluster, "postgres"), "--listen", f"127.0.0.1:{free_port()}")
    assert done.returncode == 1
    assert done.stderr.strip().endswith(
        f"PostgreSQL at 127.0.0.1:{cluster.port} has max_prepared_transactions = 0; "
        "set it > 0 (e.g. 100) and restart it to use xatm"
    )
    port = free_port()  # nothing listens there
    done = _run("--resource", f"postgresql://postgres@127.0.0.1:{port}/db?connect_timeout=2")
    assert done.returncode == 1 and f"cannot connect to PostgreSQL at 127.0.0.1:{port}" in done.stderr


def test_every_xatm_command_registers_the_agent_without_loading_it() -> None:
    """The subcommand is registered for `xatm coordinator` too: it must not drag the stub's metrics in."""
    probe = (
        "import sys, xatm.coordinator.cli.main as c; c.build_parser(); print(sorted(set(sys.modules) & {m}))"
    )
    heavy = {
        "xatm.participant.metrics",
        "xatm.participant.stub",
        "xatm.participant.stores.postgresql",
        "psycopg",
    }
    done = subprocess.run(
        [sys.executable, "-c", probe.replace("{m}", repr(heavy))], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "[]", done.stdout + done.stderr
