"""MariaRM against a real, throwaway MariaDB server (tests/mariadb.py).

Every test that touches the database ends by asserting that ``XA RECOVER`` is empty: a leaked
prepared branch holds its row locks until someone decides it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import pymysql
import pytest

from tests.mariadb import MariaDB, mysql_url, xa_prepared
from tests.rm_support import DEBIT_ROW, at_once, closing_factory, deadlock, xa_code
from xatm.participant.errors import InvalidArgumentError, UnavailableError
from xatm.participant.stores.base import BranchEnded
from xatm.participant.stores.mysql import MariaRM, decode_xid, parse_mysql_url, xid_sql
from xatm.participant.stores.mysql_errors import ERRNO_TO_XA, to_xa_error, xa_code_for
from xatm.participant.xa import FORMAT_ID, XaCode, XaError, Xid, new_bqual, new_gtrid

DOCS = Path(__file__).resolve().parents[2] / "docs" / "mysql.md"
DB = "xatm_rm"


def new_xid() -> Xid:
    return Xid(new_gtrid("mytest"), new_bqual())


def balances(server: MariaDB) -> dict[int, int]:
    with server.connect(DB) as conn, conn.cursor() as cur:
        cur.execute("SELECT id, balance FROM accounts ORDER BY id")
        return {int(i): int(b) for i, b in cur.fetchall()}


def transfer(rm: MariaRM, xid: Xid, amount: int, src: int = 1, dst: int = 2) -> None:
    with rm.guard(xid) as conn:
        conn.execute("UPDATE accounts SET balance = balance - %s WHERE id = %s", (amount, src))
        conn.execute("UPDATE accounts SET balance = balance + %s WHERE id = %s", (amount, dst))


@pytest.fixture
def db(mariadb: MariaDB) -> Iterator[MariaDB]:
    """A fresh ``accounts`` table {1: 100, 2: 100}; afterwards no prepared XA branch may be left."""
    with mariadb.connect() as conn, conn.cursor() as cur:
        cur.execute(f"CREATE DATABASE IF NOT EXISTS {DB}")
        cur.execute(f"DROP TABLE IF EXISTS {DB}.accounts")
        cur.execute(
            f"CREATE TABLE {DB}.accounts (id int PRIMARY KEY, balance int NOT NULL CHECK (balance >= 0))"
        )
        cur.execute(f"INSERT INTO {DB}.accounts VALUES (1, 100), (2, 100)")
    yield mariadb
    left = xa_prepared(mariadb)
    with mariadb.connect() as conn, conn.cursor() as cur:  # clean up first, so one failure does not cascade
        for fid, gtrid, bqual in left:
            cur.execute(f"XA ROLLBACK X'{gtrid.hex()}',X'{bqual.hex()}',{fid}")
    assert left == [], f"prepared XA branches left behind: {left}"


@pytest.fixture
def make_rm(db: MariaDB) -> Iterator[Callable[..., MariaRM]]:
    yield from closing_factory(lambda **options: MariaRM(mysql_url(db, DB), "maria-test", **options))


@pytest.fixture
def rm(make_rm: Callable[..., MariaRM]) -> MariaRM:
    return make_rm()


# -- encoding and the error table (no server needed) --------------------------------------


def test_xid_literal_and_recover_rows_round_trip() -> None:
    xid = Xid("node-1.0187a:b_c", "0123abcd", FORMAT_ID)
    literal = xid_sql(xid)
    assert literal == f"X'{b'node-1.0187a:b_c'.hex()}',X'{b'0123abcd'.hex()}',{FORMAT_ID}"
    assert decode_xid(FORMAT_ID, 16, 8, b"node-1.0187a:b_c0123abcd") == xid
    assert decode_xid(FORMAT_ID, 16, 8, "node-1.0187a:b_c0123abcd") == xid
    for foreign in [(1, 2, 0, b"\x00\xff"), (1, 3, 2, b"g b12"), (1, 2, 2, b"abc"), (0, 1, 1, "g\xe9")]:
        assert decode_xid(*foreign) is None, foreign
    for bad in [Xid("", "b"), Xid("g'x", "b"), Xid("g" * 65, "b"), Xid("g", "b", -1), Xid("g", "b", 2**31)]:
        assert xa_code(lambda bad=bad: xid_sql(bad)) == XaCode.XAER_INVAL


def test_urls() -> None:
    params = parse_mysql_url("mysql://bank:s%40cret@db.example:3307/bank_a")
    assert (params.host, params.port, params.user, params.password, params.database) == (
        "db.example",
        3307,
        "bank",
        "s@cret",
        "bank_a",
    )
    assert parse_mysql_url("mariadb://u@h/d").port == 3306
    assert "s@cret" not in repr(params)
    for bad in ["mysql://h/d", "mysql://u@h/", "postgresql://u@h/d", "mysql://u@h:notaport/d"]:
        with pytest.raises(InvalidArgumentError):
            parse_mysql_url(bad)


@pytest.mark.parametrize(
    ("errno", "expected"),
    [
        (1397, XaCode.XAER_NOTA),
        (1402, XaCode.XA_RBROLLBACK),
        (1213, XaCode.XA_RBDEADLOCK),
        (1205, XaCode.XA_RBTIMEOUT),
        (1062, XaCode.XA_RBINTEGRITY),
        (4025, XaCode.XA_RBINTEGRITY),
        (2006, XaCode.XAER_RMFAIL),
        (2013, XaCode.XAER_RMFAIL),
        (1064, XaCode.XAER_RMERR),
    ],
)
def test_errno_maps_to_xa_code(errno: int, expected: XaCode) -> None:
    assert xa_code_for(pymysql.err.OperationalError(errno, "x")) == expected


def test_errors_without_a_number() -> None:
    assert xa_code_for(pymysql.err.InterfaceError(0, "")) == XaCode.XAER_RMFAIL
    assert xa_code_for(pymysql.err.ProgrammingError(1064, "x"), connection_closed=True) == XaCode.XAER_RMFAIL
    assert xa_code_for(ValueError("x")) == XaCode.XAER_RMERR
    error = to_xa_error(pymysql.err.OperationalError(1213, "Deadlock found\nmore"), "business SQL")
    assert error.reason == "business SQL: error 1213: Deadlock found"


def test_docs_table_matches_code() -> None:
    table = DOCS.read_text().split("<!-- errno-table -->")[1].split("<!-- /errno-table -->")[0]
    documented = {
        int(n): XaCode[c] for n, c in re.findall(r"^\|\s*(\d+)\s*\|[^|]*\|\s*`(\w+)`", table, re.MULTILINE)
    }
    assert documented == ERRNO_TO_XA


# -- against the server -----------------------------------------------------------------


def test_commit_from_another_connection_after_the_preparing_one_is_gone(
    make_rm: Callable[..., MariaRM], db: MariaDB
) -> None:
    rm = make_rm()
    xid = new_xid()
    rm.start(xid)
    transfer(rm, xid, 30)
    handle = rm.connection(xid)
    assert rm.prepare(xid) == XaCode.XA_OK
    assert decode_xid_rows(db) == [xid]
    assert balances(db) == {1: 100, 2: 100}
    # Another RM (a restarted process) finishes it on its own connection.
    other = make_rm()
    assert other.recover() == [xid]
    other.commit(xid, one_phase=False)
    assert balances(db) == {1: 70, 2: 130}
    assert xa_code(lambda: other.commit(xid, one_phase=False)) == XaCode.XAER_NOTA
    with pytest.raises(BranchEnded) as caught:
        handle.execute("UPDATE accounts SET balance = 0")
    assert caught.value.code == XaCode.XAER_PROTO  # this RM still thinks it prepared; it cannot know more
    # A late phase two here (the coordinator's retry) finds it finished: the handle now says committed.
    assert xa_code(lambda: rm.commit(xid, one_phase=False)) == XaCode.XAER_NOTA
    with pytest.raises(BranchEnded) as caught:
        handle.execute("UPDATE accounts SET balance = 0")
    assert (caught.value.code, caught.value.how) == (XaCode.XAER_NOTA, "committed")
    assert balances(db) == {1: 70, 2: 130}


def decode_xid_rows(server: MariaDB) -> list[Xid]:
    return [Xid(g.decode(), b.decode(), fid) for fid, g, b in xa_prepared(server)]


def test_rollback_of_prepared_and_of_active_branches(rm: MariaRM, db: MariaDB) -> None:
    prepared, active = new_xid(), new_xid()
    rm.start(prepared)
    transfer(rm, prepared, 10)
    assert rm.prepare(prepared) == XaCode.XA_OK
    rm.start(active)
    with rm.guard(active) as conn:
        conn.execute("INSERT INTO accounts VALUES (3, 5)")
    rm.rollback(prepared)
    rm.rollback(active)
    assert balances(db) == {1: 100, 2: 100}
    assert xa_code(lambda: rm.rollback(prepared)) == XaCode.XAER_NOTA


def test_vote_no_on_a_constraint_violation(rm: MariaRM, db: MariaDB) -> None:
    xid = new_xid()
    rm.start(xid)
    with pytest.raises(XaError) as caught:
        transfer(rm, xid, 500)
    assert caught.value.code == XaCode.XA_RBINTEGRITY
    assert xa_code(lambda: rm.prepare(xid)) == XaCode.XA_RBINTEGRITY
    assert xa_prepared(db) == []
    assert balances(db) == {1: 100, 2: 100}
    assert xa_code(lambda: rm.rollback(xid)) == XaCode.XAER_NOTA


def test_deadlock_one_victim_votes_rbdeadlock_and_the_other_commits(rm: MariaRM, db: MariaDB) -> None:
    winner, loser = deadlock(rm, new_xid(), new_xid())
    assert xa_code(lambda: rm.prepare(loser)) == XaCode.XA_RBDEADLOCK
    assert rm.prepare(winner) == XaCode.XA_OK
    rm.commit(winner, one_phase=False)
    assert balances(db) == {1: 90, 2: 90}


def test_deadlock_caught_outside_the_guard_still_votes_no(rm: MariaRM, db: MariaDB) -> None:
    x1, x2 = new_xid(), new_xid()
    for xid, row in ((x1, 1), (x2, 2)):
        rm.start(xid)
        rm.connection(xid).execute(DEBIT_ROW, (row,))
    errors: list[BaseException] = []

    def cross(xid: Xid, row: int) -> None:
        try:
            rm.connection(xid).execute(DEBIT_ROW, (row,))
        except pymysql.err.OperationalError as exc:  # business code swallows it
            errors.append(exc)

    at_once(lambda: cross(x1, 2), lambda: cross(x2, 1))
    assert len(errors) == 1
    votes = []
    for xid in (x1, x2):
        try:
            votes.append(rm.prepare(xid))
        except XaError as exc:
            votes.append(exc.code)
    assert sorted(votes) == [XaCode.XA_OK, XaCode.XA_RBROLLBACK]
    for xid, vote in zip((x1, x2), votes, strict=True):
        if vote == XaCode.XA_OK:
            rm.rollback(xid)
    assert balances(db) == {1: 100, 2: 100}


def test_lock_wait_timeout_votes_rbtimeout(make_rm: Callable[..., MariaRM], db: MariaDB) -> None:
    rm = make_rm(lock_wait_timeout_s=1)
    holder, waiter = new_xid(), new_xid()
    rm.start(holder)
    transfer(rm, holder, 5)
    assert rm.prepare(holder) == XaCode.XA_OK  # a prepared branch keeps its row locks
    rm.start(waiter)
    with pytest.raises(XaError) as caught:
        transfer(rm, waiter, 5)
    assert caught.value.code == XaCode.XA_RBTIMEOUT
    assert xa_code(lambda: rm.prepare(waiter)) == XaCode.XA_RBTIMEOUT
    rm.rollback(holder)
    assert balances(db) == {1: 100, 2: 100}


def test_read_only_branch_answers_rdonly_and_leaves_nothing_prepared(rm: MariaRM, db: MariaDB) -> None:
    xid = new_xid()
    rm.start(xid)
    with rm.guard(xid) as conn:
        assert conn.execute("SELECT balance FROM accounts WHERE id = 1 FOR UPDATE").fetchall() == ((100,),)
        conn.execute("UPDATE accounts SET balance = 0 WHERE id = 99")  # matches nothing: no write
        conn.execute("SELECT id, COUNT(*) FROM accounts GROUP BY id ORDER BY id")  # internal temp table
    assert rm.prepare(xid) == XaCode.XA_RDONLY
    assert xa_prepared(db) == []
    assert xa_code(lambda: rm.commit(xid, one_phase=False)) == XaCode.XAER_NOTA


def test_one_phase_commit_and_rejoin(rm: MariaRM, db: MariaDB) -> None:
    xid = new_xid()
    rm.start(xid)
    transfer(rm, xid, 10)
    rm.start(xid)  # rejoin: same branch, sees its own work
    assert rm.connection(xid).execute("SELECT balance FROM accounts WHERE id = 1").fetchone() == (90,)
    assert xa_code(lambda: rm.commit(xid, one_phase=False)) == XaCode.XAER_PROTO
    rm.commit(xid, one_phase=True)
    assert balances(db) == {1: 90, 2: 110}
    with pytest.raises(BranchEnded) as caught:
        rm.start(xid)
    assert caught.value.code == XaCode.XAER_DUPID


def test_savepoint_rollback_keeps_earlier_work_and_undoes_a_failure(rm: MariaRM, db: MariaDB) -> None:
    xid = new_xid()
    rm.start(xid)
    transfer(rm, xid, 10)
    rm.savepoint(xid, "sp-1")
    transfer(rm, xid, 20)
    with pytest.raises(XaError):
        transfer(rm, xid, 1000)  # fails the CHECK: the branch is doomed ...
    rm.rollback_to_savepoint(xid, "sp-1")  # ... until it rolls back to before the failure
    assert xa_code(lambda: rm.rollback_to_savepoint(xid, "never-set")) == XaCode.XAER_INVAL
    assert rm.prepare(xid) == XaCode.XA_OK
    rm.commit(xid, one_phase=False)
    assert balances(db) == {1: 90, 2: 110}


def test_recover_leaves_foreign_xids_alone(rm: MariaRM, db: MariaDB) -> None:
    ours = new_xid()
    rm.start(ours)
    transfer(rm, ours, 1)
    assert rm.prepare(ours) == XaCode.XA_OK
    foreign = pymysql.connect(host="127.0.0.1", port=db.port, user="root", database=DB, autocommit=True)
    with foreign.cursor() as cur:
        cur.execute("XA START X'00ff10',X'',42")
        cur.execute("INSERT INTO accounts VALUES (3, 1)")
        cur.execute("XA END X'00ff10',X'',42")
        cur.execute("XA PREPARE X'00ff10',X'',42")
    foreign.close()
    assert rm.recover() == [ours]
    rm.rollback(ours)
    assert xa_prepared(db) == [(42, b"\x00\xff\x10", b"")]  # untouched
    with db.connect() as conn, conn.cursor() as cur:
        cur.execute("XA ROLLBACK X'00ff10',X'',42")


def test_ended_handles_refuse_everything_and_control_sql_is_refused(rm: MariaRM, db: MariaDB) -> None:
    xid = new_xid()
    rm.start(xid)
    conn = rm.connection(xid)
    cursor = conn.execute("SELECT balance FROM accounts WHERE id = 1")
    for control in [
        "XA END X'01',X'02',1",
        "COMMIT",
        " rollback",
        "SET autocommit = 1",
        "START TRANSACTION",
        "/* hidden */ XA COMMIT X'01',X'02',1 ONE PHASE",
        "-- note\nCOMMIT",
    ]:
        assert xa_code(lambda control=control: conn.execute(control)) == XaCode.XAER_PROTO
    assert xa_code(conn.commit) == XaCode.XAER_PROTO
    conn.execute("UPDATE accounts SET balance = 1 WHERE id = 1")
    rm.rollback(xid)
    for use in (
        lambda: conn.execute("UPDATE accounts SET balance = 2 WHERE id = 1"),
        cursor.fetchall,
        conn.cursor,
    ):
        with pytest.raises(BranchEnded) as caught:
            use()
        assert caught.value.code == XaCode.XAER_NOTA
    assert balances(db) == {1: 100, 2: 100}


def test_a_statement_running_at_rollback_is_interrupted_and_commits_nothing(rm: MariaRM, db: MariaDB) -> None:
    xid = new_xid()
    rm.start(xid)
    conn = rm.connection(xid)
    result: list[BaseException] = []
    started = threading.Event()

    def slow() -> None:
        started.set()
        try:
            conn.execute("UPDATE accounts SET balance = balance + SLEEP(30) + 1 WHERE id = 1")
        except BaseException as exc:
            result.append(exc)

    thread = threading.Thread(target=slow)
    thread.start()
    started.wait()
    with db.connect() as check, check.cursor() as cur:  # wait until the statement runs on the server
        for _ in range(500):
            cur.execute(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE INFO LIKE 'UPDATE accounts%%'"
            )
            if cur.fetchone()[0]:
                break
    rm.rollback(xid)
    thread.join(timeout=20)
    assert not thread.is_alive()
    assert len(result) == 1 and isinstance(result[0], BranchEnded)
    assert balances(db) == {1: 100, 2: 100}


def test_the_next_branch_on_a_pool_of_one_is_clean(make_rm: Callable[..., MariaRM], db: MariaDB) -> None:
    rm = make_rm(pool_size=1)
    first, second = new_xid(), new_xid()
    rm.start(first)
    stale = rm.connection(first)
    stale.execute("UPDATE accounts SET balance = 1 WHERE id = 1")
    rm.rollback(first)
    rm.start(second)
    with pytest.raises(BranchEnded):
        stale.execute("UPDATE accounts SET balance = 2 WHERE id = 2")
    assert rm.prepare(second) == XaCode.XA_RDONLY
    assert balances(db) == {1: 100, 2: 100}


def test_prepared_branch_survives_a_server_sigkill_and_restart(
    make_rm: Callable[..., MariaRM], db: MariaDB
) -> None:
    rm = make_rm()
    xid = new_xid()
    rm.start(xid)
    transfer(rm, xid, 40)
    assert rm.prepare(xid) == XaCode.XA_OK
    db.kill()
    assert xa_code(lambda: rm.commit(xid, one_phase=False)) == XaCode.XAER_RMFAIL
    db.start()
    assert make_rm().recover() == [xid]
    rm.commit(xid, one_phase=False)  # the RM's pooled sessions died with the server; it reconnects
    assert balances(db) == {1: 60, 2: 140}


def test_unreachable_server_or_bad_url_is_refused_at_construction(db: MariaDB) -> None:
    with pytest.raises(InvalidArgumentError):
        MariaRM("mysql://nobody/x", "x")
    with pytest.raises(UnavailableError) as caught:
        MariaRM("mysql://root@127.0.0.1:1/x", "x")
    assert str(caught.value).startswith("cannot connect to MySQL at 127.0.0.1:1: ")
    assert "\n" not in str(caught.value)
