"""The fan-out bounds: how many calls hold a slot, who waits, in which order, and that a
cancelled waiter neither keeps nor loses a slot. Counted in passes of the event loop."""

from __future__ import annotations

import asyncio

from xatm.coordinator.engine.fanout import FanOut


async def passes(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


class Holders:
    """Tasks that take a slot and hold it until released one by one."""

    def __init__(self, fanout: FanOut) -> None:
        self.fanout = fanout
        self.entered: list[str] = []
        self._release: dict[str, asyncio.Event] = {}
        self.tasks: dict[str, asyncio.Task[None]] = {}

    def start(self, name: str, gtrid: str, endpoint: str) -> None:
        self._release[name] = asyncio.Event()
        self.tasks[name] = asyncio.ensure_future(self._hold(name, gtrid, endpoint))

    async def _hold(self, name: str, gtrid: str, endpoint: str) -> None:
        async with self.fanout.slot(gtrid, endpoint):
            self.entered.append(name)
            await self._release[name].wait()

    def release(self, name: str) -> None:
        self._release[name].set()


def test_each_bound_holds_and_waiters_go_first_come_first_served() -> None:
    async def test() -> None:
        fanout = FanOut(overall=3, per_endpoint=2, per_transaction=1)
        holders = Holders(fanout)
        holders.start("t1-a", "t1", "a")
        holders.start("t1-b", "t1", "b")  # the transaction's window (1) is full
        holders.start("t2-a", "t2", "a")
        holders.start("t3-a", "t3", "a")  # endpoint a's bound (2) is full
        holders.start("t4-b", "t4", "b")
        holders.start("t5-c", "t5", "c")  # the coordinator's bound (3) is full
        await passes()
        assert holders.entered == ["t1-a", "t2-a", "t4-b"]
        assert fanout.in_flight == 3
        # t1-a's slots go to those first in line for each: overall to t5-c, endpoint a to t3-a
        # and t1's window to t1-b; both then queue for an overall slot, in that order.
        holders.release("t1-a")
        await passes()
        assert holders.entered == ["t1-a", "t2-a", "t4-b", "t5-c"]
        holders.release("t2-a")
        await passes()
        assert holders.entered[-1] == "t3-a"
        holders.release("t4-b")
        await passes()
        assert holders.entered[-1] == "t1-b"
        assert fanout.in_flight == 3
        for name in ("t1-b", "t3-a", "t5-c"):
            holders.release(name)
        await asyncio.gather(*holders.tasks.values())
        assert fanout.in_flight == 0
        assert not fanout._endpoints and not fanout._transactions  # keyed bounds go when unused

    asyncio.run(test())


def test_a_cancelled_waiter_keeps_no_slot_and_loses_none() -> None:
    async def test() -> None:
        fanout = FanOut(overall=10, per_endpoint=1, per_transaction=5)
        holders = Holders(fanout)
        holders.start("first", "t1", "a")
        holders.start("cancelled", "t2", "a")
        holders.start("next", "t3", "a")
        await passes()
        holders.tasks["cancelled"].cancel()
        await passes()
        holders.release("first")
        await passes()
        assert holders.entered == ["first", "next"]
        holders.release("next")
        await passes()
        # Cancelled in the very pass its slot was handed to it: the slot passes on.
        holders.start("holder", "t4", "a")
        holders.start("handed", "t5", "a")
        holders.start("after", "t6", "a")
        await passes()
        holders.release("holder")
        await asyncio.sleep(0)  # "handed" is given the slot but has not run yet
        holders.tasks["handed"].cancel()
        await passes()
        assert holders.entered[-1] == "after"
        holders.release("after")
        await passes()
        assert fanout.in_flight == 0
        assert not fanout._endpoints and not fanout._transactions
        assert fanout._overall.free == 10

    asyncio.run(test())
