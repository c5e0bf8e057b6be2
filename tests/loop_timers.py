"""Counting the timers an event loop is asked to arm: how a test sees that per-item timers are gone."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

__all__ = ["counting_timers"]


def counting_timers(loop: asyncio.AbstractEventLoop) -> list[float]:
    """The loop time of every timer armed on ``loop`` from now on, appended as it is armed
    (``call_later`` goes through ``call_at``, so both are counted)."""
    armed: list[float] = []
    call_at: Callable[..., asyncio.TimerHandle] = loop.call_at

    def counting(
        when: float, callback: Callable[..., object], *args: Any, **kwargs: Any
    ) -> asyncio.TimerHandle:
        armed.append(when)
        return call_at(when, callback, *args, **kwargs)

    loop.call_at = counting  # type: ignore[method-assign, assignment]
    return armed
