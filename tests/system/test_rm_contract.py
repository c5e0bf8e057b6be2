"""Every resource manager honours the ended-branch rule of participant/stores/base.py.

Once a branch has ended -- its transaction timed out, the coordinator rolled it back, it committed
in two phases or in one -- every handle business code kept on it fails with a clear error, and
nothing done through it commits: not in autocommit, not inside the next branch that gets the same
pooled connection. The same scenarios run against each subject, with a real coordinator process:

* ``sqlite``: a SqliteRM linked into this process through a ParticipantStub; the handle is the xid.
* ``postgresql``: a PostgresRM with a pool of ONE connection on the session's throwaway cluster,
  linked the same way; the handle is ``rm.guard(xid)``'s connection (and its cursors), so a handle
  that outlived its branch would land in the next branch.
* ``agent``: ``xatm participant`` in front of PostgreSQL with a pool of one, as a real process; the
  handle is the transaction's metadata on Execute calls, sent without the initiator's deadline cap
  (which would otherwise stop a late call before it leaves this process).
* ``kv_agent``: the same in front of an embedded SQLite store, with Put calls.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
import psycopg
import pytest

from tests.bank_system import TEST_COORDINATOR_ENV, SqliteStore, coordinator_status, wait_status
from tests.pgcluster import PgCluster, pg_url
from tests.system.test_agent import agent_proc, integer, text
from xatm.coordinator.tools.procs import Proc, coordinator_proc
from xatm.participant import ParticipantStub, TransactionManager, TransactionRolledBack, current
from xatm.participant.api.v1 import agent_pb2, agent_pb2_grpc
from xatm.participant.client.context import GTRID_KEY, to_metadata, use
from xatm.participant.stores.base import BranchEnded, ResourceManager
from xatm.participant.stores.postgresql import PostgresRM
from xatm.participant.stores.sqlite import SqliteRM
from xatm.participant.xa import TxStatus, XaCode, Xid, new_bqual, new_gtrid

#: Transaction timeout of the scenarios that time out, in seconds.
TIMEOUT = 1.0
UPSERT = "INSERT INTO kv VALUES (%s, %s) ON CONFLICT (k) DO UPDATE SET v = excluded.v"
# The same write, still running well after TIMEOUT: the branch ends under it.
SLOW_UPSERT = "INSERT INTO kv SELECT %s, %s FROM pg_sleep(8) ON CONFLICT (k) DO UPDATE SET v = excluded.v"


@dataclass
class Linked:
    """An RM linked into this process: its ParticipantStub on a gRPC server the coordinator calls."""

    rm: ResourceManager
    stub: ParticipantStub
    server: grpc.Server

    @classmethod
    def serve(cls, rm: ResourceManager, coordinator: str) -> Linked:
        server = grpc.server(ThreadPoolExecutor(max_workers=8))
        port = server.add_insecure_port("127.0.0.1:0")
        stub = ParticipantStub(rm, coordinator=coordinator, advertise=f"127.0.0.1:{port}")
        stub.add_to_server(server)
        server.start()
        return cls(rm, stub, server)

    def close(self) -> None:
        self.server.stop(None)
        self.stub.close()
        self.rm.close()


@dataclass
class System:
    coordinator: Proc
    tm: TransactionManager
    witness: Linked  # a second participant, so that a transaction commits in two phases

    def status(self, gtrid: str) -> Any:
        return coordinator_status(self.coordinator.address, gtrid)

    def wait_status(self, gtrid: str, wanted: TxStatus) -> Any:
        return wait_status(self.coordinator.address, gtrid, wanted)

    def witness_write(self, key: str, value: int) -> None:
        witness = self.witness.rm
        assert isinstance(witness, SqliteRM)
        with self.witness.stub.branch() as xid:
            witness.put(xid, key, value)


class Subject(Protocol):
    """One resource manager under the rule, seen the way a service sees it."""

    rm: ResourceManager | None  # None for the agent: its RM lives in another process

    def branch(self) -> contextlib.AbstractContextManager[Any]:
        """Inside an active global transaction: join this RM's branch; yields the handle."""

    def write(self, handle: Any, key: str, value: int) -> None:
        """Set ``key`` to ``value`` through the handle (a business write)."""

    def slow_write(self, handle: Any, key: str, value: int) -> None:
        """The same, still running when a transaction of TIMEOUT seconds times out."""

    def refused(self, handle: Any, call: Callable[[], object]) -> str:
        """Run ``call``, which must fail with this subject's ended-branch error; its message."""

    def committed(self, key: str) -> int | None:
        """The committed value of ``key``, read directly from the store."""


