"""MySQL/MariaDB resource manager: one branch is one XA transaction of the server, over PyMySQL.

A branch holds a pooled connection from ``start`` (``XA START``) to prepare, one-phase commit or
rollback; business code runs its SQL on it through a ``MariaConnection``, a handle that dies
with the branch (see participant/stores/base.py: an ended branch is dead). After ``XA PREPARE``
the connection is closed, never pooled: MariaDB keeps a prepared branch attached to the session
that prepared it, and another session's ``XA COMMIT`` answers "unknown XID" until that session is
gone. Phase two then runs from any connection, in any process, after any restart. See
docs/mysql.md and docs/resource-managers.md.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import re
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import unquote, urlsplit

from xatm.participant.errors import InvalidArgumentError, UnavailableError
from xatm.participant.runtime.extras import needs_extra
from xatm.participant.stores.branches import BranchCall, SavepointBranch, SessionHandle, StatementRM, no_vote
from xatm.participant.stores.mysql_errors import errno_of, to_xa_error
from xatm.participant.stores.mysql_xa import (
    SESSION_GONE,
    WRITES,
    MariaSetupError,
    check_server_version,
    decode_xid,
    xid_sql,
)
from xatm.participant.xa import XaCode, XaError, Xid

__all__ = [
    "MariaConnection",
    "MariaCursor",
    "MariaRM",
    "MariaSetupError",
    "MysqlParams",
    "parse_mysql_url",
]

log = logging.getLogger(__name__)

#: Transaction control a handle refuses: after blanks and comments (``--``, ``#``, ``/* */``), the
#: statement's first words.
_XA_VERB = re.compile(
    r"(?:\s|--[^\n]*(?:\n|$)|#[^\n]*(?:\n|$)|/\*.*?\*/)*"
    r"(XA|BEGIN|START\s+TRANSACTION|COMMIT|ROLLBACK|SET\s+AUTOCOMMIT)\b",
    re.IGNORECASE | re.DOTALL,
)

with needs_extra("mysql", "MariaRM"):
    import pymysql
    from pymysql.connections import Connection

#: How long prepare waits for the server to drop the preparing session before it answers.
_DETACH_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class MysqlParams:
    """Where a MySQL/MariaDB database is: what ``mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE`` says."""

    host: str
    port: int
    user: str
    password: str = field(repr=False)  # never in a log line
    database: str = ""

    @property
    def where(self) -> str:
        return f"{self.host}:{self.port}"

    def connect(self, *, autocommit: bool, connect_timeout: float = 10.0) -> Connection:
        """A new PyMySQL connection; raises pymysql errors."""
        return pymysql.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            password=self.password,
            database=self.database,
            autocommit=autocommit,
            connect_timeout=connect_timeout,
            charset="utf8mb4",
        )


def parse_mysql_url(url: str) -> MysqlParams:
    """``mysql://`` or ``mariadb://`` URL -> MysqlParams; InvalidArgumentError naming what is wrong."""
    try:
        parts = urlsplit(url)
        port = parts.port or 3306
    except ValueError as exc:
        raise InvalidArgumentError(f"malformed MySQL URL: {exc}") from exc
    database = unquote(parts.path.lstrip("/"))
    if parts.scheme not in ("mysql", "mariadb") or not parts.hostname or not parts.username or not database:
        raise InvalidArgumentError(
            "malformed MySQL URL: expected mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE"
        )
    return MysqlParams(parts.hostname, port, unquote(parts.username), unquote(parts.password or ""), database)


