"""A handler's refusal reaches the rollback reason with its gRPC code and message, however it fails.

Real processes: a coordinator and the shop participant of tests/shop_service.py (threaded and
grpc.aio), driven by the initiator; the reason is read back through GetStatus, ``xactl show``,
REST and the coordinator's log.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from coordinator.procs import Proc, coordinator_proc, free_port
from participant import TransactionManager, intercept_channel
from participant._proto import coordinator_pb2, coordinator_pb2_grpc, xa_pb2
from participant.xa import TxStatus
from tests.admin_support import rest, xactl_json
from tests.bank_system import TEST_COORDINATOR_ENV
from tests.shop_service import COUNT, ORDER, ORDER_MANY

# mode -> (status the caller sees, rollback reason recorded by the coordinator)
REFUSALS = {
    "abort": (grpc.StatusCode.FAILED_PRECONDITION, "shop: FAILED_PRECONDITION: out of stock: {key}"),
    "set_code": (grpc.StatusCode.FAILED_PRECONDITION, "shop: FAILED_PRECONDITION: out of stock: {key}"),
    "abort_after": (grpc.StatusCode.FAILED_PRECONDITION, "shop: FAILED_PRECONDITION: out of stock: {key}"),
    "raise": (grpc.StatusCode.UNKNOWN, "shop: UNKNOWN: ValueError: bad {key}"),
    "raise_empty": (grpc.StatusCode.UNKNOWN, "shop: UNKNOWN: ValueError"),
    "xatm": (grpc.StatusCode.RESOURCE_EXHAUSTED, "shop: RESOURCE_EXHAUSTED: quota for {key}"),
}


@dataclass
class Shop:
    coordinator: Proc
    shop: Proc
    order: grpc.UnaryUnaryMultiCallable
    order_many: grpc.UnaryStreamMultiCallable
    count: grpc.UnaryUnaryMultiCallable
    tm: TransactionManager


def get_status(coordinator: str, gtrid: str) -> xa_pb2.TransactionInfo:
    with grpc.insecure_channel(coordinator) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        return stub.GetStatus(coordinator_pb2.StatusRequest(gtrid=gtrid), timeout=5)


def shop_proc(root: Path, coordinator: str, *, aio: bool) -> Proc:
    port = free_port()
    argv = ["-m", "tests.shop_service", "shop", str(root / "shop.db"), coordinator, str(port)]
    return Proc("shop", argv + (["--aio"] if aio else []), f"127.0.0.1:{port}", root / "shop.log")


def start_shop(root: Path, *, aio: bool) -> Iterator[Shop]:
    """A coordinator and a shop participant, both real processes, and an initiator for them."""
    coordinator = coordinator_proc(root / "coordinator", root, env=dict(TEST_COORDINATOR_ENV)).start()
    shop = shop_proc(root, coordinator.address, aio=aio)
    try:
        shop.start()
        with (
            intercept_channel(grpc.insecure_channel(shop.address)) as channel,
            TransactionManager(coordinator.address) as tm,
        ):
            calls = (channel.unary_unary(ORDER), channel.unary_stream(ORDER_MANY), channel.unary_unary(COUNT))
            yield Shop(coordinator, shop, *calls, tm)
    finally:
        shop.stop()
        coordinator.stop()


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

        info = get_status(system.coordinator.address, tx.gtrid)
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
        info = get_status(system.coordinator.address, tx.gtrid)
        assert (TxStatus(info.status), info.rollback_reason) == (TxStatus.ROLLEDBACK, reason.format(key=key))
    with system.tm.begin() as tx:
        items = list(system.order_many(b"ok:s-ok", timeout=10))
    assert items == [tx.gtrid.encode()]
    assert system.count(b"", timeout=10) == b"1"  # only the stream that ended well committed
