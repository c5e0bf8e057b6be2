"""SqliteRM in process: XA verbs and codes, locking, savepoints, and a model check.

Durability across kill -9 is in tests/system/test_sqlite_rm.py.
"""

from __future__ import annotations

import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from tests.rm_support import assert_unlocked, raises, started
from xatm.participant.stores import sqlite as sqlite_rm
from xatm.participant.stores.base import BranchEnded
from xatm.participant.stores.sqlite import LOCAL_FORMAT_ID, SqliteRM
from xatm.participant.xa import FORMAT_ID, XaCode, XaError, Xid


@pytest.fixture
def rm(tmp_path: Path) -> Iterator[SqliteRM]:
    store = SqliteRM(tmp_path / "store.db", "test", lock_timeout=0.1)
    yield store
    store.close()


def seed(rm: SqliteRM, **values: int | str) -> None:
    with rm.local() as xid:
        for key, value in values.items():
            rm.put(xid, key, value)


# ---- verbs and codes ------------------------------------------------------------------------------


def test_two_phase_commit_applies_pending_writes(rm: SqliteRM) -> None:
    seed(rm, alice=100, bob=50)
    xid = started(rm, "t1")
    assert rm.get(xid, "alice") == 100
    rm.put(xid, "alice", 70)
    rm.put(xid, "bob", 80)
    rm.put(xid, "note", "paid")
    assert rm.get(xid, "alice") == 70, "a branch reads its own pending writes"
    assert rm.read_committed("alice") == 100
    assert rm.prepare(xid) == XaCode.XA_OK
    assert rm.recover() == [xid]
    assert rm.items() == {"alice": 100, "bob": 50}
    rm.commit(xid, one_phase=False)
    assert rm.items() == {"alice": 70, "bob": 80, "note": "paid"}
    assert rm.recover() == []
    assert_unlocked(rm, "alice", "bob", "note")


def test_one_phase_commit_of_active_branch(rm: SqliteRM) -> None:
    xid = started(rm, "t1")
    rm.put(xid, "k", 1)
    rm.put(xid, "k", 2)
    rm.commit(xid, one_phase=True)
    assert rm.items() == {"k": 2}
    assert rm.recover() == []


@pytest.mark.parametrize("prepared", [False, True])
def test_rollback_discards_branch(rm: SqliteRM, prepared: bool) -> None:
    seed(rm, k=1)
    xid = started(rm, "t1")
    rm.put(xid, "k", 2)
    if prepared:
        assert rm.prepare(xid) == XaCode.XA_OK
    rm.rollback(xid)
    assert rm.items() == {"k": 1}
    assert rm.recover() == []
    assert_unlocked(rm, "k")


def test_unknown_xid_is_nota_for_every_verb(rm: SqliteRM) -> None:
    xid = Xid("nobody", "b1")
    for call in (
        lambda: rm.prepare(xid),
        lambda: rm.commit(xid, one_phase=False),
        lambda: rm.commit(xid, one_phase=True),
        lambda: rm.rollback(xid),
        lambda: rm.forget(xid),
        lambda: rm.get(xid, "k"),
        lambda: rm.put(xid, "k", 1),
        lambda: rm.savepoint(xid, "sp"),
        lambda: rm.rollback_to_savepoint(xid, "sp"),
        lambda: rm.mark_rollback_only(xid, XaCode.XA_RBINTEGRITY, "x"),
    ):
        with raises(XaCode.XAER_NOTA):
            call()


def test_repeated_phase_two_after_lost_reply_is_nota(rm: SqliteRM) -> None:
    committed, rolled_back = started(rm, "t1"), started(rm, "t2")
    for xid in (committed, rolled_back):
        rm.put(xid, xid.gtrid, 1)
        rm.prepare(xid)
    rm.commit(committed, one_phase=False)
    rm.rollback(rolled_back)
    for xid in (committed, rolled_back):
        with raises(XaCode.XAER_NOTA):
            rm.commit(xid, one_phase=False)
        with raises(XaCode.XAER_NOTA):
            rm.rollback(xid)
    assert rm.items() == {"t1": 1}


