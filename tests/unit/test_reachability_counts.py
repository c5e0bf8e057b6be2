"""The per-endpoint counts behind ``xatm_unreachable_branches``: a branch counts for the endpoint
it calls from its first turn until it leaves, follows a move, and only failing endpoints are
published, the most owed by name and the rest summed as ``other``."""

from __future__ import annotations

import asyncio

from xatm.coordinator.engine.reachability import OTHER_ENDPOINTS, Reachability, Waiter
from xatm.participant.xa import XaCode


def _down(reach: Reachability, endpoint: str) -> None:
    reach.record(endpoint, XaCode.XAER_RMFAIL, "UNAVAILABLE: connection refused", sent=0.0)


async def _settled(reach: Reachability) -> tuple[tuple[str, int], ...]:
    await asyncio.sleep(0)  # the snapshot is published once the loop is done with the changes
    return reach.owed_by_unreachable


def test_counts_follow_turns_moves_and_leaves() -> None:
    async def run() -> None:
        reach = Reachability(initial=0.01, cap=0.02)
        a, b, c = Waiter(), Waiter(), Waiter()
        for waiter in (a, b, c):
            await reach.turn("p1:1", waiter)
        assert await _settled(reach) == ()  # nobody fails yet: nothing published
        _down(reach, "p1:1")
        assert await _settled(reach) == (("p1:1", 3),)
        c.wake()
        await reach.turn("p2:1", c)  # the branch moved to another endpoint
        reach.leave(a)
        reach.leave(a)  # leaving twice counts once
        assert await _settled(reach) == (("p1:1", 1),) and reach.owed("p2:1") == 1
        reach.record("p1:1", XaCode.XA_OK, "", sent=0.0)  # it answers again
        assert await _settled(reach) == ()

    asyncio.run(run())


def test_the_most_owed_are_named_and_the_rest_summed() -> None:
    async def run() -> None:
        reach = Reachability(initial=0.01, cap=0.02, named=2)
        for index, owed in enumerate((1, 4, 2, 3)):
            endpoint = f"p{index}:1"
            for _ in range(owed):
                waiter = Waiter()
                waiter.wake()  # let it through the endpoint's backoff at once
                await reach.turn(endpoint, waiter)
            _down(reach, endpoint)
        assert await _settled(reach) == (("p1:1", 4), ("p3:1", 3), (OTHER_ENDPOINTS, 3))

    asyncio.run(run())
