"""PostgreSQL resource manager: one branch is one session transaction, made durable with PREPARE TRANSACTION.

A branch holds a pooled connection from ``start`` to ``prepare`` (or one-phase commit, or
rollback); business code runs its SQL on it through a ``BranchConnection``, a handle that
dies with the branch (see participant/stores/base.py: an ended branch is dead). PREPARE TRANSACTION
detaches the transaction from the session, so the connection goes back to the pool at once and
the branch can be committed or rolled back later from any connection, by any process, after
any restart: the gid alone names it. See docs/postgresql.md and docs/resource-managers.md.

A branch costs no round trip that carries nothing: pooled connections are not checked when taken
(one that died while idle fails its first statement before doing anything, and another is
taken), and whether the branch wrote is learnt from its statements' own results, asking the
server only when they cannot tell.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from xatm.participant.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError
from xatm.participant.runtime.extras import needs_extra
from xatm.participant.stores.base import BranchEnded
from xatm.participant.stores.branches import (
    XID_PART,
    BranchCall,
    SavepointBranch,
    SessionHandle,
    StatementRM,
    check_xid,
    no_vote,
)
from xatm.participant.stores.postgresql_errors import to_xa_error
from xatm.participant.xa import XaCode, XaError, Xid

with needs_extra("postgresql", "PostgresRM"):
    import psycopg
    from psycopg.conninfo import conninfo_to_dict
    from psycopg.pq import TransactionStatus
    from psycopg_pool import ConnectionPool

__all__ = ["BranchConnection", "BranchHandle", "PostgresRM", "PostgresSetupError", "decode_gid", "encode_gid"]

log = logging.getLogger(__name__)

# '/' is outside the gtrid/bqual alphabet, so splitting on it is unambiguous; the formatID is
# fixed-width hex so every XID has exactly one gid. 4+1+8+1+64+1+64 = 143 < 200 (GIDSIZE).
_GID = re.compile(f"xatm/([0-9a-f]{{8}})/({XID_PART.pattern})/({XID_PART.pattern})")
_MIN_SERVER_VERSION = 130000  # pg_current_xact_id_if_assigned()
#: Seconds between cancel requests to a business call still running on a branch being rolled back.
_CANCEL_AGAIN_S = 1.0
# What a handle wraps: objects bound to the session -- cursors, blocks (transaction(), pipeline(),
# copy(): any context manager) and row streams.
_BOUND = (psycopg.Cursor, AbstractContextManager, Iterator)
# Command tags ("INSERT 0 3", "UPDATE 1", ...) of statements that wrote the rows they count: a row
# written gives the transaction its id, so the branch cannot be read-only.
_WRITE_TAGS = frozenset({"INSERT", "UPDATE", "DELETE", "MERGE"})
# The read-only check, run when no statement showed a write: no transaction id, nothing written.
_NO_XID = "SELECT pg_current_xact_id_if_assigned() IS NULL"
T = TypeVar("T")


def encode_gid(xid: Xid) -> str:
    """The PREPARE TRANSACTION gid of a branch: ``xatm/<formatID as 8 hex digits>/<gtrid>/<bqual>``."""
    check_xid(xid, max_format_id=0xFFFFFFFF, format_id_range="0..2^32-1")
    fid, gtrid, bqual = xid.format_id, xid.gtrid, xid.bqual
    return f"xatm/{fid:08x}/{gtrid}/{bqual}"


def _gid_literal(gid: str) -> str:
    """``gid`` as an SQL string literal. Written out rather than composed by psycopg.sql (which
    costs more than the statement's own send): a gid of ``encode_gid`` holds only characters of
    [0-9A-Za-z._:/-], so it needs no quoting beyond the enclosing quotes."""
    if not _GID.fullmatch(gid):
        raise InvalidArgumentError(f"not a gid of xatm: {gid[:200]!r}")
    return f"'{gid}'"


def decode_gid(gid: str) -> Xid | None:
    """The XID behind a gid of ours, or None for any other gid (foreign ones are never touched)."""
    match = _GID.fullmatch(gid)
    return Xid(match[2], match[3], int(match[1], 16)) if match else None


class PostgresSetupError(FailedPreconditionError):
    """The server cannot host xatm branches; raised at construction, never in the middle of a commit."""

    def __init__(self, message: str):
        super().__init__(message)


@dataclass(eq=False, kw_only=True)
class _Branch(SavepointBranch):
    conn: psycopg.Connection[Any]
    open_blocks: int = 0  # with-blocks (transaction, pipeline, copy, cursor) entered via a handle, not left
    dirty: bool = False  # a call cut short or a block open at the end: the session is unfit for reuse
    wrote: bool = False  # a business statement reported rows written (see ``note``)
    driver_error: ClassVar[type[Exception]] = psycopg.Error
    handle: BranchConnection = field(init=False)

    def __post_init__(self) -> None:
        self.handle = BranchConnection(self)

    def refusal(self) -> Exception | None:
        """Also refused: a call once business code ended the transaction on the session."""
        if (ended := self.ended_error()) is not None:
            return ended
        return _transaction_ended(self.conn)

    def note(self, cursor: psycopg.Cursor[Any]) -> None:
        """Learn from a business statement's own result whether the branch has written.

        Only ever an under-estimate: a write done by a function a SELECT calls shows no written
        rows, so a branch with nothing noted is asked about at prepare instead.
        """
        if not self.wrote and cursor.rowcount > 0:
            self.wrote = (cursor.statusmessage or "").partition(" ")[0] in _WRITE_TAGS

    def using(self) -> BranchCall[psycopg.Connection[Any]]:
        """One business call on the connection (see ``SessionBranch.calling``): a rollback cuts it
        short with a cancel request."""
        return BranchCall(self, self.conn)

    def open_block(self, target: Any, opening: Callable[[Any], Any] | None = None) -> Any:
        """``target.__enter__()`` (or ``opening(target)``, e.g. ``iter``), counting the open block."""
        with self.using():
            result = target.__enter__() if opening is None else opening(target)
            with self.gate:
                self.open_blocks += 1
        return result

    def close_block(self, target: Any, exc_info: tuple[Any, Any, Any]) -> bool | None:
        """``target.__exit__()`` for a handle; after the end the session is not touched.

        The block's own exception goes on; a block that ended cleanly after its branch did
        raises BranchEnded, since what it did cannot commit.
        """
        try:
            with self.using():
                return bool(target.__exit__(*exc_info))
        except BranchEnded:
            if exc_info[0] is not None:
                return False
            raise
        finally:
            with self.gate:
                self.open_blocks -= 1


def _transaction_ended(conn: psycopg.Connection[Any]) -> XaError | None:
    """The branch's transaction is over on its session (business code sent COMMIT or ROLLBACK):
    anything run there now would autocommit outside the branch."""
    if conn.closed or conn.info.transaction_status != TransactionStatus.IDLE:
        return None
    return XaError(
        XaCode.XA_RBPROTO,
        "the branch's transaction was ended on its connection "
        "(COMMIT or ROLLBACK sent by business code); its work may be partly committed",
    )


def _bind(branch: _Branch, value: Any) -> Any:
    """Wrap what a call on the session returned when it is itself bound to the session
    (``cursor.connection`` is the branch's handle, never the pooled connection)."""
    if isinstance(value, psycopg.Connection):
        return branch.handle
    return BranchHandle(branch, value) if isinstance(value, _BOUND) else value


class BranchHandle:
    """Anything made from a ``BranchConnection``: a cursor, a ``transaction()`` or ``pipeline()``
    block, a ``copy()``, a row stream. It behaves as the psycopg object it wraps while the branch
    lives; afterwards every attribute, call, iteration and block raises ``BranchEnded``.
    """

    __slots__ = ("_branch", "_target")

    def __init__(self, branch: _Branch, target: Any):
        object.__setattr__(self, "_branch", branch)
        object.__setattr__(self, "_target", target)

    def __getattr__(self, name: str) -> Any:
        branch, target = self._branch, self._target
        with branch.using():
            value = getattr(target, name)
        if not callable(value):
            return _bind(branch, value)

        def call(*args: Any, **kwargs: Any) -> Any:
            with branch.using():
                result = value(*args, **kwargs)
                if isinstance(target, psycopg.Cursor):
                    branch.note(target)
                return _bind(branch, result)

        return call

    def __setattr__(self, name: str, value: Any) -> None:
        with self._branch.using():
            setattr(self._target, name, value)

    def __iter__(self) -> Iterator[Any]:
        branch = self._branch
        items = branch.open_block(self._target, iter)  # a row stream holds the session until it is done
        try:
            while True:
                with branch.using():
                    try:
                        item = next(items)
                    except StopIteration:
                        return
                yield _bind(branch, item)
        finally:
            with branch.gate:
                branch.open_blocks -= 1

    def __enter__(self) -> Any:
        result = self._branch.open_block(self._target)
        return self if result is self._target else _bind(self._branch, result)

    def __exit__(self, *exc_info: Any) -> bool | None:
        return self._branch.close_block(self._target, exc_info)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} of branch {self._branch.xid}: {self._target!r}>"


class BranchConnection(SessionHandle[_Branch]):
    """The branch's connection as business code gets it from ``guard``/``connection``.

    ``execute``, ``cursor``, ``transaction`` and ``pipeline`` work as on a psycopg connection
    and hand out ``BranchHandle`` wrappers. Once the branch has ended (prepared, committed,
    rolled back) every use raises ``BranchEnded`` naming the xid and how it ended; the session
    itself may by then serve another branch, which this handle can never reach. ``commit()``
    and ``rollback()`` are refused: the transaction belongs to the coordinator.
    """

    __slots__ = ()
    owned = SessionHandle.owned + " (conn.transaction())"

    def execute(self, query: Any, params: Any = None, **options: Any) -> BranchHandle:
        """``psycopg.Connection.execute``: run a statement, return its cursor (wrapped)."""
        with self._branch.using() as conn:
            cursor = conn.execute(query, params, **options)
            self._branch.note(cursor)
            return BranchHandle(self._branch, cursor)

    def cursor(self, *args: Any, **kwargs: Any) -> BranchHandle:
        """``psycopg.Connection.cursor`` (client or, with ``name=``, server-side), wrapped."""
        with self._branch.using() as conn:
            return BranchHandle(self._branch, conn.cursor(*args, **kwargs))

    def transaction(self, *args: Any, **kwargs: Any) -> BranchHandle:
        """``with conn.transaction():`` -- a savepoint inside the branch."""
        with self._branch.using() as conn:
            return BranchHandle(self._branch, conn.transaction(*args, **kwargs))

    def pipeline(self) -> BranchHandle:
        """``with conn.pipeline():`` -- batch statements inside the branch."""
        with self._branch.using() as conn:
            return BranchHandle(self._branch, conn.pipeline())

    @property
    def info(self) -> Any:
        """``psycopg.Connection.info`` (server, backend pid, transaction status)."""
        with self._branch.using() as conn:
            return conn.info

    @property
    def adapters(self) -> Any:
        """The connection's adapters, to register types for this branch's statements."""
        with self._branch.using() as conn:
            return conn.adapters


class PostgresRM(StatementRM[_Branch]):
    """Branches of global transactions in one PostgreSQL database.

    ``pool_size`` bounds the connections held by active branches; phase two and recovery use
    a separate pair of connections so that commits of prepared branches (which release locks
    that active branches may be waiting for) never queue behind them. Neither pool checks a
    connection it hands out: the first statement on it is the check (see ``_first_use``).
    ``lock_timeout_ms`` bounds every lock wait of business SQL (0 disables it), so a branch blocked by a
    prepared-but-undecided branch fails with XA_RBTIMEOUT instead of hanging.
    """

    def __init__(
        self,
        dsn: str,
        rm_id: str,
        *,
        pool_size: int = 4,
        lock_timeout_ms: int = 5000,
        acquire_timeout_s: float = 10.0,
    ) -> None:
        if pool_size < 1 or lock_timeout_ms < 0 or acquire_timeout_s <= 0:
            raise ValueError("pool_size must be >= 1, lock_timeout_ms >= 0 and acquire_timeout_s > 0")
        super().__init__()
        self.rm_id = rm_id
        self.where = _check_server(dsn)

        def configure(conn: psycopg.Connection[Any]) -> None:
            conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{lock_timeout_ms}ms",))

        #: Sent after the statement that ends each branch, in its round trip: session settings a
        #: branch changed (SET SESSION CHARACTERISTICS, statement_timeout, ...) go back to the
        #: session's defaults (connection options included) instead of staying with the pooled
        #: connection for the transactions after it; then the pool's own setting again.
        self._reset = f"; RESET ALL; SET lock_timeout = '{int(lock_timeout_ms)}ms'"

        self._pool: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            dsn,
            min_size=1,
            max_size=pool_size,
            timeout=acquire_timeout_s,
            kwargs={"autocommit": True},
            configure=configure,
            name=f"xatm-{rm_id}-branches",
            open=True,
        )
        self._control: ConnectionPool[psycopg.Connection[Any]] = ConnectionPool(
            dsn,
            min_size=1,
            max_size=2,
            timeout=acquire_timeout_s,
            kwargs={"autocommit": True},
            name=f"xatm-{rm_id}-control",
            open=True,
        )

    # -- business API ---------------------------------------------------------------

    def connection(self, xid: Xid) -> BranchConnection:
        """The branch's connection handle, for its business SQL; the same object on every call.

        It dies with the branch: used after prepare, commit or rollback it raises BranchEnded.
        ``commit()``/``rollback()`` on it are refused (``with conn.transaction():`` is fine, it
        becomes a savepoint). An ended xid raises BranchEnded, an unknown one XaError(XAER_NOTA).
        """
        return self._active(xid).handle

    @contextmanager
    def guard(self, xid: Xid) -> Iterator[BranchConnection]:
        """``with rm.guard(xid) as conn:`` business SQL; a psycopg error leaving the block becomes an
        XaError with the mapped code and dooms the branch, so its prepare votes that no.
        """
        branch = self._active(xid)
        branch.check()
        doomed = self._doomed(branch)
        if doomed is not None:  # an earlier failure stands: PostgreSQL takes no more work from it
            raise doomed
        try:
            yield branch.handle
        except psycopg.Error as exc:
            raise self._fail(branch, exc, "business SQL") from exc

    # -- XA verbs ---------------------------------------------------------------------

    def start(self, xid: Xid) -> None:
        """Open the branch (a pooled connection, BEGIN) or rejoin it; an ended xid is BranchEnded
        (XAER_PROTO while prepared, else XAER_DUPID): a late call must not revive it."""
        if self._joined(xid):
            return  # rejoin: same branch, same connection
        try:
            conn, _ = self._first_use(self._pool, "BEGIN", lambda conn: conn.execute("BEGIN"))
        except psycopg.Error as exc:
            raise to_xa_error(exc, "BEGIN") from exc
        self._register(_Branch(xid=xid, outcomes=self._ended, conn=conn))

    def recover(self) -> list[Xid]:
        query = "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() ORDER BY prepared"
        try:
            rows = self._on_control("recover", lambda conn: conn.execute(query).fetchall())
        except psycopg.Error as exc:
            raise to_xa_error(exc, f"recover from {self.where}") from exc
        return [xid for (gid,) in rows if (xid := decode_gid(gid)) is not None]

    # -- internals --------------------------------------------------------------------

    def _pools(self) -> tuple[ConnectionPool[Any], ConnectionPool[Any]]:
        return self._pool, self._control

    def _first_use(
        self, pool: ConnectionPool[Any], doing: str, step: Callable[[psycopg.Connection[Any]], T]
    ) -> tuple[psycopg.Connection[Any], T]:
        """A connection of ``pool`` and what ``step`` (its first statements) returned on it.

        Nothing checks a connection when the pool hands it out (that would cost a round trip each
        time). One that died while idle fails ``step`` with the connection closed; it goes back
        (the pool replaces it) and the next is tried: up to ``max_size + 1`` of them, since after a
        server restart every idle one may be dead. Whatever else ``step`` raises is raised, the
        connection given back. XaError(XAER_RMFAIL) when no connection can be had within the
        acquire timeout, or the last one tried was closed too.
        """
        tries = pool.max_size + 1
        while True:
            tries -= 1
            try:
                conn = pool.getconn()
            except psycopg.Error as exc:
                where = f"{doing}: no connection to {self.where} (pool of {pool.max_size})"
                raise to_xa_error(exc, where) from exc
            try:
                return conn, step(conn)
            except BaseException as exc:
                pool.putconn(conn)
                if not (isinstance(exc, psycopg.Error) and conn.closed):
                    raise
                if not tries:
                    raise to_xa_error(exc, doing, connection_closed=True) from exc
                log.info("%s: pooled connection to %s was dead (%s), taking another", doing, self.where, exc)

    def _on_control(self, doing: str, step: Callable[[psycopg.Connection[Any]], T]) -> T:
        """``step`` on a connection of the phase-two pool (see ``_first_use``), given back after.

        Retrying a step whose connection died under it is what the coordinator would do anyway:
        a COMMIT PREPARED that did reach the server before the connection died is answered
        XAER_NOTA the second time, which phase two takes as done.
        """
        conn, result = self._first_use(self._control, doing, step)
        self._control.putconn(conn)
        return result

    def _validate(self, xid: Xid) -> None:
        encode_gid(xid)

    def _fail(self, branch: _Branch, exc: psycopg.Error, doing: str) -> XaError:
        error = to_xa_error(exc, doing, connection_closed=branch.conn.closed)
        branch.fail(error)
        return error

    def _run(self, branch: _Branch, statement: str, doing: str) -> None:
        try:
            branch.conn.execute(statement)
        except psycopg.Error as exc:
            raise self._fail(branch, exc, doing) from exc

    def _doomed(self, branch: _Branch) -> XaError | None:
        """Why the branch cannot commit, if it cannot: PostgreSQL has or will roll it back."""
        status = branch.conn.info.transaction_status
        if branch.failure is not None:
            return no_vote(branch.failure)
        if branch.dirty:
            return XaError(
                XaCode.XA_RBPROTO,
                "business code still had a call, block or row stream open on the branch's connection "
                "when the branch was ended; its work is incomplete",
            )
        if branch.conn.closed:
            return XaError(XaCode.XA_RBCOMMFAIL, f"connection to {self.where} lost; the server rolled back")
        if status == TransactionStatus.INERROR:
            return XaError(
                XaCode.XA_RBROLLBACK,
                "a statement failed outside rm.guard(); PostgreSQL aborted the transaction",
            )
        return _transaction_ended(branch.conn)

    def _prepare(self, branch: _Branch) -> XaCode:
        if (doomed := self._doomed(branch)) is not None:
            raise doomed
        gid = encode_gid(branch.xid)
        conn = branch.conn
        if not branch.wrote:  # the statements cannot tell: ask the server (a prepared statement)
            try:
                row = conn.execute(_NO_XID, prepare=True).fetchone()
                if row is not None and row[0]:  # no transaction id: the branch wrote nothing
                    conn.execute("COMMIT" + self._reset, prepare=False)
                    return XaCode.XA_RDONLY
            except psycopg.Error as exc:
                raise no_vote(to_xa_error(exc, "read-only check", connection_closed=conn.closed)) from exc
        try:
            # Never prepared by psycopg: the gid makes every text unique (and cannot be a parameter).
            cur = conn.execute(f"PREPARE TRANSACTION {_gid_literal(gid)}{self._reset}", prepare=False)
        except psycopg.Error as exc:
            error = to_xa_error(exc, "PREPARE TRANSACTION", connection_closed=conn.closed)
            if error.code == XaCode.XAER_RMFAIL:
                raise XaError(
                    XaCode.XAER_RMFAIL,
                    f"{error.reason}; the branch may or may not be prepared, roll it back by xid",
                ) from exc
            raise no_vote(error) from exc  # a failed PREPARE TRANSACTION is a ROLLBACK
        if cur.statusmessage != "PREPARE TRANSACTION":
            raise XaError(XaCode.XA_RBROLLBACK, f"PREPARE TRANSACTION answered {cur.statusmessage!r}")
        return XaCode.XA_OK

    def _commit_one_phase(self, branch: _Branch) -> None:
        if (doomed := self._doomed(branch)) is not None:
            raise doomed
        try:
            cur = branch.conn.execute("COMMIT" + self._reset, prepare=False)
        except psycopg.Error as exc:
            error = to_xa_error(exc, "COMMIT", connection_closed=branch.conn.closed)
            if error.code == XaCode.XAER_RMFAIL:
                # Unlike a lost prepare, nothing is left to retry or roll back: the outcome is unknowable.
                raise XaError(
                    XaCode.XA_HEURHAZ,
                    f"{error.reason}; connection lost during COMMIT, the branch may or may not be committed",
                ) from exc
            raise no_vote(error) from exc  # e.g. a deferred constraint or serialization failure
        if cur.statusmessage != "COMMIT":
            raise XaError(XaCode.XA_RBROLLBACK, f"COMMIT answered {cur.statusmessage!r}")

    def _end_prepared(self, xid: Xid, *, commit: bool) -> None:
        verb, gid = "COMMIT PREPARED" if commit else "ROLLBACK PREPARED", encode_gid(xid)
        statement = f"{verb} {_gid_literal(gid)}"
        try:
            self._on_control(verb, lambda conn: conn.execute(statement, prepare=False))
        except psycopg.errors.UndefinedObject as exc:
            raise XaError(XaCode.XAER_NOTA, f"{verb}: no branch {xid} in {self.where}") from exc
        except psycopg.errors.ObjectNotInPrerequisiteState as exc:
            raise XaError(XaCode.XA_RETRY, f"{verb}: {exc}") from exc  # another session is finishing it
        except psycopg.Error as exc:
            raise to_xa_error(exc, verb) from exc

    def _is_prepared(self, xid: Xid) -> bool:
        gid = encode_gid(xid)
        query = "SELECT 1 FROM pg_prepared_xacts WHERE gid = %s AND database = current_database()"
        try:
            row = self._on_control("prepare", lambda conn: conn.execute(query, (gid,)).fetchone())
            return row is not None
        except psycopg.Error as exc:
            raise to_xa_error(exc, f"looking up {gid} in {self.where}") from exc

    def _cancel(self, branch: _Branch) -> None:
        """Cancel requests until the running call gives up; the session is dirty afterwards (its
        ROLLBACK happens by closing it). Requests repeat in case one came before the statement
        reached the server."""
        branch.dirty = True
        while True:
            with branch.gate:
                if not branch.in_flight:
                    return
            try:
                branch.conn.cancel_safe(timeout=5)
            except psycopg.Error as exc:  # closing the session afterwards rolls it back all the same
                log.debug("cancel of a call on ended branch %s failed: %s", branch.xid, exc)
            with branch.gate:
                branch.gate.wait_for(lambda: not branch.in_flight, timeout=_CANCEL_AGAIN_S)

    def _wait_idle(self, branch: _Branch) -> None:
        """Until no business call runs; a block still open then marks the session dirty: it is
        closed, not reused, and a branch being prepared or committed with a block open votes no."""
        super()._wait_idle(branch)
        with branch.gate:
            branch.dirty = branch.dirty or branch.open_blocks > 0

    def _release(self, branch: _Branch) -> None:
        """Back to the pool, clean: rolled back, or closed (the pool replaces closed connections).

        A ``dirty`` session is closed without a ROLLBACK, which the server does on disconnect: a
        suspended row stream may hold it for good, and psycopg's client-side state of an open
        block would mislead the next branch.
        """
        conn = branch.conn
        if branch.dirty:
            conn.close()
        elif not conn.closed and conn.info.transaction_status != TransactionStatus.IDLE:
            try:
                conn.execute("ROLLBACK" + self._reset, prepare=False)
            except psycopg.Error as exc:  # the pool discards a broken connection; the server rolls it back
                log.debug("rollback of a finished branch failed: %s", exc)
        self._pool.putconn(conn)


def _check_server(dsn: str) -> str:
    """Refuse a server that cannot PREPARE, at start-up; returns ``host:port`` for messages."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError as exc:
        raise InvalidArgumentError(f"malformed PostgreSQL DSN: {exc}") from exc
    where = f"{params.get('host') or params.get('hostaddr') or 'localhost'}:{params.get('port') or 5432}"
    try:
        with psycopg.connect(dsn, autocommit=True) as conn:
            where = f"{conn.info.host}:{conn.info.port}"
            version = conn.info.server_version
            row = conn.execute("SHOW max_prepared_transactions").fetchone()
    except psycopg.Error as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UnavailableError(f"cannot connect to PostgreSQL at {where}: {first}") from exc
    if version < _MIN_SERVER_VERSION:
        raise PostgresSetupError(f"PostgreSQL at {where} is version {version}; xatm needs 13 or later")
    if row is None or int(row[0]) == 0:
        raise PostgresSetupError(
            f"PostgreSQL at {where} has max_prepared_transactions = 0; set it > 0 "
            "(e.g. 100) and restart it to use xatm"
        )
    return where
