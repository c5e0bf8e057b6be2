"""The SQLAlchemy resource manager for asyncio: branches on an ``AsyncEngine``, ``AsyncSession``s in them.

An asyncio driver's connections belong to the event loop that opened them, so every verb runs
there: the stub calls the verbs from worker threads (``asyncio.to_thread``), and each call is
handed to the loop and waited for. On the loop, the synchronous RM's code runs inside
SQLAlchemy's greenlet bridge, as ``AsyncSession`` runs the ORM; waits that would block the loop
(for a business statement to finish, for a MySQL session to go) yield to it instead.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, TypeVar

from xatm.participant.runtime.extras import needs_extra
from xatm.participant.stores.sqlalchemy import BranchSession, SqlAlchemyRM, _Branch
from xatm.participant.xa import XaCode, XaError, Xid

with needs_extra("sqlalchemy", "AsyncSqlAlchemyRM"):
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession
    from sqlalchemy.util import await_only, greenlet_spawn

__all__ = ["AsyncSqlAlchemyRM"]

T = TypeVar("T")
_POLL_S = 0.005


class AsyncSqlAlchemyRM(SqlAlchemyRM):
    """``SqlAlchemyRM`` over an ``AsyncEngine`` (e.g. ``postgresql+psycopg_async``, ``mysql+aiomysql``).

    Make it with ``await AsyncSqlAlchemyRM.open(engine, rm_id)`` on the event loop that serves the
    service; ``rm.session(xid)`` gives an ``AsyncSession`` inside the branch. The XA verbs must be
    called from other threads (the stub does); called on the loop itself they raise
    XaError(XAER_PROTO) instead of deadlocking it.
    """

    async_engine: AsyncEngine
    _loop: asyncio.AbstractEventLoop

    @classmethod
    async def open(cls, engine: AsyncEngine, rm_id: str) -> AsyncSqlAlchemyRM:
        """Check the database (errors as ``SqlAlchemyRM``) and bind the RM to the running loop."""
        rm = cls.__new__(cls)
        rm.async_engine, rm._loop = engine, asyncio.get_running_loop()
        await greenlet_spawn(SqlAlchemyRM.__init__, rm, engine.sync_engine, rm_id)
        return rm

    def session(self, xid: Xid, **options: Any) -> AsyncSession:  # type: ignore[override]
        """A new ``AsyncSession`` inside the branch; flushed before the vote, dead with the branch."""
        branch = self._active(xid)
        session = AsyncSession(
            AsyncConnection(self.async_engine, branch.conn),
            sync_session_class=BranchSession,
            branch=branch,
            **options,
        )
        branch.sessions.append(session.sync_session)
        return session

    # -- the verbs, run on the loop -------------------------------------------------------

    def start(self, xid: Xid) -> None:
        self._on_loop(super().start, xid)

    def prepare(self, xid: Xid) -> XaCode:
        return self._on_loop(super().prepare, xid)

    def commit(self, xid: Xid, one_phase: bool) -> None:
        self._on_loop(super().commit, xid, one_phase)

    def rollback(self, xid: Xid) -> None:
        self._on_loop(super().rollback, xid)

    def recover(self) -> list[Xid]:
        return self._on_loop(super().recover)

    def close(self) -> None:
        self._on_loop(super().close)

    async def aclose(self) -> None:
        """``close()`` from the loop: roll back active branches."""
        await greenlet_spawn(SqlAlchemyRM.close, self)

    def _on_loop(self, verb: Callable[..., T], *args: Any) -> T:
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:
            running = None
        if running is self._loop:
            if _in_greenlet():
                return verb(*args)  # a verb calling another (prepare -> recover): already on the loop
            raise XaError(
                XaCode.XAER_PROTO,
                "AsyncSqlAlchemyRM verbs run on its event loop and wait there: call them from a worker "
                "thread (asyncio.to_thread), as the participant stub does",
            )
        if self._loop.is_closed():
            raise XaError(XaCode.XAER_RMFAIL, f"the event loop of resource manager {self.rm_id} is closed")
        return asyncio.run_coroutine_threadsafe(greenlet_spawn(verb, *args), self._loop).result()

    # -- waits that yield to the loop -------------------------------------------------------

    def _cancel(self, branch: _Branch) -> None:
        if self.mysql:  # KILL QUERY from another session; asyncio PostgreSQL drivers offer no cancel here
            super()._cancel(branch)

    def _wait_idle(self, branch: _Branch) -> None:
        while True:
            with branch.gate:
                if not branch.in_flight:
                    return
            await_only(asyncio.sleep(_POLL_S))  # the statement runs on this loop: let it finish

    def _pause(self, seconds: float) -> None:
        await_only(asyncio.sleep(seconds))


def _in_greenlet() -> bool:
    """Whether this code runs under SQLAlchemy's greenlet bridge (await_only works here)."""
    from sqlalchemy.util.concurrency import in_greenlet

    return bool(in_greenlet())