def test_start_rules(rm: SqliteRM) -> None:
    xid = started(rm, "t1")
    rm.put(xid, "k", 1)
    rm.start(xid)  # rejoin keeps the work
    assert rm.get(xid, "k") == 1
    rm.end(xid)
    rm.prepare(xid)
    with raises(XaCode.XAER_PROTO):
        rm.start(xid)
    rm.commit(xid, one_phase=False)
    with raises(XaCode.XAER_DUPID):
        rm.start(xid)


def test_ended_branches_say_how_they_ended(rm: SqliteRM) -> None:
    committed, rolled_back, doomed = started(rm, "t1"), started(rm, "t2"), started(rm, "t3")
    for xid in (committed, rolled_back):
        rm.put(xid, xid.gtrid, 1)
    rm.commit(committed, one_phase=True)
    rm.rollback(rolled_back)
    rm.mark_rollback_only(doomed, XaCode.XA_RBINTEGRITY, "overdrawn")
    with raises(XaCode.XA_RBINTEGRITY):
        rm.prepare(doomed)
    for xid, how in (
        (committed, "committed in one phase"),
        (rolled_back, "rolled back"),
        (doomed, "rolled back: prepare voted XA_RBINTEGRITY"),
    ):
        with pytest.raises(BranchEnded) as caught:
            rm.put(xid, "k", 2)
        assert (caught.value.xid, caught.value.how, caught.value.code) == (xid, how, XaCode.XAER_NOTA)
    assert rm.items() == {"t1": 1}


