"""A commit waiting for its transaction's end: answered by the end or by its timeout, with no
task of its own."""

from __future__ import annotations

import asyncio
import contextlib
import time

from xatm.coordinator import protocol as sm
from xatm.coordinator.engine.registry import Registry
from xatm.participant.xa import TxStatus


def _held(registry: Registry, gtrid: str) -> sm.Transaction:
    tx = sm.Transaction(gtrid, 60_000, begun_mono=time.monotonic())
    registry.add(tx)
    return tx


def test_a_waiting_commit_runs_in_its_own_task_only_and_ends_with_its_transaction() -> None:
    asyncio.run(_ends_with_its_transaction())


async def _ends_with_its_transaction() -> None:
    registry = Registry()
    tx = _held(registry, "g1")
    waiter = asyncio.create_task(registry.wait_done("g1", 30.0))
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    # Only this test and the waiter: the wait itself starts no helper task.
    assert asyncio.all_tasks() == {asyncio.current_task(), waiter}
    tx.status = TxStatus.COMMITTED
    registry.finished(tx)
    await asyncio.wait_for(waiter, 5)
    assert waiter.result() is None


def test_a_waiting_commit_gives_up_at_its_timeout_and_stays_cancellable() -> None:
    asyncio.run(_gives_up_at_its_timeout())


async def _gives_up_at_its_timeout() -> None:
    registry = Registry()
    _held(registry, "g2")
    await registry.wait_done("g2", 0.01)  # returns, no TimeoutError
    assert registry.get("g2").status == TxStatus.CREATED
    waiter = asyncio.create_task(registry.wait_done("g2", 30.0))
    await asyncio.sleep(0)
    waiter.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await waiter
    assert waiter.cancelled()  # the caller's cancellation is not taken for the timeout
