"""Bounds on the calls the engine has out at once: overall, per participant endpoint, and per
transaction (its fan-out window).

The per-transaction window is smaller than the per-endpoint bound, so one transaction with
thousands of branches never fills a participant's or the coordinator's slots: a call of an
unrelated transaction always finds one free. Waiters are served first come, first served.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

__all__ = ["FanOut"]


class _Gate:
    """A semaphore that exists only while somebody holds or waits for it (the keys are unbounded)."""

    def __init__(self, size: int) -> None:
        self.semaphore = asyncio.Semaphore(size)
        self.users = 0


class FanOut:
    """Slots for participant calls; ``slot(gtrid, endpoint)`` holds one of each kind."""

    def __init__(self, *, overall: int, per_endpoint: int, per_transaction: int) -> None:
        self._overall = asyncio.Semaphore(overall)
        self._per_endpoint = per_endpoint
        self._per_transaction = per_transaction
        self._endpoints: dict[str, _Gate] = {}
        self._transactions: dict[str, _Gate] = {}
        #: Calls holding a slot now.
        self.in_flight = 0

    @contextlib.asynccontextmanager
    async def slot(self, gtrid: str, endpoint: str) -> AsyncIterator[None]:
        """Hold a slot of ``gtrid``'s window, of ``endpoint`` and of the whole coordinator.

        Always taken in that order, so two callers never wait for each other's slots.
        """
        async with (
            self._gate(self._transactions, gtrid, self._per_transaction),
            self._gate(self._endpoints, endpoint, self._per_endpoint),
            self._overall,
        ):
            self.in_flight += 1
            try:
                yield
            finally:
                self.in_flight -= 1

    @contextlib.asynccontextmanager
    async def _gate(self, gates: dict[str, _Gate], key: str, size: int) -> AsyncIterator[None]:
        gate = gates.get(key)
        if gate is None:
            gate = gates[key] = _Gate(size)
        gate.users += 1
        try:
            async with gate.semaphore:
                yield
        finally:
            gate.users -= 1
            if not gate.users:
                del gates[key]
