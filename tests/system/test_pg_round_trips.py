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


def test_a_branch_that_writes_costs_begin_its_statements_prepare_and_commit_prepared(
    make_rm: Callable[..., PostgresRM], tally: FrontendTally, wire_db: str
) -> None:
    """No pool check, no read-only check: BEGIN, two UPDATEs, PREPARE TRANSACTION, COMMIT PREPARED --
    five statements, five round trips, nothing parsed again."""
    rm = make_rm(pool_size=1)
    start = balances(wire_db)

    def branch() -> None:
        xid = new_xid()
        rm.start(xid)
        with rm.guard(xid) as conn:
            conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (1, 1))
            conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (1, 2))
        assert rm.prepare(xid) == XaCode.XA_OK
        rm.commit(xid, one_phase=False)

    spent = per_branch(tally, branch)
    assert (spent.statements, spent.round_trips, spent.parses) == (5, 5, 0), spent
    moved = _WARM_UP + _BRANCHES
    assert balances(wire_db) == {1: start[1] - moved, 2: start[2] + moved}


def test_a_read_only_branch_answers_rdonly_after_one_check_and_gets_no_phase_two(
    make_rm: Callable[..., PostgresRM], tally: FrontendTally, pg_cluster: PgCluster
) -> None:
    """BEGIN, the SELECT, the read-only check (a prepared statement), COMMIT: four round trips, and
    nothing is left prepared for a phase two."""
    rm = make_rm(pool_size=1)
    xids: list[Xid] = []

    def branch() -> None:
        xid = new_xid()
        xids.append(xid)
        rm.start(xid)
        with rm.guard(xid) as conn:
            assert conn.execute("SELECT balance FROM accounts WHERE id = %s", (1,)).fetchone() is not None
        assert rm.prepare(xid) == XaCode.XA_RDONLY

    spent = per_branch(tally, branch)
    assert (spent.statements, spent.round_trips, spent.parses) == (4, 4, 0), spent
    assert prepared(pg_cluster, _DB) == set()
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


def test_a_write_the_statements_do_not_show_is_still_prepared(
    make_rm: Callable[..., PostgresRM], tally: FrontendTally, wire_db: str
) -> None:
    """A SELECT whose function writes reports no row written: the read-only check runs, finds the
    transaction id, and the branch is prepared and committed like any other."""
    rm = make_rm(pool_size=1)
    start = balances(wire_db)

    def branch() -> None:
        xid = new_xid()
        rm.start(xid)
        with rm.guard(xid) as conn:
            conn.execute("SELECT bump(%s)", (1,)).fetchone()
        assert rm.prepare(xid) == XaCode.XA_OK
        rm.commit(xid, one_phase=False)

    spent = per_branch(tally, branch)
    assert (spent.statements, spent.round_trips, spent.parses) == (5, 5, 0), spent
    assert balances(wire_db) == {1: start[1], 2: start[2] + _WARM_UP + _BRANCHES}


def test_a_one_phase_commit_costs_begin_its_statement_and_commit(
    make_rm: Callable[..., PostgresRM], tally: FrontendTally, wire_db: str
) -> None:
    rm = make_rm(pool_size=1)
    start = balances(wire_db)

    def branch() -> None:
        xid = new_xid()
        rm.start(xid)
        with rm.guard(xid) as conn:
            conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (1, 1))
        rm.commit(xid, one_phase=True)

    spent = per_branch(tally, branch)
    assert (spent.statements, spent.round_trips, spent.parses) == (3, 3, 0), spent
    assert balances(wire_db) == {1: start[1] + _WARM_UP + _BRANCHES, 2: start[2]}


def test_pooled_connections_that_died_while_idle_are_replaced_on_first_use(
    make_rm: Callable[..., PostgresRM], wire_db: str
) -> None:
    """Nothing checks a connection before use: the first statement on a dead one fails before any
    work, and the RM takes another -- for a branch's BEGIN and for COMMIT PREPARED alike."""
    rm = make_rm(pool_size=2)
    start = balances(wire_db)
    first, second = new_xid(), new_xid()
    for xid, row in ((first, 1), (second, 2)):
        rm.start(xid)
        with rm.guard(xid) as conn:
            conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (1, row))
        assert rm.prepare(xid) == XaCode.XA_OK
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
    warm, prepared_xid = new_xid(), new_xid()
    for xid, row in ((warm, 1), (prepared_xid, 2)):
        rm.start(xid)
        with rm.guard(xid) as conn:
            conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (1, row))
        assert rm.prepare(xid) == XaCode.XA_OK
    rm.commit(warm, one_phase=False)
    pg_cluster.stop("fast")
    try:
        assert xa_code(lambda: rm.start(new_xid())) == XaCode.XAER_RMFAIL
        assert xa_code(lambda: rm.commit(prepared_xid, one_phase=False)) == XaCode.XAER_RMFAIL
    finally:
        pg_cluster.start()
    # The pools reconnect in the background, with backoff: phase two is retried, as the coordinator does.
    deadline = time.monotonic() + 30
    while True:
        try:
            rm.commit(prepared_xid, one_phase=False)
            break
        except XaError as error:
            assert error.code == XaCode.XAER_RMFAIL and time.monotonic() < deadline, error
            time.sleep(0.2)
    after = new_xid()
    rm.start(after)
    with rm.guard(after) as conn:
        conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (1, 1))
    rm.commit(after, one_phase=True)
    assert balances(wire_db) == {1: start[1] + 2, 2: start[2] + 1}
