"""SQLSTATE -> XA return code, for the PostgreSQL resource manager.

The coordinator decides from the XA code alone (retry, roll back, count as done), so the
mapping must tell "this branch is rolled back, here is why" (XA_RB*) from "the RM is
gone, try again" (XAER_RMFAIL) from "something else broke" (XAER_RMERR). The tables are
data so docs/postgresql.md can show them and a test can hold the two in step.
"""

from __future__ import annotations

from xatm.participant.runtime.extras import needs_extra
from xatm.participant.xa import XaCode, XaError

with needs_extra("postgresql", "PostgresRM"):
    import psycopg

__all__ = ["SQLCLASS_TO_XA", "SQLSTATE_TO_XA", "to_xa_error", "xa_code_for"]

#: Exact SQLSTATEs; looked up before the class table.
SQLSTATE_TO_XA: dict[str, XaCode] = {
    "40001": XaCode.XA_RBTRANSIENT,  # serialization_failure: retrying the transaction may succeed
    "40P01": XaCode.XA_RBDEADLOCK,  # deadlock_detected: this session was the victim
    "57014": XaCode.XA_RBTIMEOUT,  # query_canceled: statement_timeout (or a cancel request)
    "55P03": XaCode.XA_RBTIMEOUT,  # lock_not_available: lock_timeout or NOWAIT
    "57P01": XaCode.XAER_RMFAIL,  # admin_shutdown
    "57P02": XaCode.XAER_RMFAIL,  # crash_shutdown
    "57P03": XaCode.XAER_RMFAIL,  # cannot_connect_now (starting up, shutting down)
}

#: SQLSTATE classes (first two characters).
SQLCLASS_TO_XA: dict[str, XaCode] = {
    "23": XaCode.XA_RBINTEGRITY,  # integrity_constraint_violation
    "08": XaCode.XAER_RMFAIL,  # connection_exception
    "40": XaCode.XA_RBROLLBACK,  # transaction_rollback, other than the two above
}


def xa_code_for(exc: BaseException, *, connection_closed: bool = False) -> XaCode:
    """The XA code for an error from psycopg; XAER_RMERR for anything not in the tables.

    A client-side OperationalError has no SQLSTATE (the socket died, a pool timed out):
    that is the RM being unreachable, as is any error once the connection is closed.
    """
    state = getattr(exc, "sqlstate", None)
    if connection_closed or (state is None and isinstance(exc, psycopg.OperationalError)):
        return XaCode.XAER_RMFAIL
    if state is None:
        return XaCode.XAER_RMERR
    return SQLSTATE_TO_XA.get(state) or SQLCLASS_TO_XA.get(state[:2], XaCode.XAER_RMERR)


def to_xa_error(exc: BaseException, doing: str, *, connection_closed: bool = False) -> XaError:
    """An XaError with the mapped code and a one-line reason naming the step and the SQLSTATE."""
    state = getattr(exc, "sqlstate", None)
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    where = f"{doing}: SQLSTATE {state}: " if state else f"{doing}: "
    return XaError(xa_code_for(exc, connection_closed=connection_closed), where + text)
