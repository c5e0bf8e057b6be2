"""The engine's Prometheus gauges.

A scrape runs wherever the HTTP server runs, possibly on another thread than the engine's loop,
and must cost the same whatever the number of transactions kept. So every gauge here reads
counts the loop keeps up to date (single integers, or the length of a dict): none iterates
anything the loop may change meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Sized

from xatm.coordinator import metrics
from xatm.coordinator.engine.registry import CLOSED, Registry
from xatm.participant.xa import TxStatus

__all__ = ["register"]


def register(registry: Registry, in_doubt: Callable[[], int], unreachable: Sized) -> None:
    """Point the gauges at ``registry``'s counts, ``in_doubt()`` (branches owing an
    acknowledgement of a decision, a count kept on the loop) and the ``unreachable`` endpoints."""

    def count(status: TxStatus, overdue: bool | None = None) -> Callable[[], float]:
        return lambda: registry.count(status, overdue=overdue)

    for status in TxStatus:
        if status not in CLOSED:
            # HeuristicallyCompleted stays "active" until an operator forgets it.
            metrics.TRANSACTIONS_ACTIVE.labels(status=status.label).set_function(count(status))
        if not status.is_final:
            metrics.TRANSACTIONS_OVERDUE.labels(status=status.label).set_function(count(status, True))
    metrics.IN_DOUBT_BRANCHES.set_function(in_doubt)
    metrics.UNREACHABLE_PARTICIPANTS.set_function(lambda: len(unreachable))
