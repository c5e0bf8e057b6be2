"""The engine's Prometheus gauges.

A scrape runs wherever the HTTP server runs, possibly on another thread than the engine's loop,
and must cost the same whatever the number of transactions kept. So every gauge here reads
counts the loop keeps up to date (single integers, or the length of a dict): none iterates
anything the loop may change meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sized

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from xatm.coordinator import metrics
from xatm.coordinator.engine.registry import CLOSED, Registry
from xatm.participant.xa import TxStatus

__all__ = ["register"]


class _OwedByUnreachable(Collector):
    """``xatm_unreachable_branches{endpoint}``: branches waiting for each participant endpoint that
    does not answer. The engine publishes the counts as one tuple, replaced whole: the scrape reads
    it as it is. At most a fixed number of endpoints are named (the most owed); the rest are
    summed under ``endpoint="other"``."""

    def __init__(self) -> None:
        self.source: Callable[[], tuple[tuple[str, int], ...]] = tuple

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "xatm_unreachable_branches",
            "Branches waiting for a participant endpoint that does not answer, by endpoint "
            '(the most owed by name, the rest as endpoint="other")',
            labels=["endpoint"],
        )
        for endpoint, branches in self.source():
            family.add_metric([endpoint], branches)
        yield family


_OWED_BY_UNREACHABLE = _OwedByUnreachable()
REGISTRY.register(_OWED_BY_UNREACHABLE)


def register(
    registry: Registry,
    in_doubt: Callable[[], int],
    unreachable: Sized,
    owed_by_unreachable: Callable[[], tuple[tuple[str, int], ...]] = tuple,
) -> None:
    """Point the gauges at ``registry``'s counts, ``in_doubt()`` (branches owing an
    acknowledgement of a decision, a count kept on the loop), the ``unreachable`` endpoints and
    ``owed_by_unreachable()`` (the published (endpoint, branches) pairs of those endpoints)."""

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
    _OWED_BY_UNREACHABLE.source = owed_by_unreachable