def pg_value(dsn: str, key: str) -> int | None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT v FROM kv WHERE k = %s", (key,)).fetchone()
    return None if row is None else int(row[0])


def kv_database(cluster: PgCluster, name: str) -> str:
    dsn = cluster.create_database(name)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE kv (k text PRIMARY KEY, v int NOT NULL)")
    return dsn


def refused_as_branch_ended(xid: Xid, call: Callable[[], object]) -> str:
    with pytest.raises(BranchEnded) as caught:
        call()
    assert caught.value.xid == xid
    return caught.value.reason


class SqliteSubject:
    def __init__(self, linked: Linked):
        assert isinstance(linked.rm, SqliteRM)
        self.rm = linked.rm
        self.stub = linked.stub

    def branch(self) -> contextlib.AbstractContextManager[Xid]:
        return self.stub.branch()

    def write(self, handle: Xid, key: str, value: int) -> None:
        self.rm.put(handle, key, value)

    def slow_write(self, handle: Xid, key: str, value: int) -> None:
        """Waits for the lock on ``key``, which another branch holds past the timeout."""
        holder = Xid(new_gtrid("holder"), new_bqual())
        self.rm.start(holder)
        self.rm.put(holder, key, -1)
        try:
            self.rm.put(handle, key, value)
        finally:
            self.rm.rollback(holder)

    def refused(self, handle: Xid, call: Callable[[], object]) -> str:
        return refused_as_branch_ended(handle, call)

    def committed(self, key: str) -> int | None:
        value = self.rm.read_committed(key)
        return None if value is None else int(value)


@dataclass(frozen=True)
class SqlDialect:
    """How a SQL database spells the scenarios' writes (``%s`` placeholders: key, value), and
    how a test reads a committed value back."""

    upsert: str
    slow_upsert: str
    read: Callable[[str], int | None]


def pg_dialect(dsn: str) -> SqlDialect:
    return SqlDialect(UPSERT, SLOW_UPSERT, lambda key: pg_value(dsn, key))


class SqlSubject:
    """A SQL RM linked into this process; the handle is ``rm.guard(xid)``'s connection."""

    def __init__(self, linked: Linked, kind: type[ResourceManager], dialect: SqlDialect):
        assert isinstance(linked.rm, kind)
        self.rm: Any = linked.rm
        self.stub = linked.stub
        self.dialect = dialect

    @contextlib.contextmanager
    def branch(self) -> Iterator[Any]:
        with self.stub.branch() as xid, self.rm.guard(xid) as conn:
            yield conn

    def write(self, handle: Any, key: str, value: int) -> None:
        handle.execute(self.dialect.upsert, (key, value))

    def slow_write(self, handle: Any, key: str, value: int) -> None:
        handle.execute(self.dialect.slow_upsert, (key, value))

    def refused(self, handle: Any, call: Callable[[], object]) -> str:
        return refused_as_branch_ended(handle.xid, call)

    def committed(self, key: str) -> int | None:
        return self.dialect.read(key)


Metadata = list[tuple[str, str]]


class AgentSubject:
    """An agent process; the handle is the transaction's metadata."""

    rm = None

    def __init__(self, agent: agent_pb2_grpc.AgentStub):
        self.agent = agent

    @contextlib.contextmanager
    def branch(self) -> Iterator[Metadata]:
        tx = current()
        assert tx is not None
        yield to_metadata(tx)

    def refused(self, handle: Metadata, call: Callable[[], object]) -> str:
        with pytest.raises(grpc.RpcError) as caught:
            call()
        error: Any = caught.value
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION, error.details()
        assert dict(handle)[GTRID_KEY] in error.details()
        return str(error.details())


