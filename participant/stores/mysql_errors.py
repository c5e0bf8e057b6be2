"""MySQL/MariaDB error number -> XA return code, for the MySQL resource manager.

As for PostgreSQL, the coordinator acts on the XA code alone, so the table has to tell "this
branch is rolled back, here is why" (XA_RB*) from "the server is unreachable, try again"
(XAER_RMFAIL) from "something else broke" (XAER_RMERR). The table is data, so docs/mysql.md
can show it and a test can hold the two in step. Numbers are the server's ``ER_*`` codes and
the client library's ``CR_*`` codes, which MariaDB and MySQL share.
"""

from __future__ import annotations

from typing import Any

from xatm.participant.xa import XaCode, XaError

__all__ = ["ERRNO_TO_XA", "errno_of", "to_xa_error", "xa_code_for"]

#: Error numbers with an XA meaning; anything else is XAER_RMERR.
ERRNO_TO_XA: dict[int, XaCode] = {
    # The server's own XA errors.
    1397: XaCode.XAER_NOTA,  # ER_XAER_NOTA: unknown XID
    1398: XaCode.XAER_INVAL,  # ER_XAER_INVAL: invalid arguments
    1399: XaCode.XAER_PROTO,  # ER_XAER_RMFAIL: "cannot be executed when global transaction is in the X state"
    1400: XaCode.XAER_OUTSIDE,  # ER_XAER_OUTSIDE: some work is done outside global transaction
    1401: XaCode.XAER_RMERR,  # ER_XAER_RMERR: fatal error in the branch
    1402: XaCode.XA_RBROLLBACK,  # ER_XA_RBROLLBACK: the branch was rolled back
    1440: XaCode.XAER_DUPID,  # ER_XAER_DUPID: the XID already exists
    1613: XaCode.XA_RBTIMEOUT,  # ER_XA_RBTIMEOUT
    1614: XaCode.XA_RBDEADLOCK,  # ER_XA_RBDEADLOCK
    # Business SQL.
    1213: XaCode.XA_RBDEADLOCK,  # ER_LOCK_DEADLOCK: this branch was the victim, InnoDB rolled it back
    1205: XaCode.XA_RBTIMEOUT,  # ER_LOCK_WAIT_TIMEOUT: innodb_lock_wait_timeout
    1969: XaCode.XA_RBTIMEOUT,  # ER_STATEMENT_TIMEOUT: MariaDB max_statement_time
    3024: XaCode.XA_RBTIMEOUT,  # ER_QUERY_TIMEOUT: MySQL max_execution_time
    1317: XaCode.XA_RBROLLBACK,  # ER_QUERY_INTERRUPTED: KILL QUERY
    1062: XaCode.XA_RBINTEGRITY,  # ER_DUP_ENTRY
    1586: XaCode.XA_RBINTEGRITY,  # ER_DUP_ENTRY_WITH_KEY_NAME
    1451: XaCode.XA_RBINTEGRITY,  # ER_ROW_IS_REFERENCED_2: foreign key, parent side
    1452: XaCode.XA_RBINTEGRITY,  # ER_NO_REFERENCED_ROW_2: foreign key, child side
    1048: XaCode.XA_RBINTEGRITY,  # ER_BAD_NULL_ERROR
    4025: XaCode.XA_RBINTEGRITY,  # ER_CONSTRAINT_FAILED: MariaDB CHECK constraint
    3819: XaCode.XA_RBINTEGRITY,  # ER_CHECK_CONSTRAINT_VIOLATED: MySQL CHECK constraint
    # The server or the connection is gone.
    1040: XaCode.XAER_RMFAIL,  # ER_CON_COUNT_ERROR: too many connections
    1053: XaCode.XAER_RMFAIL,  # ER_SERVER_SHUTDOWN
    1152: XaCode.XAER_RMFAIL,  # ER_ABORTING_CONNECTION
    1927: XaCode.XAER_RMFAIL,  # ER_CONNECTION_KILLED (MariaDB)
    2002: XaCode.XAER_RMFAIL,  # CR_CONNECTION_ERROR: local socket
    2003: XaCode.XAER_RMFAIL,  # CR_CONN_HOST_ERROR: cannot connect
    2006: XaCode.XAER_RMFAIL,  # CR_SERVER_GONE_ERROR
    2013: XaCode.XAER_RMFAIL,  # CR_SERVER_LOST: lost connection during a query
}


def errno_of(exc: BaseException) -> int | None:
    """The error number PyMySQL put first in ``exc.args``, or None (e.g. ``InterfaceError(0, '')``)."""
    args = getattr(exc, "args", ())
    return args[0] if args and isinstance(args[0], int) and args[0] > 0 else None


def _is_driver_error(exc: BaseException) -> bool:
    """A DB-API error of any MySQL driver (PyMySQL, mysqlclient), without importing one."""
    return any(cls.__name__ in ("InterfaceError", "OperationalError") for cls in type(exc).__mro__)


def xa_code_for(exc: BaseException, *, connection_closed: bool = False) -> XaCode:
    """The XA code for an error from a MySQL driver; XAER_RMERR for anything not in the table.

    An error without a number (PyMySQL's ``InterfaceError(0, '')`` on a closed socket) and any
    error once the connection is closed is the server being unreachable.
    """
    number = errno_of(exc)
    if connection_closed or (number is None and _is_driver_error(exc)):
        return XaCode.XAER_RMFAIL
    if number is None:
        return XaCode.XAER_RMERR
    return ERRNO_TO_XA.get(number, XaCode.XAER_RMERR)


def to_xa_error(exc: BaseException, doing: str, *, connection_closed: bool = False) -> XaError:
    """An XaError with the mapped code and a one-line reason naming the step and the error number."""
    number = errno_of(exc)
    args: tuple[Any, ...] = tuple(getattr(exc, "args", ()))
    text = str(args[1]) if len(args) > 1 else (str(exc) or type(exc).__name__)
    text = text.strip().splitlines()[0] if text.strip() else type(exc).__name__
    where = f"{doing}: error {number}: " if number else f"{doing}: "
    return XaError(xa_code_for(exc, connection_closed=connection_closed), where + text)
