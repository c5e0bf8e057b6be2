"""A coordinator restart between an eager enlistment and the Commit rolls the transaction back.

Real processes: a coordinator and two shop participants of tests/shop_service.py. One branch is
reported to the initiator (carried by its Commit), the other is enlisted eagerly by a streamed call
(which takes no report) and is forgotten when the coordinator is killed: nothing is logged for an
undecided transaction. The gtrid names the coordinator's start before the kill, so the restarted
coordinator must not commit the reported branch alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.shop_service import COUNT, ORDER
from tests.shop_system import Shop, start_shop
from xatm.coordinator.tools.procs import Proc, free_port
from xatm.participant import TransactionError, intercept_channel
from xatm.participant.xa import TxOutcome, TxStatus, incarnation_of


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    yield from start_shop(tmp_path, aio=False)


@pytest.fixture
def second(
    tmp_path: Path, shop: Shop
) -> Iterator[tuple[grpc.UnaryUnaryMultiCallable, grpc.UnaryUnaryMultiCallable]]:
    """A second shop (its own resource manager) on the same coordinator: (Order, Count)."""
    root = tmp_path / "second"
    root.mkdir()
    port = free_port()
    argv = ["-m", "tests.shop_service", "depot", str(root / "depot.db"), shop.coordinator.address, str(port)]
    proc = Proc("depot", argv, f"127.0.0.1:{port}", root / "depot.log").start()
    try:
        with intercept_channel(grpc.insecure_channel(proc.address)) as channel:
            yield channel.unary_unary(ORDER), channel.unary_unary(COUNT)
    finally:
        proc.stop()


def test_a_commit_after_a_restart_that_forgot_an_eager_branch_rolls_back(
    shop: Shop, second: tuple[grpc.UnaryUnaryMultiCallable, grpc.UnaryUnaryMultiCallable]
) -> None:
    order, count = second
    with shop.tm.begin():  # the first Begin teaches the manager the node id and incarnation
        shop.order(b"ok:first", timeout=10)
    before = shop.tm.incarnation
    assert before and shop.tm.node_id is not None

    tx = shop.tm.begin()  # made here: the coordinator hears of it with the Enlist below
    assert incarnation_of(tx.gtrid) == before
    assert order(b"ok:reported", timeout=10) == tx.gtrid.encode()  # reported in the reply
    assert [r for r in shop.order_many(b"ok:eager", timeout=10)] == [tx.gtrid.encode()]  # enlisted

    shop.coordinator.kill()
    shop.coordinator.start()

    with pytest.raises(TransactionError) as caught:
        tx.commit()
    assert caught.value.outcome == TxOutcome.TX_ROLLBACK
    assert "restarted before the transaction was decided" in caught.value.rollback_reason
    assert TxStatus(tx.status().status) == TxStatus.ROLLEDBACK
    assert int(count(b"", timeout=10)) == 0  # the reported branch did not commit alone
    assert int(shop.count(b"", timeout=10)) == 1  # nor did the forgotten one

    # The next transaction of the same manager learns the new start and commits; it writes the
    # key the rolled-back branch had locked, so that lock went with the rollback.
    with shop.tm.begin() as again:
        order(b"ok:reported", timeout=10)
        shop.order(b"ok:next", timeout=10)
    assert shop.tm.incarnation not in ("", before)
    assert incarnation_of(again.gtrid) == shop.tm.incarnation
    assert (int(count(b"", timeout=10)), int(shop.count(b"", timeout=10))) == (1, 2)
    with shop.tm.begin() as lazy:  # and makes its gtrids with it again
        shop.order(b"ok:lazy", timeout=10)
    assert incarnation_of(lazy.gtrid) == shop.tm.incarnation
    assert int(shop.count(b"", timeout=10)) == 3
