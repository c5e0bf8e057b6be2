"""Participants that stop answering: backoff per endpoint, not per branch.

When calls to an endpoint fail with XAER_RMFAIL (unreachable, deadline, the RM unavailable),
the endpoint backs off with capped, jittered exponential delays. While it does, one call at a
time probes it when the delay ends; the other branches owed by it wait for that probe instead of
each retrying on its own, so a thousand branches at a dead participant cost one call per delay,
not a thousand. A successful answer ends the backoff and releases every waiting branch at once.
All delays are measured on the monotonic clock.

It also counts, per endpoint, the branches that call it (from their first turn until they
``leave``), and publishes the counts of the failing endpoints as one immutable snapshot that a
scrape on another thread reads whole (``owed_by_unreachable``).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Collection
from dataclasses import dataclass, field

from xatm.participant.xa import XaCode

__all__ = ["OTHER_ENDPOINTS", "Reachability", "Unreachable", "Waiter", "backoff_delay"]

#: The label that sums the branches of the failing endpoints past the ones published by name.
OTHER_ENDPOINTS = "other"


def backoff_delay(failures: int, initial: float, cap: float) -> float:
    """Seconds before retry number ``failures`` (1 = the first): doubling from ``initial``,
    capped at ``cap``, plus up to ``initial`` of jitter so that retries do not align."""
    return min(initial * 2 ** min(failures - 1, 62), cap) + random.uniform(0, initial)


class Waiter:
    """Somebody that calls endpoints: ``signal`` is set whenever it should look again, and
    ``woken`` says it was asked to call now whatever the endpoint's backoff."""

    def __init__(self) -> None:
        self.signal = asyncio.Event()
        self.woken = False

    def wake(self) -> None:
        self.woken = True
        self.signal.set()

    def settle(self) -> None:
        """Called before acting on what woke it: later signals count again."""
        self.woken = False
        self.signal.clear()

    async def sleep(self, seconds: float) -> None:
        """``seconds``, or less when signalled."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.signal.wait(), seconds)


@dataclass
class Unreachable:
    """An endpoint in backoff: since when (time.monotonic()), how often it failed, why last."""

    since: float
    reason: str
    #: time.time() of the first failure: for display only.
    since_wall: float = field(default_factory=time.time)
    failures: int = 0
    #: time.monotonic() at which the next probe may go out.
    retry_at: float = 0.0
    #: When the last failure was counted: failures of calls sent before it do not count again.
    counted_at: float = 0.0
    probing: Waiter | None = None
    #: Branches waiting for their turn: told when the endpoint answers or a probe ends.
    waiting: set[Waiter] = field(default_factory=set)


class Reachability:
    """The endpoints currently failing, and the gate branches pass before calling one."""

    def __init__(self, *, initial: float, cap: float, named: int = 10) -> None:
        """``named``: how many failing endpoints the published counts name (the ones most owed);
        the rest are summed under ``OTHER_ENDPOINTS``, so a scrape's label set stays bounded."""
        self._initial = initial
        self._cap = cap
        self._named = named
        self.down: dict[str, Unreachable] = {}
        #: The endpoint each branch's driver calls, and how many drivers call each endpoint.
        self._calling: dict[Waiter, str] = {}
        self._owed: Counter[str] = Counter()
        self._stale = False
        #: (endpoint, branches) of the failing endpoints, replaced whole, never changed in place.
        self.owed_by_unreachable: tuple[tuple[str, int], ...] = ()

    def record(self, endpoint: str, code: XaCode, reason: str, sent: float) -> None:
        """The answer of a call sent at ``sent`` (time.monotonic()) to ``endpoint``."""
        state = self.down.get(endpoint)
        if code != XaCode.XAER_RMFAIL:
            if state is not None:  # it answers again: everything waiting for it may go
                del self.down[endpoint]
                self._wake(state)
                self._republish()
            return
        now = time.monotonic()
        if state is None:
            state = self.down[endpoint] = Unreachable(since=now, reason=reason)
            self._republish()
        state.reason = reason
        if state.failures == 0 or sent >= state.counted_at:
            # Calls that were already out when the last failure was counted say nothing new.
            state.failures += 1
            state.counted_at = now
            state.retry_at = now + backoff_delay(state.failures, self._initial, self._cap)
        state.probing = None
        self._wake(state)

    def release(self, endpoint: str, caller: Waiter) -> None:
        """``caller`` will not report its probe (it was cancelled): let another branch probe."""
        state = self.down.get(endpoint)
        if state is not None and state.probing is caller:
            state.probing = None
            self._wake(state)

    def keep_only(self, owed: Collection[str]) -> None:
        """Forget the failing endpoints no branch waits for any more (their transactions ended or
        were resolved), so the table holds at most the endpoints of open branches."""
        for endpoint in [e for e, state in self.down.items() if e not in owed and not state.waiting]:
            del self.down[endpoint]
            self._republish()

    def leave(self, caller: Waiter) -> None:
        """``caller`` calls no endpoint any more (its branch was acknowledged or closed)."""
        endpoint = self._calling.pop(caller, None)
        if endpoint is not None:
            self._count(endpoint, -1)

    def owed(self, endpoint: str) -> int:
        """How many branches call ``endpoint`` now."""
        return self._owed[endpoint]

    def retry_at(self, endpoint: str) -> float | None:
        """time.monotonic() of the endpoint's next probe, or None when it is not backing off."""
        state = self.down.get(endpoint)
        return None if state is None else state.retry_at

    async def turn(self, endpoint: str, caller: Waiter) -> None:
        """Return when ``caller`` may call ``endpoint``: at once when it is not backing off;
        otherwise as the probe once its delay ended, or when ``caller`` is woken (an operator or
        the participant itself asked for the branch to be driven now)."""
        before = self._calling.get(caller)
        if before != endpoint:  # its first turn, or the branch moved
            if before is not None:
                self._count(before, -1)
            self._calling[caller] = endpoint
            self._count(endpoint, 1)
        while True:
            state = self.down.get(endpoint)
            if state is None or caller.woken:
                return
            now = time.monotonic()
            if state.probing is None and now >= state.retry_at:
                state.probing = caller
                return
            wait = state.retry_at - now if state.probing is None else self._cap
            state.waiting.add(caller)
            try:
                await caller.sleep(wait)
            finally:
                state.waiting.discard(caller)
            if not caller.woken:
                caller.signal.clear()

    def _count(self, endpoint: str, change: int) -> None:
        self._owed[endpoint] += change
        if self._owed[endpoint] <= 0:
            del self._owed[endpoint]
        if endpoint in self.down:
            self._republish()

    def _republish(self) -> None:
        """Publish the counts once the loop is done with what changed them (many drivers enter
        or leave in one go), not once per change."""
        if self._stale:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # called outside a loop (a test, a tool): nothing to batch
            self._publish()
            return
        self._stale = True
        loop.call_soon(self._publish)

    def _publish(self) -> None:
        self._stale = False
        owed = sorted(((e, self._owed[e]) for e in self.down), key=lambda item: (-item[1], item[0]))
        named, rest = owed[: self._named], owed[self._named :]
        if rest:
            named.append((OTHER_ENDPOINTS, sum(count for _, count in rest)))
        self.owed_by_unreachable = tuple(named)

    @staticmethod
    def _wake(state: Unreachable) -> None:
        for waiter in state.waiting:
            waiter.signal.set()
