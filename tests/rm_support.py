"""Helpers for the resource manager tests (SqliteRM, PostgresRM), in process and across processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest

from xatm.participant.stores.sqlite import SqliteRM
from xatm.participant.xa import XaCode, XaError, Xid


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
