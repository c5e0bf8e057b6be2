"""Embedded XA resource manager on SQLite: a durable key/value store.

Used by the demo bank services and by ``xatm participant --resource sqlite:PATH``.

How it is built, and why:

* **One owner.** A process claims the store with ``flock`` on ``PATH-lock``. Opening discards every
  branch that was not prepared (an RM forgets active work when it fails, as XA expects), which is only
  safe when nobody else works on the file; a second opener gets ``XaError(XAER_RMFAIL)``.
* **Everything about a branch is in tables**: its state, its row locks and its pending writes. Writes
  are an append-only log per branch whose sequence numbers double as savepoint marks, so rolling back
  to a savepoint is one DELETE and earlier pending values reappear by themselves. A prepared branch
  therefore survives kill -9 with its writes and its locks.
* **Strict two-phase locking** with exclusive row locks taken by ``get`` and ``put``, so a
  read-modify-write cannot lose an update. A conflicting request waits up to ``lock_timeout``; it
  fails with ``XA_RBDEADLOCK`` as soon as the in-process wait-for graph has a cycle through it,
  otherwise with ``XA_RBTIMEOUT``. Either way the branch is rolled back at once (locks released) and
  stays behind as rollback-only, so its prepare votes that same code. At prepare, locks on keys the
  branch only read are released (its reads are over; serialisability holds); written keys stay locked
  until phase two.
* **Threads**: one connection used under one mutex; lock waits sleep on a Condition of that mutex, so
  a waiter never holds the connection. SQLite errors surface as ``XaError(XAER_RMFAIL)`` so the
  coordinator retries phase two instead of giving up.
* **Durability**: WAL journal. The verbs whose answer promises durability (prepare voting XA_OK,
  commit, rollback of a prepared branch) commit with ``synchronous=FULL``; the work of active branches
  uses NORMAL, because active branches are discarded after a crash anyway and the next FULL commit
  fsyncs the WAL, with everything written before it.

* **Ended branches stay dead**: ``finished`` keeps the recent xids with how each ended, so a business
  call with a stale xid raises ``BranchEnded`` (see participant/stores/base.py) and ``start`` refuses it.

Business rules stay in the business code: to veto a branch (e.g. the bank refusing a negative
balance) call ``mark_rollback_only(xid, XaCode.XA_RBINTEGRITY, reason)``; prepare then raises that code.
An unknown savepoint id is ``XAER_INVAL`` (the branch exists, the argument is wrong), not ``XAER_NOTA``,
which the coordinator reads as "branch gone".
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import NamedTuple

from xatm.participant.stores.base import (
    COMMITTED,
    ONE_PHASE,
    PREPARED,
    READ_ONLY,
    ROLLED_BACK,
    BranchEnded,
    ResourceManager,
    ended_by,
)
from xatm.participant.xa import LOCAL_FORMAT_ID, XaCode, XaError, Xid

__all__ = ["LOCAL_FORMAT_ID", "SqliteRM", "Value"]

#: How many finished xids are remembered (with how they ended), so that starting one again is refused
#: (XAER_DUPID) and business calls with one raise BranchEnded.
FINISHED_RETAIN = 10_000

Value = int | str

_INT64 = (-(2**63), 2**63 - 1)
_ACTIVE, _PREPARED, _ROLLBACK_ONLY = "active", "prepared", "rollback_only"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS branches (
    bid INTEGER PRIMARY KEY AUTOINCREMENT,
    format_id INTEGER NOT NULL, gtrid TEXT NOT NULL, bqual TEXT NOT NULL,
    state TEXT NOT NULL, rb_code INTEGER, reason TEXT,
    UNIQUE (format_id, gtrid, bqual));
CREATE TABLE IF NOT EXISTS locks (key TEXT PRIMARY KEY, bid INTEGER NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS locks_bid ON locks (bid);
CREATE TABLE IF NOT EXISTS writes (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, bid INTEGER NOT NULL, key TEXT NOT NULL, value NOT NULL);
CREATE INDEX IF NOT EXISTS writes_bid_key ON writes (bid, key, seq);
CREATE TABLE IF NOT EXISTS savepoints (
    sp_seq INTEGER PRIMARY KEY AUTOINCREMENT, bid INTEGER NOT NULL, name TEXT NOT NULL,
    mark INTEGER NOT NULL, UNIQUE (bid, name));
CREATE TABLE IF NOT EXISTS finished (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    format_id INTEGER NOT NULL, gtrid TEXT NOT NULL, bqual TEXT NOT NULL, how TEXT,
    UNIQUE (format_id, gtrid, bqual));
"""