def test_store_made_before_endings_were_kept_opens(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with closing(sqlite3.connect(path)) as db:
        db.executescript(sqlite_rm._SCHEMA.replace(", how TEXT", ""))
        db.execute("INSERT INTO finished (format_id, gtrid, bqual) VALUES (?, 'old', 'b1')", (FORMAT_ID,))
        db.commit()
    rm = SqliteRM(path, "test")
    try:
        with pytest.raises(BranchEnded) as caught:
            rm.start(Xid("old", "b1"))
        assert caught.value.code == XaCode.XAER_DUPID
        assert caught.value.how == "finished before the store was last opened"
        seed(rm, k=1)  # new branches record how they end
        assert rm.items() == {"k": 1}
    finally:
        rm.close()


def test_protocol_errors(rm: SqliteRM) -> None:
    xid = started(rm, "t1")
    rm.put(xid, "k", 1)
    with raises(XaCode.XAER_PROTO):
        rm.commit(xid, one_phase=False)
    rm.prepare(xid)
    for call in (
        lambda: rm.prepare(xid),
        lambda: rm.commit(xid, one_phase=True),
        lambda: rm.get(xid, "k"),
        lambda: rm.put(xid, "k", 2),
        lambda: rm.savepoint(xid, "sp"),
        lambda: rm.forget(xid),
        lambda: rm.mark_rollback_only(xid, XaCode.XA_RBINTEGRITY, "too late"),
    ):
        with raises(XaCode.XAER_PROTO):
            call()
    rm.commit(xid, one_phase=False)
    assert rm.items() == {"k": 1}


def test_read_only_branch_votes_rdonly_and_keeps_no_locks(rm: SqliteRM) -> None:
    seed(rm, k=5)
    xid = started(rm, "t1")
    assert rm.get(xid, "k") == 5
    assert rm.get(xid, "absent") is None
    assert rm.prepare(xid) == XaCode.XA_RDONLY
    assert rm.recover() == []
    assert_unlocked(rm, "k", "absent")
    with raises(XaCode.XAER_NOTA):
        rm.commit(xid, one_phase=False)


def test_prepare_keeps_write_locks_and_releases_read_locks(rm: SqliteRM) -> None:
    seed(rm, a=1, b=2)
    xid = started(rm, "t1")
    rm.put(xid, "b", rm.get(xid, "a") + 1)  # type: ignore[operator]
    rm.prepare(xid)
    assert_unlocked(rm, "a")
    other = started(rm, "t2")
    with raises(XaCode.XA_RBTIMEOUT):
        rm.get(other, "b")
    rm.commit(xid, one_phase=False)
    assert rm.items() == {"a": 1, "b": 2}


def test_invalid_arguments(rm: SqliteRM) -> None:
    xid = started(rm, "t1")
    for value in (True, 1.5, None, b"x", 2**63):
        with raises(XaCode.XAER_INVAL):
            rm.put(xid, "k", value)  # type: ignore[arg-type]
    with raises(XaCode.XAER_INVAL):
        rm.get(xid, 7)  # type: ignore[arg-type]
    rm.put(xid, "k", -(2**63))
    rm.commit(xid, one_phase=True)
    assert rm.read_committed("k") == -(2**63)


def test_second_owner_is_refused_until_close(tmp_path: Path) -> None:
    first = SqliteRM(tmp_path / "s.db", "one")
    with raises(XaCode.XAER_RMFAIL):
        SqliteRM(tmp_path / "s.db", "two")
    first.close()
    with raises(XaCode.XAER_RMFAIL):
        first.items()
    SqliteRM(tmp_path / "s.db", "two").close()


def test_file_that_is_not_a_store_is_rmfail(tmp_path: Path) -> None:
    (tmp_path / "junk.db").write_text("this is not an SQLite database, only some text " * 4)
    with raises(XaCode.XAER_RMFAIL):
        SqliteRM(tmp_path / "junk.db", "junk")
    with raises(XaCode.XAER_RMFAIL):  # same answer again: the failed open released its owner lock
        SqliteRM(tmp_path / "junk.db", "junk")


# ---- savepoints ---------------------------------------------------------------------------------


def test_rollback_to_savepoint_restores_earlier_pending_values(rm: SqliteRM) -> None:
    seed(rm, a=0, b=0)
    xid = started(rm, "t1")
    rm.put(xid, "a", 1)
    rm.savepoint(xid, "sp1")
    rm.put(xid, "a", 2)
    rm.put(xid, "b", 5)
    rm.savepoint(xid, "sp2")
    rm.put(xid, "a", 3)
    rm.rollback_to_savepoint(xid, "sp1")
    assert (rm.get(xid, "a"), rm.get(xid, "b")) == (1, 0)
    with raises(XaCode.XAER_INVAL):
        rm.rollback_to_savepoint(xid, "sp2")  # destroyed by rolling back past it
    with raises(XaCode.XAER_INVAL):
        rm.rollback_to_savepoint(xid, "never")
    rm.put(xid, "b", 9)
    rm.rollback_to_savepoint(xid, "sp1")  # still valid, as in SQL
    rm.put(xid, "a", 4)
    rm.savepoint(xid, "sp1")  # reusing the id moves the mark
    rm.put(xid, "a", 5)
    rm.rollback_to_savepoint(xid, "sp1")
    rm.commit(xid, one_phase=True)
    assert rm.items() == {"a": 4, "b": 0}


def test_rollback_to_savepoint_before_any_write_makes_branch_read_only(rm: SqliteRM) -> None:
    xid = started(rm, "t1")
    rm.savepoint(xid, "start")
    rm.put(xid, "k", 1)
    rm.rollback_to_savepoint(xid, "start")
    assert rm.get(xid, "k") is None
    assert rm.prepare(xid) == XaCode.XA_RDONLY
    assert_unlocked(rm, "k")


# ---- rollback-only, local transactions ------------------------------------------------------------


def test_mark_rollback_only_makes_prepare_vote_that_code(rm: SqliteRM) -> None:
    seed(rm, alice=10)
    xid = started(rm, "t1")
    rm.put(xid, "alice", -5)
    rm.mark_rollback_only(xid, XaCode.XA_RBINTEGRITY, "balance would go negative")
    rm.mark_rollback_only(xid, XaCode.XA_RBOTHER, "second mark keeps the first code")
    assert_unlocked(rm, "alice")
    with raises(XaCode.XA_RBINTEGRITY):
        rm.put(xid, "alice", 1)
    with raises(XaCode.XA_RBINTEGRITY):
        rm.start(xid)
    with raises(XaCode.XA_RBINTEGRITY):
        rm.prepare(xid)
    with raises(XaCode.XAER_NOTA):
        rm.rollback(xid)
    assert rm.items() == {"alice": 10}


def test_rollback_only_branch_rolls_back_on_rollback_or_one_phase_commit(rm: SqliteRM) -> None:
    first, second = started(rm, "t1"), started(rm, "t2")
    for xid in (first, second):
        rm.mark_rollback_only(xid, XaCode.XA_RBTRANSIENT, "retry later")
    rm.rollback(first)
    with raises(XaCode.XAER_PROTO):
        rm.commit(second, one_phase=False)
    with raises(XaCode.XA_RBTRANSIENT):
        rm.commit(second, one_phase=True)
    with raises(XaCode.XAER_NOTA):
        rm.prepare(second)


def test_mark_rollback_only_needs_an_rb_code(rm: SqliteRM) -> None:
    xid = started(rm, "t1")
    with raises(XaCode.XAER_INVAL):
        rm.mark_rollback_only(xid, XaCode.XAER_RMERR, "not a rollback code")


def test_local_transaction_commits_or_rolls_back(rm: SqliteRM) -> None:
    with rm.local() as xid:
        assert xid.format_id == LOCAL_FORMAT_ID != FORMAT_ID
        rm.put(xid, "k", 1)
    with pytest.raises(RuntimeError), rm.local() as xid:
        rm.put(xid, "k", 2)
        raise RuntimeError("business failure")
    with raises(XaCode.XA_RBINTEGRITY), rm.local() as xid:
        rm.put(xid, "k", 3)
        rm.mark_rollback_only(xid, XaCode.XA_RBINTEGRITY, "vetoed")
    assert rm.items() == {"k": 1}
    assert_unlocked(rm, "k")


# ---- locking -----------------------------------------------------------------------------------


def test_lock_conflict_times_out_and_holder_still_commits(tmp_path: Path) -> None:
    rm = SqliteRM(tmp_path / "s.db", "test", lock_timeout=0.2)
    seed(rm, a=1, b=1)
    holder, waiter = started(rm, "holder"), started(rm, "waiter")
    rm.put(holder, "a", 2)
    rm.get(waiter, "b")
    with raises(XaCode.XA_RBTIMEOUT):
        rm.get(waiter, "a")
    assert_unlocked(rm, "b")  # the waiter was rolled back, its locks released
    with raises(XaCode.XA_RBTIMEOUT):
        rm.put(waiter, "b", 5)
    assert rm.prepare(holder) == XaCode.XA_OK
    rm.commit(holder, one_phase=False)
    with raises(XaCode.XA_RBTIMEOUT):
        rm.prepare(waiter)
    assert rm.items() == {"a": 2, "b": 1}
    rm.close()


def test_deadlock_is_detected_and_the_survivor_commits(tmp_path: Path) -> None:
    rm = SqliteRM(tmp_path / "s.db", "test", lock_timeout=30)  # a timeout would mean detection failed
    seed(rm, a=0, b=0)
    first, second = started(rm, "first"), started(rm, "second")
    rm.get(first, "a")
    rm.get(second, "b")
    outcome: dict[Xid, XaCode] = {}

    def take(xid: Xid, key: str) -> None:
        try:
            rm.put(xid, key, 1)
            outcome[xid] = XaCode.XA_OK
        except XaError as exc:
            outcome[xid] = exc.code

    threads = [
        threading.Thread(target=take, args=(first, "b")),
        threading.Thread(target=take, args=(second, "a")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(outcome.values()) == [XaCode.XA_OK, XaCode.XA_RBDEADLOCK]
    survivor, victim = sorted(outcome, key=lambda xid: outcome[xid])
    with raises(XaCode.XA_RBDEADLOCK):
        rm.prepare(victim)
    assert rm.prepare(survivor) == XaCode.XA_OK
    rm.commit(survivor, one_phase=False)
    assert rm.items() == {"a": 0, "b": 0, {first: "b", second: "a"}[survivor]: 1}
    rm.close()


def test_concurrent_transfers_lose_no_update(tmp_path: Path) -> None:
    rm = SqliteRM(tmp_path / "s.db", "test", lock_timeout=10)
    seed(rm, a=1000, b=1000)
    moves = [("a", "b"), ("a", "b"), ("a", "b"), ("b", "a")]

    def transfer(source: str, target: str) -> None:
        for _ in range(20):
            while True:
                try:
                    with rm.local() as xid:
                        rm.put(xid, source, rm.get(xid, source) - 1)  # type: ignore[operator]
                        rm.put(xid, target, rm.get(xid, target) + 1)  # type: ignore[operator]
                    break
                except XaError as exc:
                    assert exc.code.is_rollback, exc  # a deadlock victim: try again

    threads = [threading.Thread(target=transfer, args=move) for move in moves]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert rm.items() == {"a": 960, "b": 1040}
    rm.close()


# ---- model check ----------------------------------------------------------------------------------

KEYS = st.sampled_from(["a", "b", "c", "d"])
SLOTS = st.integers(0, 2)
SAVEPOINTS = st.sampled_from(["s1", "s2", "s3"])
VALUES = st.integers(-1000, 1000) | st.sampled_from(["x", "y"])


@dataclass
class ModelBranch:
    state: str = "active"
    code: XaCode | None = None
    writes: list[tuple[str, int | str]] = field(default_factory=list)
    locks: set[str] = field(default_factory=set)
    savepoints: dict[str, int] = field(default_factory=dict)  # name -> len(writes), in creation order


class SqliteRMModel(RuleBasedStateMachine):
    """Random XA traffic on one thread (lock_timeout=0, so a conflict is an immediate XA_RBTIMEOUT).

    Business work is drawn among active branches so that long branches happen; ``misuse`` covers
    work sent to branches that cannot take it.
    """

    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.mkdtemp(prefix="sqlite-rm-model-")
        self.rm = self.open()
        self.committed: dict[str, int | str] = {}
        self.branches: dict[int, ModelBranch] = {}
        self.generation = [0, 0, 0]

    def open(self) -> SqliteRM:
        return SqliteRM(Path(self.dir) / "model.db", "model", lock_timeout=0)

    def teardown(self) -> None:
        self.rm.close()
        shutil.rmtree(self.dir)

    def xid(self, slot: int) -> Xid:
        return Xid(f"g{slot}-{self.generation[slot]}", "b1")

    def active(self) -> list[int]:
        return sorted(s for s, b in self.branches.items() if b.state == "active")

    def pick_active(self, data: st.DataObject) -> tuple[int, ModelBranch]:
        slot = data.draw(st.sampled_from(self.active()), label="slot")
        return slot, self.branches[slot]

    def work_error(self, slot: int) -> XaCode | None:
        """Why the branch in ``slot`` cannot take business work, if it cannot."""
        branch = self.branches.get(slot)
        if branch is None:
            return XaCode.XAER_NOTA
        if branch.state == "prepared":
            return XaCode.XAER_PROTO
        return branch.code

    def lock(self, slot: int, key: str) -> bool:
        """Take the lock in the model; on conflict, the branch is doomed with XA_RBTIMEOUT."""
        if any(key in b.locks for s, b in self.branches.items() if s != slot):
            self.doom(self.branches[slot], XaCode.XA_RBTIMEOUT)
            return False
        self.branches[slot].locks.add(key)
        return True

    @staticmethod
    def doom(branch: ModelBranch, code: XaCode) -> None:
        branch.state, branch.code = "rollback_only", code
        branch.writes, branch.locks, branch.savepoints = [], set(), {}

    @precondition(lambda self: len(self.branches) < 3)
    @rule(data=st.data())
    def start(self, data: st.DataObject) -> None:
        slot = data.draw(st.sampled_from([s for s in range(3) if s not in self.branches]), label="slot")
        self.generation[slot] += 1
        self.branches[slot] = ModelBranch()
        self.rm.start(self.xid(slot))

    @rule(slot=SLOTS, key=KEYS, name=SAVEPOINTS)
    def misuse(self, slot: int, key: str, name: str) -> None:
        xid = self.xid(slot)
        error = self.work_error(slot)
        if error is None:
            self.rm.start(xid)  # rejoining an active branch is fine
            return
        if slot not in self.branches:
            if self.generation[slot]:  # the slot's last xid finished: it cannot start again
                with raises(XaCode.XAER_DUPID):
                    self.rm.start(xid)
        else:
            with raises(error):
                self.rm.start(xid)
        for call in (
            lambda: self.rm.get(xid, key),
            lambda: self.rm.put(xid, key, 1),
            lambda: self.rm.savepoint(xid, name),
            lambda: self.rm.rollback_to_savepoint(xid, name),
        ):
            with raises(error):
                call()

    @precondition(lambda self: self.active())
    @rule(data=st.data(), key=KEYS)
    def get(self, data: st.DataObject, key: str) -> None:
        slot, branch = self.pick_active(data)
        if not self.lock(slot, key):
            with raises(XaCode.XA_RBTIMEOUT):
                self.rm.get(self.xid(slot), key)
            return
        pending = [value for k, value in branch.writes if k == key]
        assert self.rm.get(self.xid(slot), key) == (pending[-1] if pending else self.committed.get(key))

    @precondition(lambda self: self.active())
    @rule(data=st.data(), key=KEYS, value=VALUES)
    def put(self, data: st.DataObject, key: str, value: int | str) -> None:
        slot, branch = self.pick_active(data)
        if not self.lock(slot, key):
            with raises(XaCode.XA_RBTIMEOUT):
                self.rm.put(self.xid(slot), key, value)
            return
        branch.writes.append((key, value))
        self.rm.put(self.xid(slot), key, value)

    @precondition(lambda self: self.active())
    @rule(data=st.data(), name=SAVEPOINTS)
    def savepoint(self, data: st.DataObject, name: str) -> None:
        slot, branch = self.pick_active(data)
        branch.savepoints.pop(name, None)
        branch.savepoints[name] = len(branch.writes)
        self.rm.savepoint(self.xid(slot), name)

    @precondition(lambda self: self.active())
    @rule(data=st.data(), name=SAVEPOINTS)
    def rollback_to_savepoint(self, data: st.DataObject, name: str) -> None:
        slot, branch = self.pick_active(data)
        if name not in branch.savepoints:
            with raises(XaCode.XAER_INVAL):
                self.rm.rollback_to_savepoint(self.xid(slot), name)
            return
        del branch.writes[branch.savepoints[name] :]
        names = list(branch.savepoints)
        for later in names[names.index(name) + 1 :]:
            del branch.savepoints[later]
        self.rm.rollback_to_savepoint(self.xid(slot), name)

    @rule(slot=SLOTS)
    def mark_rollback_only(self, slot: int) -> None:
        branch = self.branches.get(slot)
        xid = self.xid(slot)
        if branch is None or branch.state == "prepared":
            with raises(XaCode.XAER_NOTA if branch is None else XaCode.XAER_PROTO):
                self.rm.mark_rollback_only(xid, XaCode.XA_RBINTEGRITY, "model")
            return
        if branch.state == "active":
            self.doom(branch, XaCode.XA_RBINTEGRITY)
        self.rm.mark_rollback_only(xid, XaCode.XA_RBINTEGRITY, "model")

    @rule(slot=SLOTS)
    def prepare(self, slot: int) -> None:
        xid = self.xid(slot)
        if error := self.work_error(slot):
            if error.is_rollback:  # voting no ends the branch
                del self.branches[slot]
            with raises(error):
                self.rm.prepare(xid)
            return
        branch = self.branches[slot]
        if branch.writes:
            assert self.rm.prepare(xid) == XaCode.XA_OK
            branch.state, branch.savepoints = "prepared", {}
            branch.locks = {key for key, _ in branch.writes}
        else:
            assert self.rm.prepare(xid) == XaCode.XA_RDONLY
            del self.branches[slot]

    @rule(slot=SLOTS, one_phase=st.booleans())
    def commit(self, slot: int, one_phase: bool) -> None:
        branch = self.branches.get(slot)
        xid = self.xid(slot)
        if branch is None:
            error: XaCode | None = XaCode.XAER_NOTA
        elif one_phase and branch.code is not None:
            error = branch.code
            del self.branches[slot]
        elif branch.state != ("active" if one_phase else "prepared"):
            error = XaCode.XAER_PROTO
        else:
            error = None
            self.committed.update(branch.writes)
            del self.branches[slot]
        if error is None:
            self.rm.commit(xid, one_phase)
        else:
            with raises(error):
                self.rm.commit(xid, one_phase)

    @rule(slot=SLOTS)
    def rollback(self, slot: int) -> None:
        if self.branches.pop(slot, None) is None:
            with raises(XaCode.XAER_NOTA):
                self.rm.rollback(self.xid(slot))
        else:
            self.rm.rollback(self.xid(slot))

    @rule()
    def restart(self) -> None:
        self.rm.close()
        self.rm = self.open()
        self.branches = {s: b for s, b in self.branches.items() if b.state == "prepared"}

    @invariant()
    def committed_state_matches(self) -> None:
        assert self.rm.items() == dict(sorted(self.committed.items()))
        prepared = {self.xid(s) for s, b in self.branches.items() if b.state == "prepared"}
        assert set(self.rm.recover()) == prepared


SqliteRMModel.TestCase.settings = settings(max_examples=100, stateful_step_count=50, deadline=None)
test_model = SqliteRMModel.TestCase
