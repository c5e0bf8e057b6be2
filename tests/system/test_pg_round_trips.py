"""What a PostgresRM branch costs on the wire: the statements and round trips the server sees.

The RM reaches the session's throwaway cluster (tests/conftest.py) through a proxy that counts
the client's protocol messages (tests/pg_wire.py). Counts are taken after warm-up branches, once
the pools hold their connections and the repeated statements are prepared: what is left is what
every further branch pays.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from tests.latency_proxy import LatencyProxy
from tests.pg_wire import FrontendTally, Tally
from tests.pgcluster import PgCluster, prepared
from tests.rm_support import closing_factory, xa_code
from xatm.participant.stores.postgresql import PostgresRM
from xatm.participant.xa import XaCode, XaError, Xid, new_bqual, new_gtrid

_DB = "xatm_wire"
_WARM_UP = 6  # more than psycopg's prepare_threshold (5): the business statements are prepared by then
_BRANCHES = 4


@pytest.fixture(scope="module")
def wire_db(pg_cluster: PgCluster) -> str:
    with pg_cluster.connect() as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {_DB}")
    dsn = pg_cluster.create_database(_DB)
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL)")
        conn.execute("INSERT INTO accounts VALUES (1, 1000), (2, 1000)")
        conn.execute(
            "CREATE FUNCTION bump(n int) RETURNS int LANGUAGE sql"
            " AS 'UPDATE accounts SET balance = balance + n WHERE id = 2 RETURNING balance'"
        )
    return dsn


@pytest.fixture
def tally() -> FrontendTally:
    return FrontendTally()


@pytest.fixture
def make_rm(pg_cluster: PgCluster, wire_db: str, tally: FrontendTally) -> Iterator[Callable[..., PostgresRM]]:
    """RMs whose every connection goes through the counting proxy."""
    with LatencyProxy(f"127.0.0.1:{pg_cluster.port}", delay=0, tap=tally.stream) as proxy:
        host, _, port = proxy.address.rpartition(":")
        dsn = f"host={host} port={port} user=postgres dbname={_DB} sslmode=disable gssencmode=disable"
        yield from closing_factory(lambda **options: PostgresRM(dsn, "pg-wire", **options))
    left = prepared(pg_cluster, _DB)
    with pg_cluster.connect(_DB) as conn:  # clean up first, so one failure does not cascade
        for gid in left:
            conn.execute(psycopg.sql.SQL("ROLLBACK PREPARED {}").format(psycopg.sql.Literal(gid)))
    assert left == set(), f"prepared transactions left behind: {left}"


def balances(dsn: str) -> dict[int, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return dict(conn.execute("SELECT id, balance FROM accounts ORDER BY id").fetchall())


def per_branch(tally: FrontendTally, branch: Callable[[], None]) -> Tally:
    """Run ``branch`` for warm-up, then ``_BRANCHES`` more times; the wire cost of one of those."""
    for _ in range(_WARM_UP):
        branch()
    before = tally.snapshot()
    for _ in range(_BRANCHES):
        branch()
    spent = tally.snapshot() - before
    assert all(count % _BRANCHES == 0 for count in spent.messages.values()), spent
    return Tally(type(spent.messages)({kind: n // _BRANCHES for kind, n in spent.messages.items()}))


def new_xid() -> Xid:
    return Xid(new_gtrid("pgwire"), new_bqual())


def until_reconnected(call: Callable[[], object]) -> None:
    """``call()`` again while it answers XAER_RMFAIL (up to 30 s), as the coordinator and the
    initiator do: the pools reconnect in the background, with backoff, each on its own."""
    deadline = time.monotonic() + 30
    while True:
        try:
            call()
            return
        except XaError as error:
            assert error.code == XaCode.XAER_RMFAIL and time.monotonic() < deadline, error
            time.sleep(0.2)


def two_prepared(rm: PostgresRM) -> tuple[Xid, Xid]:
    """Two branches prepared, one adding 1 to account 1, the other 1 to account 2."""
    xids = new_xid(), new_xid()
    for xid, row in zip(xids, (1, 2), strict=True):
        rm.start(xid)
        with rm.guard(xid) as conn:
            conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (1, row))
        assert rm.prepare(xid) == XaCode.XA_OK
    return xids


_DEBIT = ("UPDATE accounts SET balance = balance - %s WHERE id = %s", (1, 1))
_CREDIT = ("UPDATE accounts SET balance = balance + %s WHERE id = %s", (1, 2))
_READ = ("SELECT balance FROM accounts WHERE id = %s", (1,))
_HIDDEN_WRITE = ("SELECT bump(%s)", (1,))  # writes, but reports only the row it selected


@pytest.mark.parametrize(
    ("statements", "ending", "cost", "moved"),
    [
        # BEGIN, the two UPDATEs, PREPARE TRANSACTION, COMMIT PREPARED: no pool check, no read-only check
        pytest.param([_DEBIT, _CREDIT], "two-phase", 5, {1: -1, 2: 1}, id="writes"),
        # BEGIN, the SELECT, the read-only check (it finds the transaction id), PREPARE, COMMIT PREPARED
        pytest.param([_HIDDEN_WRITE], "two-phase", 5, {1: 0, 2: 1}, id="hidden-write"),
        # BEGIN, the SELECT, the read-only check, COMMIT; no phase two
        pytest.param([_READ], "read-only", 4, {1: 0, 2: 0}, id="reads"),
        # BEGIN, the UPDATE, COMMIT
        pytest.param([_DEBIT], "one-phase", 3, {1: -1, 2: 0}, id="one-phase"),
    ],
)
def test_statements_and_round_trips_per_branch(
    make_rm: Callable[..., PostgresRM],
    tally: FrontendTally,
    wire_db: str,
    pg_cluster: PgCluster,
    statements: list[tuple[str, tuple[int, ...]]],
    ending: str,
    cost: int,
    moved: dict[int, int],
) -> None:
    """Each statement is one round trip, and none is parsed again once warmed up; a branch that
    only read answers XA_RDONLY and leaves nothing prepared for a phase two."""
    rm = make_rm(pool_size=1)
    start = balances(wire_db)
    xids: list[Xid] = []

    def branch() -> None:
        xid = new_xid()
        xids.append(xid)
        rm.start(xid)
        with rm.guard(xid) as conn:
            for query, params in statements:
                conn.execute(query, params)
        if ending == "one-phase":
            rm.commit(xid, one_phase=True)
        elif ending == "read-only":
            assert rm.prepare(xid) == XaCode.XA_RDONLY
        else:
            assert rm.prepare(xid) == XaCode.XA_OK
            rm.commit(xid, one_phase=False)

    spent = per_branch(tally, branch)
    assert (spent.statements, spent.round_trips, spent.parses) == (cost, cost, 0), spent
    times = _WARM_UP + _BRANCHES
    assert balances(wire_db) == {row: start[row] + delta * times for row, delta in moved.items()}
    assert prepared(pg_cluster, _DB) == set()
    if ending == "read-only":
        assert xa_code(lambda: rm.commit(xids[-1], one_phase=False)) == XaCode.XAER_NOTA


def test_writes_that_touch_no_row_leave_the_branch_read_only(
    make_rm: Callable[..., PostgresRM], pg_cluster: PgCluster, wire_db: str
) -> None:
    """An UPDATE or DELETE matching nothing and an INSERT that does nothing on conflict report 0
    rows and assign no transaction id: the check runs and the branch answers XA_RDONLY."""
    rm = make_rm()
    start = balances(wire_db)
    xid = new_xid()
    rm.start(xid)
    with rm.guard(xid) as conn:
        assert conn.execute("UPDATE accounts SET balance = 0 WHERE id = %s", (99,)).rowcount == 0
        assert conn.execute("DELETE FROM accounts WHERE id = %s", (99,)).rowcount == 0
        cur = conn.execute("INSERT INTO accounts VALUES (%s, 0) ON CONFLICT (id) DO NOTHING", (1,))
        assert cur.rowcount == 0
    assert rm.prepare(xid) == XaCode.XA_RDONLY
    assert prepared(pg_cluster, _DB) == set()
    assert balances(wire_db) == start


def test_pooled_connections_that_died_while_idle_are_replaced_on_first_use(
    make_rm: Callable[..., PostgresRM], wire_db: str
) -> None:
    """Nothing checks a connection before use: the first statement on a dead one fails before any
    work, and the RM takes another -- for a branch's BEGIN and for COMMIT PREPARED alike."""
    rm = make_rm(pool_size=2)
    start = balances(wire_db)
    first, second = two_prepared(rm)
    rm.commit(first, one_phase=False)  # the phase-two pool now holds a connection too
    with psycopg.connect(wire_db, autocommit=True) as admin:
        killed = admin.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE datname = current_database() AND pid <> pg_backend_pid()"
        ).fetchone()
    assert killed is not None and killed[0] >= 2
    rm.commit(second, one_phase=False)
    third = new_xid()
    rm.start(third)
    with rm.guard(third) as conn:
        conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (1, 1))
    assert rm.prepare(third) == XaCode.XA_OK
    rm.commit(third, one_phase=False)
    assert balances(wire_db) == {1: start[1] + 2, 2: start[2] + 1}