class _Branch(NamedTuple):
    bid: int
    state: str
    rb_code: int | None
    reason: str | None


class SqliteRM(ResourceManager):
    """A key/value store (str keys; int or str values) whose updates run in XA branches.

    Business code calls ``start(xid)``, then ``get``/``put`` inside the branch; the stub drives the
    XA verbs. ``read_committed``/``items`` read committed state outside any transaction, ``local()``
    runs a transaction of its own.
    """

    #: The connection's ``PRAGMA synchronous`` (set by ``_open``), so ``_tx`` changes it only when needed.
    _sync: str

    def __init__(self, path: str | Path, rm_id: str, *, lock_timeout: float = 2.0) -> None:
        self.path = Path(path)
        self.rm_id = rm_id
        self.lock_timeout = lock_timeout
        self._cond = threading.Condition(threading.Lock())
        self._waits: dict[int, int] = {}  # waiting branch -> branch holding the lock it wants
        self._closed = False
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._owner_fd = _claim(self.path)
        try:
            self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except sqlite3.Error as exc:
            os.close(self._owner_fd)
            raise XaError(XaCode.XAER_RMFAIL, f"sqlite store {self.path}: {exc}") from exc
        try:
            with self._guard():
                self._open()
        except BaseException:
            self.close()
            raise

    # ---- business API -------------------------------------------------------------------------

    def get(self, xid: Xid, key: str) -> Value | None:
        """The branch's view of ``key`` (its own pending write, else the committed value); locks it."""
        _check_key(key)
        with self._guard():
            bid, held = self._lock(xid, key)
            if not held:
                with self._tx():
                    self._db.execute("INSERT INTO locks (key, bid) VALUES (?, ?)", (key, bid))
            return self._view(bid, key)

    def put(self, xid: Xid, key: str, value: Value) -> None:
        """Set ``key`` within the branch; visible to others only after commit."""
        _check_key(key)
        _check_value(value)
        with self._guard():
            bid, held = self._lock(xid, key)
            with self._tx():
                if not held:
                    self._db.execute("INSERT INTO locks (key, bid) VALUES (?, ?)", (key, bid))
                self._db.execute("INSERT INTO writes (bid, key, value) VALUES (?, ?, ?)", (bid, key, value))

    def read_committed(self, key: str) -> Value | None:
        """Committed value of ``key``, taking no lock (for reports and tests)."""
        with self._guard():
            row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
            return None if row is None else row[0]

    def items(self) -> dict[str, Value]:
        """Every committed key and value, sorted by key."""
        with self._guard():
            return dict(self._db.execute("SELECT key, value FROM kv ORDER BY key"))

    def mark_rollback_only(self, xid: Xid, code: XaCode, reason: str) -> None:
        """Veto the branch: roll its work back now, and make prepare raise ``XaError(code, reason)``.

        ``code`` must be an XA_RB* code (the bank uses XA_RBINTEGRITY). Marking an already
        rollback-only branch keeps the first code.
        """
        if not XaCode(code).is_rollback:
            raise XaError(XaCode.XAER_INVAL, f"{XaCode(code).name} is not an XA_RB* code")
        with self._guard():
            branch = self._known(xid, business=True)
            if branch.state == _PREPARED:
                raise BranchEnded(xid, PREPARED, XaCode.XAER_PROTO)
            if branch.state == _ACTIVE:
                self._doom(branch.bid, XaCode(code), reason)

    @contextmanager
    def local(self) -> Iterator[Xid]:
        """A local transaction: yields a fresh branch, one-phase commits it, or rolls back on error."""
        xid = Xid(f"local.{uuid.uuid4().hex}", "0", LOCAL_FORMAT_ID)
        self.start(xid)
        try:
            yield xid
        except BaseException:
            with suppress(XaError):
                self.rollback(xid)
            raise
        self.commit(xid, one_phase=True)

    # ---- XA verbs -----------------------------------------------------------------------------

    def start(self, xid: Xid) -> None:
        """New branch, or rejoin an active one; a finished xid is BranchEnded(XAER_DUPID), a prepared
        one BranchEnded(XAER_PROTO)."""
        with self._guard():
            branch = self._branch(xid)
            if branch is None:
                if (how := self._how_ended(xid)) is not None:
                    raise BranchEnded(xid, how, XaCode.XAER_DUPID)
                with self._tx():
                    self._db.execute(
                        "INSERT INTO branches (format_id, gtrid, bqual, state) VALUES (?, ?, ?, ?)",
                        (*_key(xid), _ACTIVE),
                    )
            else:
                _require_active(xid, branch)

    def prepare(self, xid: Xid) -> XaCode:
        with self._guard():
            branch = self._known(xid)
            if branch.state == _ROLLBACK_ONLY:
                error = _rollback_error(branch)
                with self._tx():
                    self._finish(branch.bid, xid, ended_by("prepare", error.code))
                raise error
            if branch.state == _PREPARED:
                raise XaError(XaCode.XAER_PROTO, f"branch {xid} is already prepared")
            if not self._db.execute("SELECT 1 FROM writes WHERE bid = ? LIMIT 1", (branch.bid,)).fetchone():
                with self._tx():
                    self._finish(branch.bid, xid, READ_ONLY)
                return XaCode.XA_RDONLY
            with self._tx(durable=True):
                self._db.execute(
                    "DELETE FROM locks WHERE bid = ?1 AND key NOT IN (SELECT key FROM writes WHERE bid = ?1)",
                    (branch.bid,),
                )
                self._db.execute("DELETE FROM savepoints WHERE bid = ?", (branch.bid,))
                self._db.execute("UPDATE branches SET state = ? WHERE bid = ?", (_PREPARED, branch.bid))
            self._cond.notify_all()
            return XaCode.XA_OK

    def commit(self, xid: Xid, one_phase: bool) -> None:
        with self._guard():
            branch = self._known(xid)
            if one_phase and branch.state == _ROLLBACK_ONLY:
                error = _rollback_error(branch)
                with self._tx():
                    self._finish(branch.bid, xid, ended_by("one-phase commit", error.code))
                raise error
            wanted = _ACTIVE if one_phase else _PREPARED
            if branch.state != wanted:
                kind = "one-phase" if one_phase else "two-phase"
                raise XaError(
                    XaCode.XAER_PROTO, f"{kind} commit needs a {wanted} branch; {xid} is {branch.state}"
                )
            with self._tx(durable=True):
                self._db.execute(
                    "INSERT INTO kv (key, value) SELECT key, value FROM writes"
                    " WHERE seq IN (SELECT MAX(seq) FROM writes WHERE bid = ? GROUP BY key)"
                    " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                    (branch.bid,),
                )
                self._finish(branch.bid, xid, ONE_PHASE if one_phase else COMMITTED)

    def rollback(self, xid: Xid) -> None:
        with self._guard():
            branch = self._known(xid)
            with self._tx(durable=branch.state == _PREPARED):
                self._finish(branch.bid, xid, ROLLED_BACK)

    def recover(self) -> list[Xid]:
        with self._guard():
            rows = self._db.execute(
                "SELECT gtrid, bqual, format_id FROM branches WHERE state = ? ORDER BY bid", (_PREPARED,)
            )
            return [Xid(gtrid, bqual, format_id) for gtrid, bqual, format_id in rows]

    def forget(self, xid: Xid) -> None:
        """This RM never completes a branch heuristically, so there is never anything to forget."""
        with self._guard():
            branch = self._known(xid)
            raise XaError(XaCode.XAER_PROTO, f"branch {xid} is {branch.state}, not heuristically completed")

    def savepoint(self, xid: Xid, savepoint_id: str) -> None:
        """Mark the branch's write log; reusing an id moves the mark (as SQL SAVEPOINT does)."""
        with self._guard():
            bid = self._active(xid)
            with self._tx():
                self._db.execute(
                    "INSERT OR REPLACE INTO savepoints (bid, name, mark)"
                    " SELECT ?1, ?2, COALESCE(MAX(seq), 0) FROM writes WHERE bid = ?1",
                    (bid, savepoint_id),
                )

    def rollback_to_savepoint(self, xid: Xid, savepoint_id: str) -> None:
        """Drop writes after the mark and later savepoints; locks stay held. Unknown id: XAER_INVAL."""
        with self._guard():
            bid = self._active(xid)
            row = self._db.execute(
                "SELECT sp_seq, mark FROM savepoints WHERE bid = ? AND name = ?", (bid, savepoint_id)
            ).fetchone()
            if row is None:
                raise XaError(XaCode.XAER_INVAL, f"no savepoint {savepoint_id!r} in branch {xid}")
            sp_seq, mark = row
            with self._tx():
                self._db.execute("DELETE FROM writes WHERE bid = ? AND seq > ?", (bid, mark))
                self._db.execute("DELETE FROM savepoints WHERE bid = ? AND sp_seq > ?", (bid, sp_seq))

    def close(self) -> None:
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._db.close()
            os.close(self._owner_fd)
            self._cond.notify_all()

    # ---- internals (all called with the mutex held) ------------------------------------------

    @contextmanager
    def _guard(self) -> Iterator[None]:
        """Hold the mutex; report SQLite failures as XAER_RMFAIL (retryable) rather than crashing."""
        with self._cond:
            if self._closed:
                raise XaError(XaCode.XAER_RMFAIL, f"sqlite store {self.path} is closed")
            try:
                yield
            except sqlite3.Error as exc:
                raise XaError(XaCode.XAER_RMFAIL, f"sqlite store {self.path}: {exc}") from exc

    @contextmanager
    def _tx(self, durable: bool = False) -> Iterator[None]:
        """One SQLite transaction; ``durable`` ones are fsynced before they return."""
        sync = "FULL" if durable else "NORMAL"
        if sync != self._sync:
            self._db.execute(f"PRAGMA synchronous={sync}")
            self._sync = sync
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._db.execute("COMMIT")
        except BaseException:
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            raise

    def _branch(self, xid: Xid) -> _Branch | None:
        row = self._db.execute(
            "SELECT bid, state, rb_code, reason FROM branches"
            " WHERE format_id = ? AND gtrid = ? AND bqual = ?",
            _key(xid),
        ).fetchone()
        return None if row is None else _Branch(*row)

    def _known(self, xid: Xid, *, business: bool = False) -> _Branch:
        """The branch; XAER_NOTA if there is none, saying how it ended if it ended here -- as
        BranchEnded for ``business`` calls, whose xid is a stale handle."""
        branch = self._branch(xid)
        if branch is None:
            how = self._how_ended(xid)
            if how is not None and business:
                raise BranchEnded(xid, how)
            raise XaError(XaCode.XAER_NOTA, f"unknown branch {xid}" if how is None else f"branch {xid} {how}")
        return branch

    def _how_ended(self, xid: Xid) -> str | None:
        row = self._db.execute(
            "SELECT how FROM finished WHERE format_id = ? AND gtrid = ? AND bqual = ?", _key(xid)
        ).fetchone()
        return None if row is None else row[0] or "finished before the store was last opened"

    def _active(self, xid: Xid) -> int:
        branch = self._known(xid, business=True)
        _require_active(xid, branch)
        return branch.bid

    def _lock(self, xid: Xid, key: str) -> tuple[int, bool]:
        """Wait until the branch may lock ``key``; return (branch id, whether it already holds it)."""
        deadline = time.monotonic() + self.lock_timeout
        while True:
            bid = self._active(xid)  # again after each wait: the branch may have ended meanwhile
            row = self._db.execute("SELECT bid FROM locks WHERE key = ?", (key,)).fetchone()
            if row is None or row[0] == bid:
                return bid, row is not None
            self._waits[bid] = row[0]
            try:
                remaining = deadline - time.monotonic()
                if self._in_cycle(bid):
                    code, reason = XaCode.XA_RBDEADLOCK, f"deadlock waiting for the lock on {key!r}"
                elif remaining <= 0:
                    code, reason = XaCode.XA_RBTIMEOUT, f"waited {self.lock_timeout}s for the lock on {key!r}"
                else:
                    self._cond.wait(remaining)
                    continue
                self._doom(bid, code, reason)
                raise XaError(code, reason)
            finally:
                self._waits.pop(bid, None)

    def _in_cycle(self, bid: int) -> bool:
        """Does following who-waits-for-whom from ``bid`` lead back to it?"""
        seen: set[int] = set()
        current = self._waits.get(bid)
        while current is not None and current not in seen:
            if current == bid:
                return True
            seen.add(current)
            current = self._waits.get(current)
        return False

    def _view(self, bid: int, key: str) -> Value | None:
        row = self._db.execute(
            "SELECT value FROM writes WHERE bid = ? AND key = ? ORDER BY seq DESC LIMIT 1", (bid, key)
        ).fetchone()
        if row is None:
            row = self._db.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def _doom(self, bid: int, code: XaCode, reason: str) -> None:
        """Roll the branch's work back now but keep it, rollback-only, until prepare/rollback."""
        with self._tx():
            self._release(bid)
            self._db.execute(
                "UPDATE branches SET state = ?, rb_code = ?, reason = ? WHERE bid = ?",
                (_ROLLBACK_ONLY, int(code), reason, bid),
            )

    def _release(self, bid: int) -> None:
        for table in ("writes", "locks", "savepoints"):
            self._db.execute(f"DELETE FROM {table} WHERE bid = ?", (bid,))
        self._cond.notify_all()

    def _finish(self, bid: int, xid: Xid, how: str) -> None:
        """Forget the branch, remembering its xid and ``how`` it ended for a while, so it cannot be
        started again and a stale business call is told why."""
        self._release(bid)
        self._db.execute("DELETE FROM branches WHERE bid = ?", (bid,))
        cursor = self._db.execute(
            "INSERT INTO finished (format_id, gtrid, bqual, how) VALUES (?, ?, ?, ?)", (*_key(xid), how)
        )
        seq = cursor.lastrowid
        assert seq is not None  # set by every INSERT into a rowid table
        self._db.execute("DELETE FROM finished WHERE seq <= ?", (seq - FINISHED_RETAIN,))

    def _open(self) -> None:
        (mode,) = self._db.execute("PRAGMA journal_mode=WAL").fetchone()
        if mode != "wal":
            raise XaError(
                XaCode.XAER_RMFAIL, f"sqlite store {self.path} cannot use WAL (journal mode {mode})"
            )
        self._db.execute("PRAGMA synchronous=FULL")
        self._sync = "FULL"
        self._db.executescript(_SCHEMA)
        if "how" not in {column for _, column, *_ in self._db.execute("PRAGMA table_info(finished)")}:
            self._db.execute("ALTER TABLE finished ADD COLUMN how TEXT")  # a store made before it was kept
        with self._tx(durable=True):
            self._discard_unprepared()

    def _discard_unprepared(self) -> None:
        """Crash recovery: work of branches that never prepared is lost, as with any XA RM."""
        unprepared = "SELECT bid FROM branches WHERE state != 'prepared'"
        for table in ("writes", "locks", "savepoints"):
            self._db.execute(f"DELETE FROM {table} WHERE bid IN ({unprepared})")
        self._db.execute(
            "INSERT OR IGNORE INTO finished (format_id, gtrid, bqual, how)"
            " SELECT format_id, gtrid, bqual, ? FROM branches WHERE state != 'prepared'",
            (ROLLED_BACK + ": it was still active when the store was reopened",),
        )
        self._db.execute("DELETE FROM branches WHERE state != 'prepared'")


