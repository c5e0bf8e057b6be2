"""The load generator every measurement shares: N workers in a loop, one measured window.

The echo ceiling, the coordinator runs, the replicas and the PostgreSQL transfers all go
through ``drive``, so their numbers are taken the same way: warm-up first, counters read at
both ends of the window, only operations that finish inside it counted.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from xatm.coordinator.tools.bench.measure import percentile

__all__ = ["CALL_TIMEOUT", "Failed", "Latencies", "Measured", "Window", "drive", "worker"]

#: Deadline of one call of the harness: far above any healthy latency, so only a stuck run hits it.
CALL_TIMEOUT = 30.0

T = TypeVar("T")


class Failed(Exception):
    """One operation did not succeed; the message says how (counted, the first one kept)."""


@dataclass
class Window:
    """The measured interval in ``time.perf_counter`` seconds; workers keep running around it."""

    start: float = float("inf")
    end: float = float("inf")
    stopping: bool = False
    latencies: list[float] = field(default_factory=list)
    failed: int = 0
    first_error: str = ""

    def fail(self, what: str) -> None:
        self.failed += 1
        self.first_error = self.first_error or what

    @property
    def seconds(self) -> float:
        return self.end - self.start


@dataclass(frozen=True)
class Latencies:
    """Operations completed in a window and their latency percentiles, in ms."""

    count: int
    per_second: float
    p50_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, window: Window) -> Latencies:
        ordered = sorted(window.latencies)
        return cls(
            count=len(ordered),
            per_second=round(len(ordered) / window.seconds, 1) if window.seconds > 0 else 0.0,
            p50_ms=round(percentile(ordered, 0.50) * 1000, 2),
            p99_ms=round(percentile(ordered, 0.99) * 1000, 2),
            max_ms=round((ordered[-1] if ordered else 0.0) * 1000, 2),
        )


async def worker(one: Callable[[], Awaitable[float]], window: Window) -> None:
    """``one()`` back to back; it returns the latency to record or raises ``Failed``."""
    while not window.stopping:
        try:
            latency = await one()
        except Failed as err:
            window.fail(str(err))
            continue
        ended = time.perf_counter()
        if window.start <= ended <= window.end:
            window.latencies.append(latency)


@dataclass
class Measured(Generic[T]):
    """A window and what ``snapshot`` returned at its start and end."""

    window: Window
    before: T
    after: T


async def drive(
    one: Callable[[], Awaitable[float]],
    *,
    concurrency: int,
    warmup: float,
    seconds: float,
    snapshot: Callable[[], T],
) -> Measured[T]:
    """Run ``concurrency`` workers of ``one``; ``snapshot`` (blocking, run in a thread) at the window's ends.

    Raises ``TimeoutError`` when the workers do not stop within ``CALL_TIMEOUT`` after the window.
    """
    window = Window()
    workers = [asyncio.create_task(worker(one, window)) for _ in range(concurrency)]
    try:
        await asyncio.sleep(warmup)
        before = await asyncio.to_thread(snapshot)
        window.start = time.perf_counter()
        await asyncio.sleep(seconds)
        window.end = time.perf_counter()
        after = await asyncio.to_thread(snapshot)
        window.stopping = True
        await asyncio.wait_for(asyncio.gather(*workers), CALL_TIMEOUT)
    finally:
        for task in workers:
            task.cancel()
    return Measured(window, before, after)
