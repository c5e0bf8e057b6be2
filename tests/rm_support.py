"""Helpers for the resource manager tests (SqliteRM, PostgresRM, MariaRM), in process and across processes."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import pytest

from xatm.participant.stores.sqlite import SqliteRM
from xatm.participant.xa import XaCode, XaError, Xid

R = TypeVar("R")
#: Takes 10 from one row of a test's ``accounts`` table (a parameter: the id).
DEBIT_ROW = "UPDATE accounts SET balance = balance - 10 WHERE id = %s"


def closing_factory(new: Callable[..., R]) -> Iterator[Callable[..., R]]:
    """The body of a ``make_rm`` fixture: ``new(**options)`` makes an RM; every one made is closed
    at the end (``yield from closing_factory(...)``)."""
    made: list[Any] = []

    def make(**options: Any) -> R:
        rm = new(**options)
        made.append(rm)
        return rm

    yield make
    for rm in made:
        rm.close()


def at_once(*calls: Callable[[], None], timeout_s: float = 20) -> None:
    """Run ``calls`` in threads at the same time; asserts every one has returned within ``timeout_s``."""
    threads = [threading.Thread(target=call) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout_s)
    assert not any(thread.is_alive() for thread in threads)


def deadlock(rm: Any, x1: Xid, x2: Xid) -> tuple[Xid, Xid]:
    """Branches ``x1`` and ``x2`` of ``rm`` debit rows 1 and 2 of ``accounts``, then at once each the
    other's row through ``rm.guard``: the database must pick a victim. Returns (winner, loser): the
    loser's call raised XA_RBDEADLOCK, the winner's went through."""
    for xid, row in ((x1, 1), (x2, 2)):
        rm.start(xid)
        with rm.guard(xid) as conn:
            conn.execute(DEBIT_ROW, (row,))
    outcome: dict[Xid, XaCode] = {}

    def cross(xid: Xid, row: int) -> None:
        try:
            with rm.guard(xid) as conn:
                conn.execute(DEBIT_ROW, (row,))
            outcome[xid] = XaCode.XA_OK
        except XaError as exc:
            outcome[xid] = exc.code

    at_once(lambda: cross(x1, 2), lambda: cross(x2, 1))
    assert sorted(outcome.values()) == [XaCode.XA_OK, XaCode.XA_RBDEADLOCK]
    return (x1, x2) if outcome[x1] == XaCode.XA_OK else (x2, x1)


def xa_code(call: Callable[[], object]) -> XaCode:
    """The XA code of the XaError that ``call()`` raises (the test fails if it raises none)."""
    with pytest.raises(XaError) as caught:
        call()
    return caught.value.code


@contextmanager
def raises(code: XaCode) -> Iterator[None]:
    with pytest.raises(XaError) as info:
        yield
    assert info.value.code == code, info.value


def started(rm: SqliteRM, gtrid: str) -> Xid:
    xid = Xid(gtrid, "b1")
    rm.start(xid)
    return xid


def assert_unlocked(rm: SqliteRM, *keys: str) -> None:
    """Another branch can lock every key at once (it would get XA_RBTIMEOUT otherwise)."""
    with raises(XaCode.XA_RBROLLBACK), rm.local() as xid:
        for key in keys:
            rm.put(xid, key, "probe")
        rm.mark_rollback_only(xid, XaCode.XA_RBROLLBACK, "probe only")