def _claim(path: Path) -> int:
    """Take the store's owner lock (released by the kernel even on kill -9)."""
    fd = os.open(f"{path}-lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise XaError(XaCode.XAER_RMFAIL, f"sqlite store {path} is already open in another RM") from None
    return fd


def _key(xid: Xid) -> tuple[int, str, str]:
    return xid.format_id, xid.gtrid, xid.bqual


def _require_active(xid: Xid, branch: _Branch) -> None:
    if branch.state == _ROLLBACK_ONLY:
        raise _rollback_error(branch)
    if branch.state == _PREPARED:
        raise BranchEnded(xid, PREPARED, XaCode.XAER_PROTO)  # its business phase is over


def _rollback_error(branch: _Branch) -> XaError:
    return XaError(XaCode(branch.rb_code or XaCode.XA_RBROLLBACK), branch.reason or "")


def _check_key(key: str) -> None:
    if not isinstance(key, str):
        raise XaError(XaCode.XAER_INVAL, f"key must be a str, not {type(key).__name__}")


def _check_value(value: Value) -> None:
    if type(value) is int:
        if not _INT64[0] <= value <= _INT64[1]:
            raise XaError(XaCode.XAER_INVAL, f"integer value {value} does not fit in 64 bits")
    elif type(value) is not str:
        raise XaError(XaCode.XAER_INVAL, f"value must be an int or a str, not {type(value).__name__}")
