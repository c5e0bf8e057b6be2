"""The shop participant of tests/shop_service.py as a running system for the initiator tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from tests.bank_system import TEST_COORDINATOR_ENV
from tests.shop_service import COUNT, ORDER, ORDER_MANY
from xatm.coordinator.tools.procs import Proc, coordinator_proc, free_port
from xatm.participant import TransactionManager, intercept_channel


@dataclass
class Shop:
    """A running coordinator and shop, the shop's methods on an intercepted channel, an initiator."""

    coordinator: Proc
    shop: Proc
    order: grpc.UnaryUnaryMultiCallable
    order_many: grpc.UnaryStreamMultiCallable
    count: grpc.UnaryUnaryMultiCallable
    tm: TransactionManager


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
