"""SQLAlchemy resource manager: a branch is a transaction on one Connection of an ``Engine``,
and ORM sessions from ``rm.session(xid)`` run inside it.

A branch checks a connection out of the engine's pool at ``start`` and keeps it until prepare,
one-phase commit or rollback. ``rm.session(xid)`` is an ORM ``Session`` bound to that connection
in ``create_savepoint`` mode: ``session.commit()`` and ``session.rollback()`` act on a savepoint
inside the branch, never on the branch itself, which belongs to the coordinator. Every session
of the branch is flushed before the vote; after the branch ends each of them raises
``BranchEnded`` on its next statement (participant/stores/base.py: an ended branch is dead).

Dialects: PostgreSQL (``PREPARE TRANSACTION`` with xatm's gid, as PostgresRM) and MySQL/MariaDB
(``XA START ... XA PREPARE``, as MariaRM; the preparing connection is invalidated, not pooled,
because the server keeps a prepared branch attached to its session). SQLAlchemy's own two-phase
API (``begin_twophase``) is not used: its MySQL form names a branch by a gtrid alone, so an XA
XID of xatm's shape does not fit, and its recovery lists the gids of every database of a
PostgreSQL cluster, while phase two must run in the database that prepared. See docs/mysql.md.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from xatm.participant.errors import FailedPreconditionError, InvalidArgumentError, UnavailableError
from xatm.participant.runtime.extras import needs_extra
from xatm.participant.stores import mysql_errors, mysql_xa
from xatm.participant.stores.branches import SessionBranch, SessionRM, no_vote
from xatm.participant.xa import XaCode, XaError, Xid

with needs_extra("sqlalchemy", "SqlAlchemyRM"):
    from sqlalchemy import event
    from sqlalchemy.engine import Connection, Engine, RootTransaction
    from sqlalchemy.exc import DBAPIError
    from sqlalchemy.orm import Session

__all__ = ["BranchSession", "SqlAlchemyRM"]

_BRANCH = "xatm_branch"  # key in Connection.info (the pooled DBAPI connection's) while a branch holds it
_VERB = "xatm_verb"  # execution option marking the RM's own statements, which pass the gate
#: Codes after which the server has rolled the whole branch back, whatever business code does next.
_LOST = frozenset({XaCode.XA_RBDEADLOCK, XaCode.XA_RBTRANSIENT, XaCode.XAER_RMFAIL})
_DETACH_TIMEOUT_S = 10.0


@dataclass(eq=False, kw_only=True)
class _Branch(SessionBranch):
    conn: Connection
    tx: RootTransaction
    to_xa_error: Callable[..., XaError]  # the RM's error table for its dialect
    session_id: int = 0  # MySQL: CONNECTION_ID(), for KILL QUERY and to see the session gone
    writes_at_start: int = 0  # MySQL: the write counter at XA START
    # Held, not weakly: a session the business code let go of may still hold unflushed changes.
    sessions: list[Session] = field(default_factory=list)


class BranchSession(Session):
    """An ORM ``Session`` inside a branch. Statements and flushes raise ``BranchEnded`` once the
    branch has ended; ``commit()``/``rollback()`` release or roll back a savepoint of the branch."""

    def __init__(self, branch: _Branch, *, bind: Any = None, **options: Any):
        # ``bind`` is what an AsyncSession passes on: the same connection, taken from the branch.
        self._xatm_branch = branch
        super().__init__(bind=branch.conn, join_transaction_mode="create_savepoint", **options)

    def get_bind(self, *args: Any, **kwargs: Any) -> Any:
        self._xatm_branch.check()
        return super().get_bind(*args, **kwargs)


# -- the gate on the branch's connection: engine events, so Core and ORM statements alike pass it


def _gated(conn: Connection, context: Any) -> _Branch | None:
    branch = conn.info.get(_BRANCH)
    if branch is None or (context is not None and context.execution_options.get(_VERB)):
        return None
    return branch if isinstance(branch, _Branch) else None


def _before(conn: Connection, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
    if (branch := _gated(conn, context)) is not None:
        branch.enter()
        context.xatm_branch = branch  # on the context: the connection may be invalidated by the end


def _after(conn: Connection, cursor: Any, statement: str, params: Any, context: Any, many: bool) -> None:
    if (branch := getattr(context, "xatm_branch", None)) is not None:
        context.xatm_branch = None
        branch.leave()


def _error(ctx: Any) -> BaseException | None:
    context = ctx.execution_context
    branch: _Branch | None = getattr(context, "xatm_branch", None)
    if branch is None:
        return None
    context.xatm_branch = None
    branch.leave()
    if (ended := branch.ended_error()) is not None:
        return ended  # cut short by the end of its branch (a rollback cancelled it)
    error = branch.to_xa_error(ctx.original_exception, "business SQL", closed=ctx.is_disconnect)
    if error.code in _LOST and branch.failure is None:
        branch.failure = error
    return None


def _watch(engine: Engine) -> None:
    for name, listener in (("before_cursor_execute", _before), ("after_cursor_execute", _after)):
        if not event.contains(engine, name, listener):
            event.listen(engine, name, listener)
    if not event.contains(engine, "handle_error", _error):
        event.listen(engine, "handle_error", _error)


class SqlAlchemyRM(SessionRM[_Branch]):
    """Branches of global transactions on an SQLAlchemy ``Engine`` (postgresql or mysql/mariadb).

    ``rm.session(xid)`` gives an ORM session inside the branch. The engine's pool serves both the
    branches (one connection each, from start to the vote) and phase two, recovery and look-ups.
    Raises InvalidArgumentError for another dialect, UnavailableError when the database cannot be
    reached and FailedPreconditionError when it cannot prepare (PostgreSQL with
    ``max_prepared_transactions = 0``; MariaDB before 10.5.2, MySQL before 5.7.7).
    """

    def __init__(self, engine: Engine, rm_id: str) -> None:
        name = engine.dialect.name
        if name not in ("postgresql", "mysql", "mariadb"):
            raise InvalidArgumentError(
                f"SqlAlchemyRM serves postgresql and mysql/mariadb engines, not {name}"
            )
        super().__init__()
        self.engine, self.rm_id = engine, rm_id
        self.mysql = name != "postgresql"
        self.where = f"{engine.url.host or 'localhost'}:{engine.url.port or (3306 if self.mysql else 5432)}"
        self._check_server()
        _watch(engine)

    # -- business API ---------------------------------------------------------------

    def session(self, xid: Xid, **options: Any) -> BranchSession:
        """A new ORM session inside the branch (``options`` go to ``Session``, e.g. ``autoflush``).

        Flushed before the branch votes; dead with the branch. An ended xid raises BranchEnded,
        an unknown one XaError(XAER_NOTA).
        """
        branch = self._active(xid)
        session = BranchSession(branch, **options)
        branch.sessions.append(session)
        return session

    # -- XA verbs ---------------------------------------------------------------------

    def start(self, xid: Xid) -> None:
        if self._joined(xid):
            return
        try:
            conn = self.engine.connect()
        except DBAPIError as exc:
            raise self.to_xa_error(exc.orig, f"start: no connection to {self.where}", closed=True) from exc
        try:
            tx = conn.begin()
            branch = _Branch(xid=xid, outcomes=self._ended, conn=conn, tx=tx, to_xa_error=self.to_xa_error)
            if self.mysql:
                row = self._verb(conn, mysql_xa.WRITES).one()
                branch.session_id, branch.writes_at_start = int(row[0]), int(row[1])
                self._verb(conn, f"XA START {mysql_xa.xid_sql(xid)}")
        except DBAPIError as exc:
            conn.invalidate()
            conn.close()
            raise self.to_xa_error(exc.orig, "start", closed=exc.connection_invalidated) from exc
        conn.info[_BRANCH] = branch
        self._register(branch)

    def recover(self) -> list[Xid]:
        with self._control() as conn:
            if self.mysql:
                rows = self._verb(conn, "XA RECOVER").all()
                return [x for f, g, b, d in rows if (x := mysql_xa.decode_xid(int(f), int(g), int(b), d))]
            from xatm.participant.stores.postgresql import decode_gid

            gids = self._verb(
                conn,
                "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() ORDER BY prepared",
            ).scalars()
            return [xid for gid in gids if (xid := decode_gid(gid)) is not None]

    # -- errors -----------------------------------------------------------------------

    def to_xa_error(self, exc: BaseException | None, doing: str, *, closed: bool = False) -> XaError:
        """The driver error ``exc`` as an XaError, with the dialect's table (see docs/mysql.md)."""
        if exc is None:
            return XaError(XaCode.XAER_RMERR, doing)
        if self.mysql:
            return mysql_errors.to_xa_error(exc, doing, connection_closed=closed)
        from xatm.participant.stores.postgresql_errors import to_xa_error

        return to_xa_error(exc, doing, connection_closed=closed)

    # -- internals --------------------------------------------------------------------

    @staticmethod
    def _verb(conn: Connection, statement: str) -> Any:
        return conn.exec_driver_sql(statement, execution_options={_VERB: True})

    def _validate(self, xid: Xid) -> None:
        self._xid_literal(xid)

    def _xid_literal(self, xid: Xid) -> str:
        if self.mysql:
            return mysql_xa.xid_sql(xid)
        from xatm.participant.stores.postgresql import encode_gid

        return "'" + encode_gid(xid) + "'"

    @contextlib.contextmanager
    def _control(self) -> Iterator[Connection]:
        """An autocommit connection of the engine for phase two and look-ups; errors become XaError."""
        try:
            with self.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                yield conn
        except DBAPIError as exc:
            raise self.to_xa_error(exc.orig, f"on {self.where}", closed=exc.connection_invalidated) from exc

    def _check_server(self) -> None:
        try:
            with self.engine.connect() as conn:
                if self.mysql:
                    version, engine = conn.exec_driver_sql("SELECT VERSION(), @@default_storage_engine").one()
                    mysql_xa.check_server_version(str(version), str(engine), self.where)
                    return
                prepared = int(conn.exec_driver_sql("SHOW max_prepared_transactions").scalar_one())
        except DBAPIError as exc:
            first = (
                str(exc.orig).strip().splitlines()[0] if str(exc.orig).strip() else type(exc.orig).__name__
            )
            raise UnavailableError(
                f"cannot connect to {self.engine.dialect.name} at {self.where}: {first}"
            ) from exc
        if prepared == 0:
            raise FailedPreconditionError(
                f"PostgreSQL at {self.where} has max_prepared_transactions = 0; set it > 0 "
                "(e.g. 100) and restart it to use xatm"
            )

    def _before_vote(self, branch: _Branch) -> None:
        """Send what the branch's sessions hold before it votes; a failed flush is a no vote."""
        for session in branch.sessions:
            try:
                session.flush()
            except DBAPIError as exc:
                error = self.to_xa_error(exc.orig, "flush before prepare", closed=exc.connection_invalidated)
                raise no_vote(error) from exc

    def _cancel(self, branch: _Branch) -> None:
        with contextlib.suppress(XaError, DBAPIError):
            self._interrupt(branch)

    def _interrupt(self, branch: _Branch) -> None:
        if self.mysql:
            with self._control() as conn:
                self._verb(conn, f"KILL QUERY {branch.session_id}")
            return
        raw = branch.conn.connection.dbapi_connection
        cancel = getattr(raw, "cancel_safe", None) or getattr(raw, "cancel", None)
        if cancel is not None:
            cancel()

    def _doomed(self, branch: _Branch) -> XaError | None:
        if branch.failure is not None:
            return no_vote(branch.failure)
        if branch.conn.invalidated or branch.conn.closed:
            return XaError(XaCode.XA_RBCOMMFAIL, f"connection to {self.where} lost; the server rolled back")
        return None

    def _step(self, branch: _Branch, statement: str) -> Any:
        try:
            return self._verb(branch.conn, statement)
        except DBAPIError as exc:
            raise self.to_xa_error(
                exc.orig, statement.split(" X'")[0].split(" '")[0], closed=exc.connection_invalidated
            ) from exc

    def _xa_end(self, branch: _Branch) -> bool:
        """MySQL: ``XA END``; whether the branch wrote nothing. A branch the server lost votes no."""
        try:
            writes = int(self._step(branch, mysql_xa.WRITES).one()[1])
            self._step(branch, f"XA END {mysql_xa.xid_sql(branch.xid)}")
        except XaError as error:
            if error.code == XaCode.XAER_PROTO:  # ROLLBACK ONLY: the server rolled the branch back
                raise XaError(
                    XaCode.XA_RBROLLBACK, f"{error.reason}; the server rolled the branch back"
                ) from error
            raise no_vote(error) from error
        return writes == branch.writes_at_start

    def _prepare(self, branch: _Branch) -> XaCode:
        if (doomed := self._doomed(branch)) is not None:
            raise doomed
        literal = self._xid_literal(branch.xid)
        if self.mysql:
            if self._xa_end(branch):
                self._voted(branch, f"XA COMMIT {literal} ONE PHASE")
                return XaCode.XA_RDONLY
            self._voted(branch, f"XA PREPARE {literal}", prepare=True)
            # The server keeps the prepared branch attached to this session: drop it, never pool it.
            branch.conn.info.pop(_BRANCH, None)
            branch.conn.invalidate()
            self._wait_detached(branch)
            return XaCode.XA_OK
        if self._step(branch, "SELECT pg_current_xact_id_if_assigned() IS NULL").scalar_one():
            self._voted(branch, "COMMIT")
            return XaCode.XA_RDONLY
        self._voted(branch, f"PREPARE TRANSACTION {literal}", prepare=True)
        return XaCode.XA_OK

    def _voted(self, branch: _Branch, statement: str, *, prepare: bool = False) -> None:
        try:
            self._step(branch, statement)
        except XaError as error:
            if prepare and error.code == XaCode.XAER_RMFAIL:
                raise XaError(
                    XaCode.XAER_RMFAIL,
                    f"{error.reason}; the branch may or may not be prepared, roll it back by xid",
                ) from error
            raise no_vote(error) from error

    def _wait_detached(self, branch: _Branch) -> None:
        deadline = time.monotonic() + _DETACH_TIMEOUT_S
        with contextlib.suppress(XaError), self._control() as conn:
            while time.monotonic() < deadline:
                if self._verb(conn, mysql_xa.SESSION_GONE % branch.session_id).scalar_one():
                    return
                self._pause(0.005)

    def _pause(self, seconds: float) -> None:
        """Wait a moment between look-ups (the asyncio RM yields to its event loop instead)."""
        time.sleep(seconds)

    def _commit_one_phase(self, branch: _Branch) -> None:
        if (doomed := self._doomed(branch)) is not None:
            raise doomed
        if self.mysql:
            self._xa_end(branch)
            statement = f"XA COMMIT {mysql_xa.xid_sql(branch.xid)} ONE PHASE"
        else:
            statement = "COMMIT"
        try:
            self._step(branch, statement)
        except XaError as error:
            if error.code == XaCode.XAER_RMFAIL:
                raise XaError(
                    XaCode.XA_HEURHAZ, f"{error.reason}; the branch may or may not be committed"
                ) from error
            raise no_vote(error) from error

    def _end_prepared(self, xid: Xid, *, commit: bool) -> None:
        verb = "COMMIT" if commit else "ROLLBACK"
        literal = self._xid_literal(xid)
        statement = f"XA {verb} {literal}" if self.mysql else f"{verb} PREPARED {literal}"
        try:
            with self._control() as conn:
                self._verb(conn, statement)
        except XaError as error:
            nota = error.code == XaCode.XAER_NOTA or "SQLSTATE 42704" in error.reason
            if not nota:
                if "SQLSTATE 55000" in error.reason:  # another session is finishing the same gid
                    raise XaError(XaCode.XA_RETRY, error.reason) from error
                raise
            if self.mysql and xid in self.recover():
                raise XaError(
                    XaCode.XA_RETRY, f"{statement}: prepared but still held by the session that prepared it"
                ) from error
            raise XaError(XaCode.XAER_NOTA, f"{verb}: no branch {xid} in {self.where}") from error

    def _release(self, branch: _Branch) -> None:
        """Back to the pool with nothing of the branch on it, or invalidated (the server then
        rolls back whatever is not prepared)."""
        conn = branch.conn
        lost = conn.invalidated
        if not lost:
            conn.info.pop(_BRANCH, None)
        if not lost and self.mysql:
            for statement in (
                f"XA END {mysql_xa.xid_sql(branch.xid)}",
                f"XA ROLLBACK {mysql_xa.xid_sql(branch.xid)}",
            ):
                try:
                    self._verb(conn, statement)
                except DBAPIError as exc:
                    # 1397: the XID is gone already, 1399: it is idle already (XA END done).
                    if exc.orig is None or mysql_errors.errno_of(exc.orig) not in (1397, 1399):
                        lost = True
                        break
        if lost:
            with contextlib.suppress(DBAPIError):
                conn.invalidate()
        with contextlib.suppress(DBAPIError):
            branch.tx.rollback()  # PostgreSQL: ROLLBACK of an active branch; otherwise nothing is open
        conn.close()
