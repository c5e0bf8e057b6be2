"""Prometheus metrics of a participant (stub or agent), as docs/contract.md lists (``labels()``
returns a cached child: a dictionary lookup per call)."""

from __future__ import annotations

from xatm.participant.runtime.metric_types import Counter, Histogram

__all__ = ["CALLS", "CALL_DURATION"]


_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

CALLS = Counter("xatm_participant_calls_total", "XA verbs served, by answer", ["verb", "code"])
CALL_DURATION = Histogram(
    "xatm_participant_call_duration_seconds", "Time to serve an XA verb", ["verb"], buckets=_BUCKETS
)