class _Pool:
    """At most ``size`` open connections; a connection handed back dirty or broken is closed."""

    def __init__(self, params: MysqlParams, size: int, timeout_s: float, *, autocommit: bool, init: str = ""):
        self._params, self._timeout_s, self._autocommit, self._init = params, timeout_s, autocommit, init
        self._slots = threading.BoundedSemaphore(size)
        self._idle: queue.SimpleQueue[Connection] = queue.SimpleQueue()
        self.size = size

    def get(self) -> Connection:
        """An open connection; XaError(XAER_RMFAIL) when none frees up in time or the server is down."""
        if not self._slots.acquire(timeout=self._timeout_s):
            raise XaError(
                XaCode.XAER_RMFAIL,
                f"no connection to {self._params.where} freed up in {self._timeout_s:g}s "
                f"(pool of {self.size})",
            )
        try:
            while True:
                try:
                    conn = self._idle.get_nowait()
                except queue.Empty:
                    break
                if conn.open:
                    return conn
            conn = self._params.connect(autocommit=self._autocommit)
            if self._init:
                with conn.cursor() as cur:
                    cur.execute(self._init)
            return conn
        except BaseException as exc:
            self._slots.release()
            if isinstance(exc, pymysql.err.Error):
                raise to_xa_error(exc, f"connecting to {self._params.where}") from exc
            raise

    def put(self, conn: Connection, *, close: bool = False) -> None:
        if close or not conn.open:
            _close_quietly(conn)
        else:
            self._idle.put(conn)
        self._slots.release()

    @contextmanager
    def connection(self) -> Iterator[Connection]:
        conn = self.get()
        broken = True
        try:
            yield conn
            broken = False
        finally:
            self.put(conn, close=broken)

    def close(self) -> None:
        while True:
            try:
                _close_quietly(self._idle.get_nowait())
            except queue.Empty:
                return


def _one(cursor: Any) -> tuple[Any, ...]:
    """The single row a statement of ours returns (an aggregate: always one)."""
    row = cursor.fetchone()
    if row is None:
        raise pymysql.err.InternalError(0, "the server returned no row")
    return tuple(row)


def _close_quietly(conn: Connection) -> None:
    # Already closed: the server has rolled back whatever was not prepared.
    with contextlib.suppress(pymysql.err.Error):
        conn.close()


@dataclass(eq=False, kw_only=True)
class _Branch(SavepointBranch):
    sql_xid: str
    conn: Connection
    thread_id: int  # the server's id of the session, for KILL QUERY and to see it gone after prepare
    writes_at_start: int
    xa_open: bool = True  # an XA transaction of ours may still be on the session (for the clean-up)
    driver_error: ClassVar[type[Exception]] = pymysql.err.Error
    handle: MariaConnection = field(init=False)

    def __post_init__(self) -> None:
        self.handle = MariaConnection(self)

    def using(self) -> BranchCall[Connection]:
        """One business call on the session (see ``SessionBranch.calling``): a rollback cuts it short
        with KILL QUERY."""
        return BranchCall(self, self.conn)


def _refuse_control(query: Any) -> None:
    if isinstance(query, (str, bytes)) and _XA_VERB.match(
        query if isinstance(query, str) else query.decode()
    ):
        raise XaError(XaCode.XAER_PROTO, MariaConnection.owned)


class MariaCursor:
    """A PyMySQL (buffered) cursor on a branch's session. Every method, and every attribute read,
    raises ``BranchEnded`` once the branch has ended, including reading rows fetched before."""

    __slots__ = ("_branch", "_cursor")

    def __init__(self, branch: _Branch, cursor: Any):
        self._branch, self._cursor = branch, cursor

    @property
    def connection(self) -> MariaConnection:
        return self._branch.handle

    def execute(self, query: str, args: Any = None) -> int:
        """Run one statement; returns the affected row count. Transaction control is refused (XAER_PROTO)."""
        _refuse_control(query)
        with self._branch.using():
            return int(self._cursor.execute(query, args))

    def executemany(self, query: str, args: Sequence[Any]) -> int:
        _refuse_control(query)
        with self._branch.using():
            return int(self._cursor.executemany(query, args) or 0)

    def fetchone(self) -> Any:
        with self._branch.using():
            return self._cursor.fetchone()

    def fetchmany(self, size: int | None = None) -> Any:
        with self._branch.using():
            return self._cursor.fetchmany(size)

    def fetchall(self) -> Any:
        with self._branch.using():
            return self._cursor.fetchall()

    def __iter__(self) -> Iterator[Any]:
        return iter(self.fetchall())

    @property
    def rowcount(self) -> int:
        with self._branch.using():
            return int(self._cursor.rowcount)

    @property
    def lastrowid(self) -> int | None:
        with self._branch.using():
            return self._cursor.lastrowid

    @property
    def description(self) -> Any:
        with self._branch.using():
            return self._cursor.description

    def close(self) -> None:
        self._cursor.close()  # local only: a buffered cursor holds nothing on the server

    def __enter__(self) -> MariaCursor:
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.close()


