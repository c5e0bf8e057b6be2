"""Prometheus metric classes whose ``labels()`` is a dictionary lookup once a label set has been
seen; the participant's and the coordinator's metrics are made of these."""

from __future__ import annotations

from typing import Any

import prometheus_client

__all__ = ["Counter", "Gauge", "Histogram", "Unpublished"]


class _CachedChildren:
    """``labels()`` remembers the child of each label set it was given, keyed by the values as
    passed: prometheus_client's own lookup (checks, ``str()`` of every value, a lock) runs once
    per label set, not on every call of a hot path. Label sets are bounded enums here, so the
    cache is too. Children are never removed from these metrics."""

    _children: dict[Any, Any]

    def labels(self, *values: Any, **named: Any) -> Any:
        key = values or tuple(named.items())
        try:
            return self._children[key]
        except AttributeError:
            self._children = {}
        except KeyError:
            pass
        child = self._children[key] = super().labels(*values, **named)  # type: ignore[misc]
        return child


class Counter(_CachedChildren, prometheus_client.Counter):
    """``prometheus_client.Counter`` with cached label children."""


class Gauge(_CachedChildren, prometheus_client.Gauge):
    """``prometheus_client.Gauge`` with cached label children."""


class Histogram(_CachedChildren, prometheus_client.Histogram):
    """``prometheus_client.Histogram`` with cached label children."""


class Unpublished:
    """Metrics made unregistered (``registry=None``) and registered with the default registry by
    the first ``publish()``: the metrics of a part a process may not use (a log backend) appear on
    its ``/metrics`` only once it is used, not because a module was imported."""

    def __init__(self, *metrics: prometheus_client.metrics.MetricWrapperBase) -> None:
        self._metrics = metrics
        self._published = False

    def publish(self) -> None:
        """Register them (once; later calls do nothing)."""
        if self._published:
            return
        self._published = True
        for metric in self._metrics:
            prometheus_client.REGISTRY.register(metric)