class SqlAgentSubject(AgentSubject):
    """``Execute`` on an agent in front of a SQL database."""

    def __init__(self, agent: agent_pb2_grpc.AgentStub, dialect: SqlDialect):
        super().__init__(agent)
        self.dialect = dialect

    def _execute(self, metadata: Metadata, sql: str, key: str, value: int) -> None:
        request = agent_pb2.ExecuteRequest(sql=sql, params=[text(key), integer(value)])
        self.agent.Execute(request, metadata=metadata, timeout=30)

    def write(self, handle: Metadata, key: str, value: int) -> None:
        self._execute(handle, self.dialect.upsert, key, value)

    def slow_write(self, handle: Metadata, key: str, value: int) -> None:
        self._execute(handle, self.dialect.slow_upsert, key, value)

    def committed(self, key: str) -> int | None:
        return self.dialect.read(key)


class KvAgentSubject(AgentSubject):
    """``Put`` on an agent in front of an embedded SQLite store."""

    def __init__(self, agent: agent_pb2_grpc.AgentStub, store: SqliteStore, tm: TransactionManager):
        super().__init__(agent)
        self.store = store
        self.tm = tm

    def write(self, handle: Metadata, key: str, value: int) -> None:
        self.agent.Put(agent_pb2.PutRequest(key=key, value=integer(value)), metadata=handle, timeout=30)

    def slow_write(self, handle: Metadata, key: str, value: int) -> None:
        """Waits for the lock on ``key``, which another transaction holds past the timeout."""
        with use(None):  # a second transaction held open beside the caller's own
            holder = self.tm.begin()
        self.write(to_metadata(holder.context), key, -1)
        try:
            self.write(handle, key, value)
        finally:
            holder.rollback()

    def committed(self, key: str) -> int | None:
        return self.store.accounts().get(key)


# ---------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    root = tmp_path_factory.mktemp("contract")
    coordinator = coordinator_proc(root / "coordinator", root, env=TEST_COORDINATOR_ENV)
    coordinator.start()
    witness = Linked.serve(SqliteRM(root / "witness.db", "witness"), coordinator.address)
    try:
        # Eager: the contract cases watch the coordinator time transactions out and roll them back
        # while their work runs, so it must hold each transaction from its begin.
        with TransactionManager(coordinator.address, eager=True) as tm:
            yield System(coordinator, tm, witness)
    finally:
        witness.close()
        coordinator.stop()


@pytest.fixture(scope="module")
def sqlite_subject(system: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SqliteSubject]:
    path = tmp_path_factory.mktemp("contract-sqlite") / "store.db"
    # Lock waits outlast TIMEOUT, so a waiting call is still running when its branch ends.
    linked = Linked.serve(SqliteRM(path, "contract-sqlite", lock_timeout=10), system.coordinator.address)
    yield SqliteSubject(linked)
    linked.close()


@pytest.fixture(scope="module")
def postgresql_subject(system: System, pg_cluster: PgCluster) -> Iterator[SqlSubject]:
    dsn = kv_database(pg_cluster, "contract_rm")
    rm = PostgresRM(dsn, "contract-pg", pool_size=1)
    linked = Linked.serve(rm, system.coordinator.address)
    yield SqlSubject(linked, PostgresRM, pg_dialect(dsn))
    linked.close()


@contextlib.contextmanager
def running_agent(system: System, root: Path, resource: str) -> Iterator[agent_pb2_grpc.AgentStub]:
    """``xatm participant`` with a pool of one in front of ``resource``; a client that is not
    intercepted (see the module doc)."""
    env = {"XATM_RESOURCE": resource, "XATM_POOL_SIZE": "1"}
    agent = agent_proc(f"contract-{root.name}", system.coordinator.address, root, env)
    agent.start()
    try:
        with grpc.insecure_channel(agent.address) as channel:
            yield agent_pb2_grpc.AgentStub(channel)
    finally:
        agent.stop()


