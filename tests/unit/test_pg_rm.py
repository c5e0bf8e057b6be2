"""PostgresRM without a server: the gid encoding, the SQLSTATE table and its copy in the docs,
and a server that cannot be reached.

The tests against a real PostgreSQL cluster are in tests/system/test_pg_rm.py.
"""

from __future__ import annotations

import contextlib
import re
import socket
from collections.abc import Iterator

import psycopg
import pytest

from tests.conftest import REPO
from tests.rm_support import xa_code
from xatm.participant.errors import Status, XatmError
from xatm.participant.stores.postgresql import (
    PostgresRM,
    decode_gid,
    encode_gid,
)
from xatm.participant.stores.postgresql_errors import (
    SQLCLASS_TO_XA,
    SQLSTATE_TO_XA,
    to_xa_error,
    xa_code_for,
)
from xatm.participant.xa import FORMAT_ID, XaCode, Xid

DOCS = REPO / "docs" / "postgresql.md"


# -- gid encoding and the SQLSTATE table (no server needed) ------------------------------


def test_gid_round_trips_and_rejects_everything_else() -> None:
    xid = Xid("node-1.0187a:b_c", "0123abcd", FORMAT_ID)
    gid = encode_gid(xid)
    assert gid == "xatm/7861746d/node-1.0187a:b_c/0123abcd"
    assert decode_gid(gid) == xid
    assert decode_gid(encode_gid(Xid("a" * 64, "b" * 64, 0))) == Xid("a" * 64, "b" * 64, 0)
    for foreign in [
        "foreign-1",
        "xatm/7861746D/g/b",
        "xatm/861746d/g/b",
        "xatm/7861746d/g/b/c",
        "xatm/7861746d/g/",
        "xatm/7861746d/g/b\n",
        "1234_Z3Q=_YnE=",
        "xatm:7861746d:g:b",
    ]:
        assert decode_gid(foreign) is None, foreign
    for bad in [
        Xid("", "b"),
        Xid("g/x", "b"),
        Xid("g", "b c"),
        Xid("g" * 65, "b"),
        Xid("g\n", "b"),
        Xid("g", "b", -1),
        Xid("g", "b", 2**32),
    ]:
        assert xa_code(lambda bad=bad: encode_gid(bad)) == XaCode.XAER_INVAL


@pytest.mark.parametrize(
    ("sqlstate", "expected"),
    [
        ("40001", XaCode.XA_RBTRANSIENT),
        ("40P01", XaCode.XA_RBDEADLOCK),
        ("23505", XaCode.XA_RBINTEGRITY),
        ("23514", XaCode.XA_RBINTEGRITY),
        ("23503", XaCode.XA_RBINTEGRITY),
        ("57014", XaCode.XA_RBTIMEOUT),
        ("55P03", XaCode.XA_RBTIMEOUT),
        ("08006", XaCode.XAER_RMFAIL),
        ("08001", XaCode.XAER_RMFAIL),
        ("57P01", XaCode.XAER_RMFAIL),
        ("57P02", XaCode.XAER_RMFAIL),
        ("57P03", XaCode.XAER_RMFAIL),
        ("40002", XaCode.XA_RBROLLBACK),
        ("40003", XaCode.XA_RBROLLBACK),
        ("42601", XaCode.XAER_RMERR),
        ("42704", XaCode.XAER_RMERR),  # undefined_object is XAER_NOTA only for COMMIT/ROLLBACK PREPARED
        ("25P02", XaCode.XAER_RMERR),
        ("XX000", XaCode.XAER_RMERR),
    ],
)
def test_sqlstate_maps_to_xa_code(sqlstate: str, expected: XaCode) -> None:
    exc = psycopg.errors.lookup(sqlstate)("boom")
    assert xa_code_for(exc) == expected
    error = to_xa_error(exc, "business SQL")
    assert (error.code, error.reason) == (expected, f"business SQL: SQLSTATE {sqlstate}: boom")


def test_connection_level_errors_without_sqlstate() -> None:
    assert xa_code_for(psycopg.OperationalError("server closed the connection")) == XaCode.XAER_RMFAIL
    assert xa_code_for(psycopg.errors.lookup("42601")("x"), connection_closed=True) == XaCode.XAER_RMFAIL
    assert xa_code_for(psycopg.InterfaceError("bad use")) == XaCode.XAER_RMERR
    assert xa_code_for(psycopg.DataError("no state")) == XaCode.XAER_RMERR


def test_docs_table_matches_code() -> None:
    text = DOCS.read_text()
    table = text.split("<!-- sqlstate-table -->")[1].split("<!-- /sqlstate-table -->")[0]
    exact: dict[str, XaCode] = {}
    classes: dict[str, XaCode] = {}
    for row in re.findall(r"^\|\s*`([0-9A-Zx]{5})`\s*\|[^|]*\|\s*`(\w+)`", table, re.MULTILINE):
        state, code = row
        if state.endswith("xxx"):
            classes[state[:2]] = XaCode[code]
        else:
            exact[state] = XaCode[code]
    assert exact == SQLSTATE_TO_XA
    assert classes == SQLCLASS_TO_XA


@contextlib.contextmanager
def refused_port() -> Iterator[int]:
    """A port bound but not listening: connecting to it is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def test_unreachable_server_or_bad_dsn_is_refused_at_construction() -> None:
    with refused_port() as port, pytest.raises(XatmError) as caught:
        PostgresRM(f"host=127.0.0.1 port={port} user=postgres connect_timeout=2", "pg-test")
    assert caught.value.status == Status.UNAVAILABLE
    assert caught.value.message.startswith(f"cannot connect to PostgreSQL at 127.0.0.1:{port}: ")
    with pytest.raises(XatmError) as caught:
        PostgresRM("host=127.0.0.1 port", "pg-test")
    assert caught.value.status == Status.INVALID_ARGUMENT