class MariaConnection(SessionHandle[_Branch]):
    """The branch's session as business code gets it from ``guard``/``connection``.

    ``execute(query, args)`` runs a statement and returns its ``MariaCursor``; ``cursor()`` makes
    one. Placeholders are PyMySQL's ``%s``. Once the branch has ended every use raises
    ``BranchEnded``; the session itself is closed or serves another branch by then, which this
    handle never reaches. Transaction control (``XA``, ``BEGIN``, ``COMMIT``, ``ROLLBACK``,
    ``SET autocommit``) and ``commit()``/``rollback()`` are refused with XAER_PROTO.
    """

    __slots__ = ()

    def cursor(self) -> MariaCursor:
        with self._branch.using() as conn:
            return MariaCursor(self._branch, conn.cursor())

    def execute(self, query: str, args: Any = None) -> MariaCursor:
        cursor = self.cursor()
        cursor.execute(query, args)
        return cursor


class MariaRM(StatementRM[_Branch]):
    """Branches of global transactions in one MySQL/MariaDB database, as the server's XA transactions.

    ``url``: ``mysql://USER[:PASSWORD]@HOST[:PORT]/DATABASE``. ``pool_size`` bounds the sessions held
    by active branches; phase two, recovery and look-ups use up to two more, so committing a
    prepared branch (which frees locks active branches wait for) never queues behind them.
    ``lock_wait_timeout_s`` is ``innodb_lock_wait_timeout`` of branch sessions (a wait for a row a
    prepared branch holds ends as XA_RBTIMEOUT). Raises UnavailableError when the server cannot
    be reached and MariaSetupError when it cannot keep a prepared branch across a disconnect.
    """

    def __init__(
        self,
        url: str,
        rm_id: str,
        *,
        pool_size: int = 4,
        lock_wait_timeout_s: int = 5,
        acquire_timeout_s: float = 10.0,
    ) -> None:
        if pool_size < 1 or lock_wait_timeout_s < 1 or acquire_timeout_s <= 0:
            raise ValueError("pool_size and lock_wait_timeout_s must be >= 1 and acquire_timeout_s > 0")
        super().__init__()
        self.rm_id = rm_id
        self.params = parse_mysql_url(url)
        self.where = self.params.where
        self.server_version = _check_server(self.params)
        self._pool = _Pool(
            self.params,
            pool_size,
            acquire_timeout_s,
            # A statement outside XA (never sent by us) opens a local transaction, which we roll back.
            autocommit=False,
            init=f"SET SESSION innodb_lock_wait_timeout = {int(lock_wait_timeout_s)}",
        )
        self._control = _Pool(self.params, 2, acquire_timeout_s, autocommit=True)

    # -- business API ---------------------------------------------------------------

    def connection(self, xid: Xid) -> MariaConnection:
        """The branch's session handle (the same object on every call); it dies with the branch.
        An ended xid raises BranchEnded, an unknown one XaError(XAER_NOTA)."""
        return self._active(xid).handle

    @contextmanager
    def guard(self, xid: Xid) -> Iterator[MariaConnection]:
        """``with rm.guard(xid) as conn:`` business SQL; a PyMySQL error leaving the block becomes an
        XaError with the mapped code and dooms the branch, so its prepare votes that no."""
        branch = self._active(xid)
        with branch.gate:
            if (ended := branch.ended_error()) is not None:
                raise ended
        if branch.failure is not None:  # an earlier failure stands: the branch cannot commit
            raise no_vote(branch.failure)
        try:
            yield branch.handle
        except pymysql.err.Error as exc:
            raise self._fail(branch, exc, "business SQL") from exc

    # -- XA verbs ---------------------------------------------------------------------

    def start(self, xid: Xid) -> None:
        """``XA START`` on a pooled session, or rejoin an active branch; an ended xid is BranchEnded."""
        if self._joined(xid):
            return  # rejoin: same branch, same session
        sql_xid = xid_sql(xid)
        conn = self._pool.get()
        try:
            with conn.cursor() as cur:
                cur.execute(WRITES)
                thread_id, writes = _one(cur)
                cur.execute(f"XA START {sql_xid}")
        except pymysql.err.Error as exc:
            self._pool.put(conn, close=True)
            raise to_xa_error(exc, "XA START", connection_closed=not conn.open) from exc
        branch = _Branch(
            xid=xid,
            outcomes=self._ended,
            sql_xid=sql_xid,
            conn=conn,
            thread_id=int(thread_id),
            writes_at_start=int(writes),
        )
        self._register(branch)

    def recover(self) -> list[Xid]:
        """``XA RECOVER``: every prepared XA branch of the server whose gtrid and bqual have xatm's
        shape (any formatID: the caller filters); other XIDs are never returned nor touched."""
        return [xid for row in self._xa_recover() if (xid := decode_xid(*row)) is not None]

    # -- internals --------------------------------------------------------------------

    def _pools(self) -> tuple[_Pool, _Pool]:
        return self._pool, self._control

    def _validate(self, xid: Xid) -> None:
        xid_sql(xid)

    def _fail(self, branch: _Branch, exc: pymysql.err.Error, doing: str) -> XaError:
        error = to_xa_error(exc, doing, connection_closed=not branch.conn.open)
        branch.fail(error)
        return error

    def _run(self, branch: _Branch, statement: str, doing: str) -> None:
        """A statement of ours on the branch's session; a failure dooms the branch."""
        try:
            with branch.conn.cursor() as cur:
                cur.execute(statement)
        except pymysql.err.Error as exc:
            raise self._fail(branch, exc, doing) from exc

    def _doomed(self, branch: _Branch) -> XaError | None:
        if branch.failure is not None:
            return no_vote(branch.failure)
        if not branch.conn.open:
            return XaError(XaCode.XA_RBCOMMFAIL, f"connection to {self.where} lost; the server rolled back")
        return None

    def _xa_end(self, branch: _Branch) -> int:
        """``XA END`` and the branch's write count; a branch the server already lost is a no vote."""
        try:
            with branch.conn.cursor() as cur:
                cur.execute(WRITES)
                _, writes = _one(cur)
                cur.execute(f"XA END {branch.sql_xid}")
        except pymysql.err.Error as exc:
            error = to_xa_error(exc, "XA END", connection_closed=not branch.conn.open)
            if errno_of(exc) == 1399:  # ROLLBACK ONLY state: a deadlock or an error outside guard()
                raise XaError(
                    XaCode.XA_RBROLLBACK, f"{error.reason}; the server rolled the branch back"
                ) from exc
            if error.code == XaCode.XAER_NOTA:
                raise XaError(
                    XaCode.XA_RBPROTO, f"{error.reason}; the branch was ended outside xatm"
                ) from exc
            raise no_vote(error) from exc
        return int(writes)

    def _prepare(self, branch: _Branch) -> XaCode:
        sql_xid = branch.sql_xid
        if (doomed := self._doomed(branch)) is not None:
            raise doomed
        conn = branch.conn
        read_only = self._xa_end(branch) == branch.writes_at_start
        verb = f"XA COMMIT {sql_xid} ONE PHASE" if read_only else f"XA PREPARE {sql_xid}"
        try:
            with conn.cursor() as cur:
                cur.execute(verb)
        except pymysql.err.Error as exc:
            error = to_xa_error(exc, verb.split(" X'")[0], connection_closed=not conn.open)
            if error.code == XaCode.XAER_RMFAIL and not read_only:
                raise XaError(
                    XaCode.XAER_RMFAIL,
                    f"{error.reason}; the branch may or may not be prepared, roll it back by xid",
                ) from exc
            raise no_vote(error) from exc
        branch.xa_open = False
        if read_only:
            return XaCode.XA_RDONLY
        # The server keeps the prepared branch attached to this session; only once the session is
        # gone can another one (the coordinator's phase two, recovery) commit or roll it back.
        _close_quietly(conn)
        self._wait_detached(branch)
        return XaCode.XA_OK

    def _wait_detached(self, branch: _Branch) -> None:
        """Until the server has dropped the preparing session (it finishes a disconnect on its own time)."""
        deadline = time.monotonic() + _DETACH_TIMEOUT_S
        try:
            with self._control.connection() as conn, conn.cursor() as cur:
                while time.monotonic() < deadline:
                    cur.execute(SESSION_GONE, (branch.thread_id,))
                    if _one(cur)[0]:
                        return
                    time.sleep(0.005)
                cur.execute(f"KILL CONNECTION {branch.thread_id}")  # prepared XA survives a killed session
        except pymysql.err.Error as exc:
            # The branch is prepared; phase two retries while the session lingers (XA_RETRY).
            log.warning("could not see the session of prepared branch %s leave: %s", branch.xid, exc)

    def _commit_one_phase(self, branch: _Branch) -> None:
        if (doomed := self._doomed(branch)) is not None:
            raise doomed
        self._xa_end(branch)
        try:
            with branch.conn.cursor() as cur:
                cur.execute(f"XA COMMIT {branch.sql_xid} ONE PHASE")
            branch.xa_open = False
        except pymysql.err.Error as exc:
            error = to_xa_error(exc, "XA COMMIT ONE PHASE", connection_closed=not branch.conn.open)
            if error.code == XaCode.XAER_RMFAIL:
                raise XaError(
                    XaCode.XA_HEURHAZ,
                    f"{error.reason}; connection lost during XA COMMIT ONE PHASE, "
                    "the branch may or may not be committed",
                ) from exc
            raise no_vote(error) from exc

    def _xa_recover(self) -> list[tuple[int, int, int, bytes | str]]:
        try:
            with self._control.connection() as conn, conn.cursor() as cur:
                cur.execute("XA RECOVER")
                return [(int(f), int(g), int(b), d) for f, g, b, d in cur.fetchall()]
        except pymysql.err.Error as exc:
            raise to_xa_error(exc, f"XA RECOVER on {self.where}") from exc

    def _end_prepared(self, xid: Xid, *, commit: bool) -> None:
        verb = "XA COMMIT" if commit else "XA ROLLBACK"
        try:
            with self._control.connection() as conn, conn.cursor() as cur:
                cur.execute(f"{verb} {xid_sql(xid)}")
        except pymysql.err.Error as exc:
            error = to_xa_error(exc, verb)
            if error.code != XaCode.XAER_NOTA:
                raise error from exc
            if xid in self.recover():
                # Listed but unknown to this session: still attached to the session that prepared it.
                raise XaError(
                    XaCode.XA_RETRY,
                    f"{verb}: branch {xid} is prepared but still held by the session that prepared it",
                ) from exc
            raise XaError(XaCode.XAER_NOTA, f"{verb}: no branch {xid} in {self.where}") from exc

    def _cancel(self, branch: _Branch) -> None:
        """KILL QUERY from another session: the statement fails, the branch stays (then rolled back)."""
        try:
            with self._control.connection() as conn, conn.cursor() as cur:
                cur.execute(f"KILL QUERY {branch.thread_id}")
        except (XaError, pymysql.err.Error) as exc:
            log.debug("KILL QUERY of a call on ended branch %s failed: %s", branch.xid, exc)

    def _release(self, branch: _Branch) -> None:
        """Back to the pool with no XA transaction on it, or closed (the server then rolls back
        whatever is active or idle; a prepared branch's session is already closed)."""
        conn = branch.conn
        if conn.open:
            try:
                with conn.cursor() as cur:
                    for statement in (f"XA END {branch.sql_xid}", f"XA ROLLBACK {branch.sql_xid}")[
                        0 if branch.xa_open else 2 :
                    ]:
                        try:
                            cur.execute(statement)
                        except pymysql.err.OperationalError as exc:
                            if errno_of(exc) not in (1397, 1399):  # gone already / already idle
                                raise
                conn.rollback()  # anything a stray statement began outside XA
            except pymysql.err.Error as exc:
                log.debug("clean-up of finished branch %s failed, closing its session: %s", branch.xid, exc)
                self._pool.put(conn, close=True)
                return
        self._pool.put(conn)


def _check_server(params: MysqlParams) -> str:
    """Refuse a server that would drop prepared branches on disconnect; returns its version string."""
    try:
        conn = params.connect(autocommit=True)
    except pymysql.err.Error as exc:
        raise UnavailableError(
            f"cannot connect to MySQL at {params.where}: {to_xa_error(exc, 'connect').reason}"
        ) from exc
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT VERSION(), @@default_storage_engine")
            version, engine = _one(cur)
    except pymysql.err.Error as exc:
        raise UnavailableError(
            f"MySQL at {params.where}: {to_xa_error(exc, 'version check').reason}"
        ) from exc
    finally:
        _close_quietly(conn)
    check_server_version(str(version), str(engine), params.where)
    return str(version)