def test_a_server_that_is_down_fails_start_and_phase_two_with_rmfail_then_serves_again(
    make_rm: Callable[..., PostgresRM], pg_cluster: PgCluster, wire_db: str
) -> None:
    """With every pooled connection dead and no new one to be had, the RM stops trying after the
    acquire timeout: XAER_RMFAIL, as with checked connections. Once the server is back, both paths
    work without a restart of the RM."""
    rm = make_rm(pool_size=2, acquire_timeout_s=1.0)
    start = balances(wire_db)
    warm, prepared_xid = two_prepared(rm)
    rm.commit(warm, one_phase=False)  # the phase-two pool now holds a connection too
    pg_cluster.stop("fast")
    try:
        assert xa_code(lambda: rm.start(new_xid())) == XaCode.XAER_RMFAIL
        assert xa_code(lambda: rm.commit(prepared_xid, one_phase=False)) == XaCode.XAER_RMFAIL
    finally:
        pg_cluster.start()
    after = new_xid()
    until_reconnected(lambda: rm.commit(prepared_xid, one_phase=False))
    until_reconnected(lambda: rm.start(after))
    with rm.guard(after) as conn:
        conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (1, 1))
    rm.commit(after, one_phase=True)
    assert balances(wire_db) == {1: start[1] + 2, 2: start[2] + 1}
