"""Bounds on the calls the engine has out at once: overall, per participant endpoint, and per
transaction (its fan-out window).

The per-transaction window is smaller than the per-endpoint bound, so one transaction with
thousands of branches never fills a participant's or the coordinator's slots: a call of an
unrelated transaction always finds one free. Waiters are served first come, first served.

Every participant call passes here, so the uncontended case costs no coroutine, no future and
no context-manager generator: a slot free at all three levels, with nobody queued for any of
them, is taken by three counter increments. Only a caller that must wait builds a future.
"""

from __future__ import annotations

import asyncio
from collections import deque
from types import TracebackType

__all__ = ["FanOut"]


class _Gate:
    """A counting bound, first come first served; a keyed one exists only while in use."""

    __slots__ = ("free", "users", "waiters")

    def __init__(self, size: int) -> None:
        self.free = size
        #: Holders and waiters (a keyed gate is dropped when none is left).
        self.users = 0
        self.waiters: deque[asyncio.Future[None]] = deque()

    def open(self) -> bool:
        """A slot is free now and nobody waits ahead for one."""
        return self.free > 0 and not self.waiters

    async def wait(self) -> None:
        """Until a slot is handed to this caller (then it is held); a cancelled wait holds none."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiters.append(future)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self.give()  # handed over just as the wait was cancelled: pass it on
            elif future in self.waiters:
                self.waiters.remove(future)
            raise

    def give(self) -> None:
        """Release one slot: to the first waiter still waiting, or back to the pool."""
        while self.waiters:
            future = self.waiters.popleft()
            if not future.done():
                future.set_result(None)  # the slot passes straight on: ``free`` stays as it is
                return
        self.free += 1


class _Slot:
    """``async with`` one slot of a transaction's window, an endpoint and the coordinator."""

    __slots__ = ("_endpoint", "_fanout", "_gates", "_gtrid")

    def __init__(self, fanout: FanOut, gtrid: str, endpoint: str) -> None:
        self._fanout = fanout
        self._gtrid = gtrid
        self._endpoint = endpoint
        self._gates: tuple[_Gate, _Gate] | None = None

    async def __aenter__(self) -> None:
        fanout = self._fanout
        window = fanout._join(fanout._transactions, self._gtrid, fanout._per_transaction)
        endpoint = fanout._join(fanout._endpoints, self._endpoint, fanout._per_endpoint)
        overall = fanout._overall
        held: list[_Gate] = []
        try:
            # In this order always, so two callers never wait for each other's slots.
            for gate in (window, endpoint, overall):
                if gate.open():
                    gate.free -= 1
                else:
                    await gate.wait()
                held.append(gate)
        except BaseException:
            for gate in held:
                gate.give()
            fanout._leave(fanout._transactions, self._gtrid, window)
            fanout._leave(fanout._endpoints, self._endpoint, endpoint)
            raise
        self._gates = (window, endpoint)
        fanout.in_flight += 1

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        fanout = self._fanout
        assert self._gates is not None
        window, endpoint = self._gates
        fanout.in_flight -= 1
        fanout._overall.give()
        endpoint.give()
        window.give()
        fanout._leave(fanout._endpoints, self._endpoint, endpoint)
        fanout._leave(fanout._transactions, self._gtrid, window)


class FanOut:
    """Slots for participant calls; ``slot(gtrid, endpoint)`` holds one of each kind."""

    def __init__(self, *, overall: int, per_endpoint: int, per_transaction: int) -> None:
        self._overall = _Gate(overall)
        self._per_endpoint = per_endpoint
        self._per_transaction = per_transaction
        self._endpoints: dict[str, _Gate] = {}
        self._transactions: dict[str, _Gate] = {}
        #: Calls holding a slot now.
        self.in_flight = 0

    def slot(self, gtrid: str, endpoint: str) -> _Slot:
        """``async with`` it to hold a slot of ``gtrid``'s window, of ``endpoint`` and of the
        whole coordinator; waits (first come, first served) while any of them is full."""
        return _Slot(self, gtrid, endpoint)

    @staticmethod
    def _join(gates: dict[str, _Gate], key: str, size: int) -> _Gate:
        gate = gates.get(key)
        if gate is None:
            gate = gates[key] = _Gate(size)
        gate.users += 1
        return gate

    @staticmethod
    def _leave(gates: dict[str, _Gate], key: str, gate: _Gate) -> None:
        gate.users -= 1
        if not gate.users and gates.get(key) is gate:
            del gates[key]