@pytest.fixture(scope="module")
def agent_subject(
    system: System, pg_cluster: PgCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SqlAgentSubject]:
    dsn = kv_database(pg_cluster, "contract_agent")
    root = tmp_path_factory.mktemp("agent-pg")
    with running_agent(system, root, pg_url(pg_cluster, "contract_agent")) as agent:
        yield SqlAgentSubject(agent, pg_dialect(dsn))


@pytest.fixture(scope="module")
def kv_agent_subject(system: System, tmp_path_factory: pytest.TempPathFactory) -> Iterator[KvAgentSubject]:
    root = tmp_path_factory.mktemp("agent-kv")
    with running_agent(system, root, f"sqlite:{root / 'kv.db'}") as agent:
        yield KvAgentSubject(agent, SqliteStore(root / "kv.db"), system.tm)


@pytest.fixture(params=["sqlite", "postgresql", "agent", "kv_agent"])
def subject(request: pytest.FixtureRequest) -> Subject:
    return request.getfixturevalue(f"{request.param}_subject")


@pytest.fixture
def key() -> Callable[[str], str]:
    """Keys of this test alone: the stores are shared by the module."""
    prefix = uuid.uuid4().hex[:12]
    return lambda name: f"{prefix}-{name}"


# ---------------------------------------------------------------- the rule, for every subject


def test_work_after_the_transaction_timed_out(subject: Subject, system: System, key: Any) -> None:
    """The reported fault: UPDATE a, sleep past the timeout, UPDATE b -- b must not commit."""
    tx = system.tm.begin(timeout=TIMEOUT)
    with pytest.raises(TransactionRolledBack), tx, subject.branch() as handle:
        subject.write(handle, key("a"), 1)
        system.wait_status(tx.gtrid, TxStatus.ROLLEDBACK)  # timed out; the branch is rolled back
        reason = subject.refused(handle, lambda: subject.write(handle, key("b"), 2))
    assert "rolled back" in reason.lower().replace("rolledback", "rolled back")
    assert (subject.committed(key("a")), subject.committed(key("b"))) == (None, None)


def test_work_after_the_coordinators_rollback(subject: Subject, system: System, key: Any) -> None:
    with system.tm.begin() as tx, subject.branch() as handle:
        subject.write(handle, key("a"), 1)
        tx.rollback()
        reason = subject.refused(handle, lambda: subject.write(handle, key("b"), 2))
    assert "rolled back" in reason.lower().replace("rolledback", "rolled back")
    assert system.status(tx.gtrid).status == TxStatus.ROLLEDBACK
    assert (subject.committed(key("a")), subject.committed(key("b"))) == (None, None)


def test_work_after_two_phase_commit(subject: Subject, system: System, key: Any) -> None:
    with system.tm.begin() as tx:
        with subject.branch() as handle:
            subject.write(handle, key("a"), 1)
        system.witness_write(key("a"), 1)
    info = system.status(tx.gtrid)
    assert (info.status, info.one_phase, len(info.branches)) == (TxStatus.COMMITTED, False, 2)
    reason = subject.refused(handle, lambda: subject.write(handle, key("b"), 2))
    assert "committed" in reason.lower()
    assert (subject.committed(key("a")), subject.committed(key("b"))) == (1, None)


def test_work_after_one_phase_commit(subject: Subject, system: System, key: Any) -> None:
    with system.tm.begin() as tx, subject.branch() as handle:
        subject.write(handle, key("a"), 1)
    info = system.status(tx.gtrid)
    assert (info.status, info.one_phase) == (TxStatus.COMMITTED, True)
    reason = subject.refused(handle, lambda: subject.write(handle, key("b"), 2))
    assert "committed" in reason.lower()
    assert (subject.committed(key("a")), subject.committed(key("b"))) == (1, None)


