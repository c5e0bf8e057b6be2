"""The initiator: a held transaction carries every call until it ends, and an unacknowledged
one-phase commit is an unknown outcome.

End to end on real processes (a coordinator and the shop participant of tests/shop_service.py).
The mapping of every outcome and status to an exception is in tests/unit/test_initiator.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path

import grpc
import pytest

import xatm.participant as xatm
from tests.bank_system import BankSystem
from tests.shop_service import ORDER
from tests.shop_system import Shop, start_shop
from xatm.participant import (
    AsyncTransactionManager,
    XatmError,
    aio_client_interceptors,
    current,
)
from xatm.participant.errors import Status
from xatm.participant.xa import TxOutcome, TxStatus


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    yield from start_shop(tmp_path, aio=False)


def _count(shop: Shop) -> int:
    return int(shop.count(b"", timeout=10))


def _branches(tx: xatm.Transaction) -> int:
    return len(tx.status().branches)


def test_calls_after_begin_without_with_are_rolled_back(shop: Shop) -> None:
    tx = shop.tm.begin()
    assert shop.order(b"ok:a", timeout=10) == tx.gtrid.encode()  # the call ran in the branch
    assert shop.order(b"ok:b", timeout=10) == tx.gtrid.encode()
    assert tx.rollback().outcome == TxOutcome.TX_OK
    info = tx.status()
    assert (TxStatus(info.status), len(info.branches)) == (TxStatus.ROLLEDBACK, 1)
    assert _count(shop) == 0  # nothing either call wrote survived


def test_calls_after_commit_carry_no_transaction(shop: Shop) -> None:
    tx = shop.tm.begin()
    shop.order(b"ok:in", timeout=10)
    tx.commit()
    assert current() is None and not tx.active
    assert shop.order(b"ok:after", timeout=10).startswith(b"local.")
    assert _branches(tx) == 1
    assert _count(shop) == 2
    # The next transaction begins cleanly in the same thread.
    with shop.tm.begin() as again:
        assert shop.order(b"ok:again", timeout=10) == again.gtrid.encode()
    assert _count(shop) == 3


def test_a_second_begin_in_the_same_context_is_refused(shop: Shop) -> None:
    tx = shop.tm.begin()
    with pytest.raises(XatmError) as caught:
        shop.tm.begin()
    assert caught.value.status == Status.FAILED_PRECONDITION
    assert tx.gtrid in caught.value.message
    with pytest.raises(XatmError), shop.tm.begin():
        pytest.fail("a nested with block must not run")
    shop.order(b"ok:x", timeout=10)
    tx.rollback()
    assert _count(shop) == 0


def test_a_transaction_past_its_timeout_does_not_block_the_next_begin(shop: Shop) -> None:
    stale = shop.tm.begin(timeout=0.5)
    shop.order(b"ok:stale", timeout=10)
    deadline = time.monotonic() + 20
    while TxStatus(stale.status().status) != TxStatus.ROLLEDBACK:
        assert time.monotonic() < deadline, "the coordinator did not time the transaction out"
        time.sleep(0.05)
    with shop.tm.begin() as tx:
        assert shop.order(b"ok:fresh", timeout=10) == tx.gtrid.encode()
    assert _count(shop) == 1


def test_thread_pool_calls_join_through_run(shop: Shop) -> None:
    tx = shop.tm.begin()
    with futures.ThreadPoolExecutor(4) as pool:
        gtrids = list(pool.map(lambda i: tx.run(shop.order, f"ok:p{i}".encode(), timeout=10), range(4)))
        assert set(gtrids) == {tx.gtrid.encode()}
        tx.rollback()
        late = pool.submit(tx.run, shop.order, b"ok:late", timeout=10)
        with pytest.raises(XatmError) as caught:
            late.result()
    assert caught.value.status == Status.FAILED_PRECONDITION
    assert _count(shop) == 0 and _branches(tx) == 1


def test_await_begin_binds_the_awaiting_task(shop: Shop) -> None:
    async def main() -> None:
        async with (
            grpc.aio.insecure_channel(shop.shop.address, interceptors=aio_client_interceptors()) as channel,
            AsyncTransactionManager(shop.coordinator.address) as tm,
        ):
            order = channel.unary_unary(ORDER)
            tx = await tm.begin()
            assert await order(b"ok:a1", timeout=10) == tx.gtrid.encode()

            # Tasks made after begin share it, and so do worker threads of asyncio.to_thread.
            async def in_a_task() -> bytes:
                return await order(b"ok:a2", timeout=10)

            inner = await asyncio.create_task(in_a_task())
            threaded = await asyncio.to_thread(shop.order, b"ok:a3", timeout=10)
            assert inner == threaded == tx.gtrid.encode()
            with pytest.raises(XatmError):
                await tm.begin()
            await tx.rollback()
            assert (await order(b"ok:a4", timeout=10)).startswith(b"local.")

    asyncio.run(main())
    assert _count(shop) == 1  # only the call after rollback


def test_begin_awaited_in_another_task_is_active_where_it_was_called(shop: Shop) -> None:
    """``asyncio.wait_for`` (before Python 3.12) and ``gather`` run the Begin in a task of their own."""

    async def main() -> None:
        async with (
            grpc.aio.insecure_channel(shop.shop.address, interceptors=aio_client_interceptors()) as channel,
            AsyncTransactionManager(shop.coordinator.address) as tm,
        ):
            order = channel.unary_unary(ORDER)
            tx = await asyncio.wait_for(tm.begin(), 10)
            assert await order(b"ok:w1", timeout=10) == tx.gtrid.encode()
            await tx.rollback()
            (again,) = await asyncio.gather(tm.begin())
            assert await order(b"ok:w2", timeout=10) == again.gtrid.encode()
            await again.rollback()

    asyncio.run(main())
    assert _count(shop) == 0


def test_an_unacknowledged_one_phase_commit_raises_outcome_unknown(tmp_path: Path) -> None:
    """A real coordinator whose one branch keeps failing its commit: the answer is not final."""
    system = BankSystem(tmp_path, coordinator_env={"XATM_COMMIT_WAIT": "1"})
    system.start({"bank-a": {"XATM_FAILPOINTS": "participant.commit=error(UNAVAILABLE)"}})
    try:
        assert system.bank is not None
        tx = system.bank.tm.begin()
        system.apply("bank-a", "alice", 50)
        with pytest.raises(xatm.TransactionOutcomeUnknown) as caught:
            tx.commit()
        error = caught.value
        assert (error.outcome, error.transaction_status) == (TxOutcome.TX_HAZARD, TxStatus.COMMITTING)
        assert "not known yet" in error.message and f"xactl show {tx.gtrid}" in error.message
        assert TxStatus(tx.status().status) == TxStatus.COMMITTING  # what the message advises
    finally:
        system.stop()
