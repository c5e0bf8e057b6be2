"""A handler's refusal reaches the rollback reason with its gRPC code and message, however it fails.

Real processes: a coordinator and the shop participant of tests/shop_service.py (threaded and
grpc.aio), driven by the initiator; the reason is read back through GetStatus, ``xactl show``,
REST and the coordinator's log.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.admin_support import rest, xactl_json
from tests.shop_system import Shop, start_shop
from xatm.participant import TransactionRolledBack
from xatm.participant.xa import TxStatus, XaCode

# mode -> (status the caller sees, rollback reason recorded by the coordinator)
REFUSALS = {
    "abort": (grpc.StatusCode.FAILED_PRECONDITION, "shop: FAILED_PRECONDITION: out of stock: {key}"),
    "set_code": (grpc.StatusCode.FAILED_PRECONDITION, "shop: FAILED_PRECONDITION: out of stock: {key}"),
    "abort_after": (grpc.StatusCode.FAILED_PRECONDITION, "shop: FAILED_PRECONDITION: out of stock: {key}"),
    "raise": (grpc.StatusCode.UNKNOWN, "shop: UNKNOWN: ValueError: bad {key}"),
    "raise_empty": (grpc.StatusCode.UNKNOWN, "shop: UNKNOWN: ValueError"),
    "xatm": (grpc.StatusCode.RESOURCE_EXHAUSTED, "shop: RESOURCE_EXHAUSTED: quota for {key}"),
}


@pytest.fixture(params=[False, True], ids=["threaded", "aio"])
def system(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Shop]:
    yield from start_shop(tmp_path, aio=request.param)


def test_every_way_a_handler_fails_reaches_the_rollback_reason(system: Shop) -> None:
    for mode, (code, reason) in REFUSALS.items():
        key = f"k-{mode}"
        with pytest.raises(grpc.RpcError) as caught, system.tm.begin() as tx:
            system.order(f"{mode}:{key}".encode(), timeout=10)
        assert caught.value.code() == code, mode
        expected = reason.format(key=key)

        info = tx.status()
        assert (TxStatus(info.status), info.rollback_reason) == (TxStatus.ROLLEDBACK, expected), mode

        shown = xactl_json(system.coordinator.address, "show", tx.gtrid)
        assert shown["rollbackReason"] == expected, mode
        reply = rest(f"http://{system.coordinator.http}", "GET", f"/admin/v1/xa-transaction/{tx.gtrid}")
        assert (reply.status, reply.body["rollbackReason"]) == (200, expected), mode
        assert f"{tx.gtrid} marked rollback-only: {expected}" in system.coordinator.log_path.read_text(), mode
    # Nothing any refused call wrote was committed; a call outside a transaction still commits.
    assert system.order(b"ok:after", timeout=10).startswith(b"local.")
    assert system.count(b"", timeout=10) == b"1"


def test_a_streaming_handler_that_fails_after_its_branch_block_dooms_the_transaction(system: Shop) -> None:
    for mode, (code, reason) in (("abort", REFUSALS["abort"]), ("raise", REFUSALS["raise"])):
        key = f"s-{mode}"
        with pytest.raises(grpc.RpcError) as caught, system.tm.begin() as tx:
            list(system.order_many(f"{mode}:{key}".encode(), timeout=10))
        assert caught.value.code() == code, mode
        info = tx.status()
        assert (TxStatus(info.status), info.rollback_reason) == (TxStatus.ROLLEDBACK, reason.format(key=key))
    with system.tm.begin() as tx:
        items = list(system.order_many(b"ok:s-ok", timeout=10))
    assert items == [tx.gtrid.encode()]
    assert system.count(b"", timeout=10) == b"1"  # only the stream that ended well committed


def test_the_refusal_reaches_the_initiator_that_commits_anyway(system: Shop) -> None:
    """A caller that swallows the refusal and commits is told why the transaction rolled back."""
    key = "k-committed-anyway"
    with pytest.raises(TransactionRolledBack) as raised, system.tm.begin(), pytest.raises(grpc.RpcError):
        system.order(f"abort:{key}".encode(), timeout=10)
    expected = REFUSALS["abort"][1].format(key=key)
    assert raised.value.rollback_code == XaCode.XA_RBROLLBACK
    assert raised.value.rollback_reason == expected
    assert expected in str(raised.value)