def test_handle_kept_into_the_next_transaction(subject: Subject, system: System, key: Any) -> None:
    """With a pool of one the next branch gets the very connection the stale handle wrapped: the
    handle must not reach it, so the next transaction commits exactly its own work."""
    with system.tm.begin(), subject.branch() as stale:
        subject.write(stale, key("a"), 1)
    with system.tm.begin() as second, subject.branch() as handle:
        subject.write(handle, key("c"), 3)
        subject.refused(stale, lambda: subject.write(stale, key("b"), 2))
        subject.write(handle, key("c"), 4)  # the live branch is untouched by the refusal
    assert system.status(second.gtrid).status == TxStatus.COMMITTED
    values = [subject.committed(key(name)) for name in "abc"]
    assert values == [1, None, 4]


def test_call_running_when_the_branch_ends(subject: Subject, system: System, key: Any) -> None:
    """A call still running when the transaction times out is cut short with the same error, and
    its work is gone -- it does not finish later in autocommit."""
    tx = system.tm.begin(timeout=TIMEOUT)
    with pytest.raises(TransactionRolledBack), tx, subject.branch() as handle:
        subject.write(handle, key("a"), 1)
        reason = subject.refused(handle, lambda: subject.slow_write(handle, key("b"), 2))
    assert "rolled back" in reason.lower().replace("rolledback", "rolled back")
    system.wait_status(tx.gtrid, TxStatus.ROLLEDBACK)
    assert (subject.committed(key("a")), subject.committed(key("b"))) == (None, None)
    with system.tm.begin(), subject.branch() as handle:  # and the RM serves the next branch
        subject.write(handle, key("c"), 3)
    assert subject.committed(key("c")) == 3


@pytest.mark.parametrize("subject", ["sqlite", "postgresql"], indirect=True)
def test_an_ended_xid_cannot_start_again(subject: Subject, system: System, key: Any) -> None:
    """A late call of the stub (start of an xid the coordinator already rolled back) must not open
    a fresh transaction under the old xid, which nobody would ever end."""
    rm = subject.rm
    assert rm is not None
    with system.tm.begin() as tx, subject.branch() as handle:
        subject.write(handle, key("a"), 1)
        tx.rollback()
    (branch,) = system.status(tx.gtrid).branches
    xid = Xid(tx.gtrid, branch.bqual)
    with pytest.raises(BranchEnded) as caught:
        rm.start(xid)
    assert (caught.value.xid, caught.value.code) == (xid, XaCode.XAER_DUPID)
    assert "rolled back" in caught.value.reason
    with system.tm.begin(), subject.branch() as handle:  # the RM's one connection is free again
        subject.write(handle, key("c"), 3)
    assert (subject.committed(key("a")), subject.committed(key("c"))) == (None, 3)


# ---------------------------------------------------------------- PostgreSQL's derived handles


@pytest.mark.parametrize("subject", ["postgresql"], indirect=True)
def test_cursors_and_blocks_die_with_their_branch(subject: Subject, system: System, key: Any) -> None:
    """Cursors, results and ``transaction()`` blocks made before the end are dead after it too, and
    the session they were bound to goes back to the pool clean (here: the only one)."""
    with system.tm.begin() as tx, subject.branch() as conn:
        subject.write(conn, key("a"), 1)
        cursor = conn.cursor()
        result = conn.execute("SELECT k, v FROM kv WHERE k = %s", (key("a"),))
        with cursor.copy("COPY kv (k, v) FROM STDIN") as copy:
            copy.write_row((key("f"), 6))
        with pytest.raises(BranchEnded), conn.transaction():  # open when the branch ends
            subject.write(conn, key("b"), 2)
            tx.rollback()
        for call in (
            lambda: cursor.execute(UPSERT, (key("c"), 3)),
            lambda: result.fetchall(),
            lambda: list(result),
            lambda: cursor.connection,
            lambda: copy.write_row((key("g"), 7)),
            lambda: conn.execute("SELECT 1"),
            lambda: conn.info,
        ):
            subject.refused(conn, call)
    with system.tm.begin(), subject.branch() as conn:
        subject.write(conn, key("d"), 4)
        with conn.transaction():  # a session that had a block open was not reused as it was
            subject.write(conn, key("e"), 5)
    assert [subject.committed(key(name)) for name in "abcdefg"] == [None, None, None, 4, 5, None, None]
