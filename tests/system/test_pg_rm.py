"""PostgresRM against a real, throwaway PostgreSQL cluster (tests/pgcluster.py).

The session-scoped fixtures ``pg_cluster`` and ``pg_dsn`` live in tests/conftest.py. Every test
that touches the database ends by asserting that pg_prepared_xacts is empty: a leaked prepared
transaction holds locks forever. What needs no server is in tests/unit/test_pg_rm.py.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import psycopg
import pytest

from tests.pgcluster import PgCluster
from tests.rm_support import closing_factory, deadlock, xa_code
from xatm.participant.errors import Status
from xatm.participant.stores.base import BranchEnded
from xatm.participant.stores.postgresql import (
    PostgresRM,
    PostgresSetupError,
    encode_gid,
)
from xatm.participant.xa import XaCode, XaError, Xid, new_bqual, new_gtrid


def prepared_gids(cluster: PgCluster) -> list[str]:
    """Every prepared transaction in the cluster, any database, any owner."""
    with cluster.connect() as conn:
        return [gid for (gid,) in conn.execute("SELECT gid FROM pg_prepared_xacts ORDER BY gid")]


def balances(dsn: str) -> dict[int, int]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        return dict(conn.execute("SELECT id, balance FROM accounts ORDER BY id").fetchall())


@pytest.fixture
def pg_db(pg_cluster: PgCluster, pg_dsn: str) -> Iterator[str]:
    """A fresh ``accounts`` table {1: 100, 2: 100}; afterwards no prepared transaction may be left."""
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute("SET lock_timeout = '5s'")
        conn.execute("DROP TABLE IF EXISTS accounts")
        conn.execute("CREATE TABLE accounts (id int PRIMARY KEY, balance int NOT NULL CHECK (balance >= 0))")
        conn.execute("INSERT INTO accounts VALUES (1, 100), (2, 100)")
    yield pg_dsn
    left = prepared_gids(pg_cluster)
    with pg_cluster.connect() as conn:  # clean up first, so one failure does not cascade
        for gid in left:
            conn.execute(psycopg.sql.SQL("ROLLBACK PREPARED {}").format(psycopg.sql.Literal(gid)))
    assert left == [], f"prepared transactions left behind: {left}"


@pytest.fixture
def make_rm(pg_db: str) -> Iterator[Callable[..., PostgresRM]]:
    """Factory for RMs on the test database (a second one simulates a restarted process); all closed after."""
    yield from closing_factory(lambda **options: PostgresRM(pg_db, "pg-test", **options))


@pytest.fixture
def rm(make_rm: Callable[..., PostgresRM]) -> PostgresRM:
    return make_rm()


def new_xid() -> Xid:
    return Xid(new_gtrid("pgtest"), new_bqual())


def transfer(rm: PostgresRM, xid: Xid, amount: int, src: int = 1, dst: int = 2) -> None:
    with rm.guard(xid) as conn:
        conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, src))
        conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, dst))


# -- against the server -----------------------------------------------------------------


def test_prepared_branch_commits_from_a_new_rm_instance(
    make_rm: Callable[..., PostgresRM], pg_db: str, pg_cluster: PgCluster
) -> None:
    rm = make_rm()
    xid = new_xid()
    rm.start(xid)
    transfer(rm, xid, 30)
    assert rm.prepare(xid) == XaCode.XA_OK
    assert prepared_gids(pg_cluster) == [encode_gid(xid)]
    assert balances(pg_db) == {1: 100, 2: 100}
    assert rm.prepare(xid) == XaCode.XA_OK  # a retried prepare after a lost reply is harmless
    rm.close()  # the process "dies"; prepared work stays

    restarted = make_rm()
    assert restarted.recover() == [xid]
    restarted.commit(xid, one_phase=False)
    assert balances(pg_db) == {1: 70, 2: 130}
    assert restarted.recover() == []
    assert xa_code(lambda: restarted.commit(xid, one_phase=False)) == XaCode.XAER_NOTA


def test_rollback_of_prepared_and_of_active_branches(
    rm: PostgresRM, pg_db: str, pg_cluster: PgCluster
) -> None:
    prepared, active = new_xid(), new_xid()
    rm.start(prepared)
    transfer(rm, prepared, 10)
    assert rm.prepare(prepared) == XaCode.XA_OK
    rm.rollback(prepared)
    rm.start(active)
    transfer(rm, active, 20)
    rm.rollback(active)
    assert balances(pg_db) == {1: 100, 2: 100}
    assert prepared_gids(pg_cluster) == []
    assert xa_code(lambda: rm.rollback(prepared)) == XaCode.XAER_NOTA
    assert xa_code(lambda: rm.connection(active)) == XaCode.XAER_NOTA


def test_recover_returns_only_our_branches_and_never_touches_foreign_ones(
    rm: PostgresRM, pg_db: str, pg_cluster: PgCluster
) -> None:
    with psycopg.connect(pg_db, autocommit=True) as foreign:
        foreign.execute("BEGIN")
        foreign.execute("INSERT INTO accounts VALUES (3, 5)")
        foreign.execute("PREPARE TRANSACTION 'foreign-1'")
    try:
        ours = new_xid()
        rm.start(ours)
        transfer(rm, ours, 1)
        rm.prepare(ours)
        assert rm.recover() == [ours]
        rm.rollback(ours)
        assert rm.recover() == []
        assert prepared_gids(pg_cluster) == ["foreign-1"]
    finally:
        with pg_cluster.connect("xatm_test") as conn:
            conn.execute("ROLLBACK PREPARED 'foreign-1'")


def test_read_only_branch_answers_rdonly_and_leaves_nothing_prepared(
    rm: PostgresRM, pg_cluster: PgCluster
) -> None:
    reader, idle = new_xid(), new_xid()
    rm.start(reader)
    with rm.guard(reader) as conn:
        assert conn.execute("SELECT sum(balance) FROM accounts").fetchone() == (200,)
    rm.start(idle)
    assert rm.prepare(reader) == XaCode.XA_RDONLY
    assert rm.prepare(idle) == XaCode.XA_RDONLY
    assert prepared_gids(pg_cluster) == []
    assert xa_code(lambda: rm.commit(reader, one_phase=False)) == XaCode.XAER_NOTA


def test_one_phase_commit_and_rejoin(rm: PostgresRM, pg_db: str, pg_cluster: PgCluster) -> None:
    xid = new_xid()
    rm.start(xid)
    first = rm.connection(xid)
    rm.start(xid)  # rejoin
    assert rm.connection(xid) is first
    transfer(rm, xid, 25)
    assert xa_code(lambda: rm.commit(xid, one_phase=False)) == XaCode.XAER_PROTO  # not prepared
    rm.commit(xid, one_phase=True)
    assert balances(pg_db) == {1: 75, 2: 125}
    assert prepared_gids(pg_cluster) == []


def test_check_violation_votes_rbintegrity(rm: PostgresRM, pg_db: str) -> None:
    two_phase, one_phase = new_xid(), new_xid()
    for xid in (two_phase, one_phase):
        rm.start(xid)
        assert xa_code(lambda xid=xid: transfer(rm, xid, 500)) == XaCode.XA_RBINTEGRITY
    assert xa_code(lambda: rm.prepare(two_phase)) == XaCode.XA_RBINTEGRITY
    assert xa_code(lambda: rm.commit(one_phase, one_phase=True)) == XaCode.XA_RBINTEGRITY
    assert balances(pg_db) == {1: 100, 2: 100}
    assert xa_code(lambda: rm.rollback(two_phase)) == XaCode.XAER_NOTA  # already rolled back


def test_misuse_outside_the_guard_votes_no(rm: PostgresRM, pg_db: str) -> None:
    failed, ended = new_xid(), new_xid()
    rm.start(failed)
    with pytest.raises(psycopg.errors.SyntaxError):
        rm.connection(failed).execute("UPDATE nonsense")
    assert xa_code(lambda: rm.prepare(failed)) == XaCode.XA_RBROLLBACK
    rm.start(ended)
    assert xa_code(lambda: rm.connection(ended).commit()) == XaCode.XAER_PROTO  # refused by the handle
    rm.connection(ended).execute("COMMIT")  # business code must not do this
    assert xa_code(lambda: rm.connection(ended).execute("SELECT 1")) == XaCode.XA_RBPROTO  # no autocommit
    assert xa_code(lambda: rm.prepare(ended)) == XaCode.XA_RBPROTO
    assert balances(pg_db) == {1: 100, 2: 100}


def test_deadlock_victim_votes_rbdeadlock_and_the_other_commits(
    make_rm: Callable[..., PostgresRM], pg_db: str
) -> None:
    rm = make_rm(lock_timeout_ms=10_000)
    winner, loser = deadlock(rm, new_xid(), new_xid())
    assert xa_code(lambda: rm.prepare(loser)) == XaCode.XA_RBDEADLOCK
    assert rm.prepare(winner) == XaCode.XA_OK
    rm.commit(winner, one_phase=False)
    assert balances(pg_db) == {1: 90, 2: 90}


def test_lock_and_statement_timeouts_vote_rbtimeout(make_rm: Callable[..., PostgresRM], pg_db: str) -> None:
    rm = make_rm(lock_timeout_ms=200)
    holder, waiter, slow = new_xid(), new_xid(), new_xid()
    rm.start(holder)
    transfer(rm, holder, 5)
    rm.start(waiter)
    assert xa_code(lambda: transfer(rm, waiter, 7)) == XaCode.XA_RBTIMEOUT  # 55P03 after 200 ms
    rm.start(slow)
    with pytest.raises(XaError) as caught, rm.guard(slow) as conn:
        conn.execute("SET LOCAL statement_timeout = '50ms'")
        conn.execute("SELECT pg_sleep(5)")
    assert caught.value.code == XaCode.XA_RBTIMEOUT and "57014" in caught.value.reason
    assert xa_code(lambda: rm.prepare(waiter)) == XaCode.XA_RBTIMEOUT
    assert xa_code(lambda: rm.prepare(slow)) == XaCode.XA_RBTIMEOUT
    rm.commit(holder, one_phase=True)
    assert balances(pg_db) == {1: 95, 2: 105}


def test_unknown_or_malformed_xid(rm: PostgresRM) -> None:
    unknown = new_xid()
    assert xa_code(lambda: rm.commit(unknown, one_phase=False)) == XaCode.XAER_NOTA
    assert xa_code(lambda: rm.commit(unknown, one_phase=True)) == XaCode.XAER_NOTA
    assert xa_code(lambda: rm.rollback(unknown)) == XaCode.XAER_NOTA
    assert xa_code(lambda: rm.prepare(unknown)) == XaCode.XAER_NOTA
    assert xa_code(lambda: rm.savepoint(unknown, "sp")) == XaCode.XAER_NOTA
    assert xa_code(lambda: rm.start(Xid("bad gtrid", "b"))) == XaCode.XAER_INVAL
    assert xa_code(lambda: rm.rollback(Xid("g'); DROP TABLE accounts; --", "b"))) == XaCode.XAER_INVAL


def test_rollback_to_savepoint_keeps_earlier_work(rm: PostgresRM, pg_db: str) -> None:
    xid = new_xid()
    rm.start(xid)
    with rm.guard(xid) as conn:
        conn.execute("UPDATE accounts SET balance = 50 WHERE id = 1")
    rm.savepoint(xid, 'sp-1 "quoted"; odd')
    with rm.guard(xid) as conn:
        conn.execute("UPDATE accounts SET balance = 10 WHERE id = 1")
        conn.execute("INSERT INTO accounts VALUES (3, 1)")
    rm.savepoint(xid, "sp-2")
    assert xa_code(lambda: rm.rollback_to_savepoint(xid, "never-set")) == XaCode.XAER_INVAL
    rm.rollback_to_savepoint(xid, 'sp-1 "quoted"; odd')
    assert xa_code(lambda: rm.rollback_to_savepoint(xid, "sp-2")) == XaCode.XAER_INVAL  # undone with sp-1
    with rm.guard(xid) as conn:
        assert conn.execute("SELECT id, balance FROM accounts ORDER BY id").fetchall() == [(1, 50), (2, 100)]
    assert rm.prepare(xid) == XaCode.XA_OK
    rm.commit(xid, one_phase=False)
    assert balances(pg_db) == {1: 50, 2: 100}


def test_rollback_to_savepoint_undoes_a_failure(rm: PostgresRM, pg_db: str) -> None:
    xid = new_xid()
    rm.start(xid)
    transfer(rm, xid, 40)
    rm.savepoint(xid, "before-risky")
    assert xa_code(lambda: transfer(rm, xid, 500)) == XaCode.XA_RBINTEGRITY
    rm.rollback_to_savepoint(xid, "before-risky")
    transfer(rm, xid, 1)
    rm.commit(xid, one_phase=True)
    assert balances(pg_db) == {1: 59, 2: 141}


def test_server_without_prepared_transactions_is_refused_at_construction() -> None:
    with PgCluster(max_prepared_transactions=0) as cluster, pytest.raises(PostgresSetupError) as caught:
        PostgresRM(cluster.dsn(), "pg-test")
    assert caught.value.status == Status.FAILED_PRECONDITION
    assert caught.value.message == (
        f"PostgreSQL at 127.0.0.1:{cluster.port} has max_prepared_transactions = 0; "
        "set it > 0 (e.g. 100) and restart it to use xatm"
    )


def test_prepared_branch_survives_a_server_crash(
    make_rm: Callable[..., PostgresRM], pg_db: str, pg_cluster: PgCluster
) -> None:
    rm = make_rm()
    xid = new_xid()
    rm.start(xid)
    transfer(rm, xid, 60)
    assert rm.prepare(xid) == XaCode.XA_OK
    pg_cluster.stop("immediate")
    pg_cluster.start()
    assert make_rm().recover() == [xid]
    rm.commit(xid, one_phase=False)  # the old instance: its pooled connections died and are replaced
    assert balances(pg_db) == {1: 40, 2: 160}


def test_connection_loss_maps_to_rmfail_and_votes_rbcommfail(rm: PostgresRM, pg_db: str) -> None:
    xid = new_xid()
    rm.start(xid)
    transfer(rm, xid, 15)
    with rm.guard(xid) as conn:
        pid = conn.info.backend_pid
    with psycopg.connect(pg_db, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(XaError) as caught, rm.guard(xid) as conn:
        conn.execute("SELECT 1")
    assert caught.value.code == XaCode.XAER_RMFAIL
    assert xa_code(lambda: rm.prepare(xid)) == XaCode.XA_RBCOMMFAIL
    after = new_xid()  # the pool replaced the dead connection
    rm.start(after)
    transfer(rm, after, 1)
    rm.commit(after, one_phase=True)
    assert balances(pg_db) == {1: 99, 2: 101}


def test_open_row_stream_at_the_end_never_blocks_or_reaches_the_next_branch(
    make_rm: Callable[..., PostgresRM], pg_db: str
) -> None:
    """A suspended ``stream()`` holds psycopg's session lock: the end must not wait for it, the
    session must not be reused, and a branch prepared with one open votes no."""
    rm = make_rm(pool_size=1)
    rolled_back, prepared = new_xid(), new_xid()
    rm.start(rolled_back)
    transfer(rm, rolled_back, 10)
    rows = iter(rm.connection(rolled_back).cursor().stream("SELECT id FROM accounts ORDER BY id"))
    assert next(rows) == (1,)
    rm.rollback(rolled_back)
    with pytest.raises(BranchEnded):
        next(rows)
    rm.start(prepared)  # the pool's one connection: a fresh one, the streaming session was closed
    transfer(rm, prepared, 20)
    with rm.guard(prepared) as conn:
        rows = iter(conn.execute("SELECT id FROM accounts ORDER BY id"))
        assert next(rows) == (1,)
        assert xa_code(lambda: rm.prepare(prepared)) == XaCode.XA_RBPROTO
    assert balances(pg_db) == {1: 100, 2: 100}
    after = new_xid()
    rm.start(after)
    transfer(rm, after, 1)
    rm.commit(after, one_phase=True)
    assert balances(pg_db) == {1: 99, 2: 101}


def test_statement_running_when_prepare_comes_is_waited_for_and_prepared(rm: PostgresRM, pg_db: str) -> None:
    """Only a rollback cuts a running statement short; prepare waits for it and keeps its work."""
    xid = new_xid()
    rm.start(xid)
    conn = rm.connection(xid)
    pid = conn.info.backend_pid
    done: list[object] = []
    slow = "UPDATE accounts SET balance = 0 FROM pg_sleep(1) WHERE id = 1"
    worker = threading.Thread(target=lambda: done.append(conn.execute(slow)))
    worker.start()
    state = "SELECT state FROM pg_stat_activity WHERE pid = %s"
    with psycopg.connect(pg_db, autocommit=True) as admin:  # until the UPDATE runs on the server
        while admin.execute(state, (pid,)).fetchone() != ("active",):
            assert worker.is_alive(), done
            time.sleep(0.01)
    assert rm.prepare(xid) == XaCode.XA_OK
    worker.join(timeout=10)
    assert len(done) == 1  # the statement returned normally: it ran before the branch was prepared
    with pytest.raises(BranchEnded) as caught:
        conn.execute("SELECT 1")
    assert caught.value.code == XaCode.XAER_PROTO and "prepared" in caught.value.reason
    rm.commit(xid, one_phase=False)
    assert balances(pg_db) == {1: 0, 2: 100}


@pytest.mark.parametrize("ending", ["two-phase", "one-phase", "rollback", "read-only"])
def test_session_settings_a_branch_changes_do_not_reach_the_next_branch(
    make_rm: Callable[..., PostgresRM], pg_db: str, ending: str
) -> None:
    """Found by a newcomer: ``SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY`` in one branch
    made every later branch on that pooled connection fail (SQLSTATE 25006), and a session
    ``statement_timeout`` cancelled their statements, until the process restarted."""
    rm = make_rm(pool_size=1, lock_timeout_ms=1234)  # one connection: the next branch gets it
    first = new_xid()
    rm.start(first)
    with rm.guard(first) as conn:
        if ending != "read-only":
            conn.execute("UPDATE accounts SET balance = balance WHERE id = 1")
        conn.execute("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY")
        conn.execute("SET statement_timeout = 1")
        conn.execute("SET lock_timeout = 1")
    rm.end(first)
    if ending == "two-phase":
        assert rm.prepare(first) == XaCode.XA_OK
        rm.commit(first, one_phase=False)
    elif ending == "one-phase":
        rm.commit(first, one_phase=True)
    elif ending == "rollback":
        rm.rollback(first)
    else:
        assert rm.prepare(first) == XaCode.XA_RDONLY
    second = new_xid()
    rm.start(second)
    with rm.guard(second) as conn:
        shown = [
            conn.execute(f"SHOW {name}").fetchone()[0]  # type: ignore[index]
            for name in ("transaction_read_only", "statement_timeout", "lock_timeout")
        ]
        conn.execute("UPDATE accounts SET balance = balance + 1 WHERE id = 1")
        conn.execute("SELECT pg_sleep(0.01)")
    assert shown == ["off", "0", "1234ms"]
    rm.end(second)
    rm.commit(second, one_phase=True)
    assert balances(pg_db)[1] == 101
