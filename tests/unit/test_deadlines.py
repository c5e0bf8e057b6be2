"""The deadlines of all open transactions on one loop timer: order, cancellation by ending, stop."""

from __future__ import annotations

import asyncio
import random
import time

from tests.loop_timers import counting_timers
from xatm.coordinator.engine.deadlines import SWEEP_AT, Deadlines
from xatm.coordinator.protocol import Transaction
from xatm.participant.xa import TxStatus as S

#: A test here that waits longer than this is stuck, not slow.
PATIENCE = 10.0


def _tx(n: int, begun: float, timeout_ms: int) -> Transaction:
    return Transaction(gtrid=f"n1.{n:04d}", timeout_ms=timeout_ms, begun_mono=begun)


class _Watch:
    """A ``Deadlines`` whose due transactions are kept in firing order, each with the clock then."""

    def __init__(self) -> None:
        self.fired: list[tuple[Transaction, float]] = []
        self.deadlines = Deadlines(lambda tx: not tx.status.is_final, self._due)
        self.enough = 0
        self._enough = asyncio.Event()

    def _due(self, tx: Transaction) -> None:
        self.fired.append((tx, time.monotonic()))
        if len(self.fired) >= self.enough:
            self._enough.set()

    async def only_due(self) -> Transaction:
        """The first transaction due, once it fired; AssertionError if others fired with it."""
        await self.until_fired(1)
        assert len(self.fired) == 1, [tx.gtrid for tx, _ in self.fired]
        return self.fired[0][0]

    async def until_fired(self, count: int) -> None:
        self.enough = count
        if len(self.fired) < count:
            await asyncio.wait_for(self._enough.wait(), PATIENCE)


def test_many_deadlines_fire_each_once_in_deadline_order_and_never_early() -> None:
    async def test() -> None:
        watch = _Watch()
        begun = time.monotonic()
        # Distinct timeouts added in random order: some join the FIFO, the shorter ones the heap.
        timeouts = list(range(5, 125, 2))
        random.Random(7).shuffle(timeouts)
        txs = [_tx(n, begun, ms) for n, ms in enumerate(timeouts)]
        for tx in txs:
            watch.deadlines.add(tx)
        await watch.until_fired(len(txs))
        fired = [tx for tx, _ in watch.fired]
        assert fired == sorted(txs, key=lambda tx: tx.deadline_mono)
        assert all(at >= tx.deadline_mono for tx, at in watch.fired)
        assert len(watch.deadlines) == 0

    asyncio.run(test())


def test_a_transaction_that_ended_is_not_timed_out_and_is_let_go() -> None:
    async def test() -> None:
        watch = _Watch()
        begun = time.monotonic()
        first, second, last = (_tx(n, begun, 20 + n) for n in range(3))
        for tx in (first, second, last):
            watch.deadlines.add(tx)
        first.status, second.status = S.COMMITTED, S.ROLLEDBACK
        watch.deadlines.settle()
        assert len(watch.deadlines) == 1  # the ended ones at the front are no longer held
        assert await watch.only_due() is last

    asyncio.run(test())


def test_ended_transactions_behind_an_open_one_are_let_go_in_sweeps() -> None:
    """One transaction held open at the front does not keep every one begun after it."""

    async def test() -> None:
        watch = _Watch()
        begun = time.monotonic()
        stays_open = _tx(0, begun, 60_000)
        watch.deadlines.add(stays_open)
        for n in range(1, 5 * SWEEP_AT):
            tx = _tx(n, begun, 60_000)
            watch.deadlines.add(tx)
            tx.status = S.COMMITTED
            watch.deadlines.settle()
        assert len(watch.deadlines) <= SWEEP_AT
        last = _tx(9, begun, 10)  # due before the open one, after a sweep: still fires
        watch.deadlines.add(last)
        assert await watch.only_due() is last

    asyncio.run(test())


def test_one_timer_serves_every_transaction_with_the_same_timeout() -> None:
    """Deadlines added in begin order arm the loop's timer once, not once per transaction."""

    async def test() -> None:
        watch = _Watch()
        armed = counting_timers(asyncio.get_running_loop())
        for n in range(1000):
            watch.deadlines.add(_tx(n, time.monotonic(), 60_000))
        assert len(armed) == 1 and len(watch.deadlines) == 1000

    asyncio.run(test())


def test_nothing_fires_after_stop() -> None:
    async def test() -> None:
        watch = _Watch()
        watch.deadlines.add(_tx(1, time.monotonic(), 5))
        watch.deadlines.stop()
        watch.deadlines.add(_tx(2, time.monotonic(), 5))
        # A later deadline on a Deadlines of its own: once it fired, the stopped ones had their time.
        later = _Watch()
        later.deadlines.add(_tx(3, time.monotonic(), 30))
        await later.until_fired(1)
        assert watch.fired == [] and len(watch.deadlines) == 0

    asyncio.run(test())


def test_a_failing_callback_does_not_keep_the_others_due_with_it_from_firing() -> None:
    async def test() -> None:
        fired: list[str] = []

        def due(tx: Transaction) -> None:
            fired.append(tx.gtrid)
            if tx.gtrid.endswith("0"):
                raise RuntimeError("handler broke")

        deadlines = Deadlines(lambda tx: True, due)
        begun = time.monotonic()
        for n in range(2):
            deadlines.add(_tx(n, begun, 5))
        # A later deadline on a Deadlines of its own: the loop fires timers in deadline order.
        later = _Watch()
        later.deadlines.add(_tx(9, time.monotonic(), 5))
        await later.until_fired(1)
        assert fired == ["n1.0000", "n1.0001"]

    asyncio.run(test())
