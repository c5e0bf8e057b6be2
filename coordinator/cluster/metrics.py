"""Prometheus metrics of coordinator replicas."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["FORWARDED", "FORWARD_DURATION", "TAKEOVERS"]

TAKEOVERS = Counter(
    "xatm_takeovers_total",
    "Transactions taken over from replicas whose lease expired, by status then",
    ["status"],
)
FORWARDED = Counter(
    "xatm_forwarded_calls_total",
    "Calls about another replica's transaction forwarded to it, by method and result",
    ["method", "result"],
)
FORWARD_DURATION = Histogram(
    "xatm_forward_duration_seconds",
    "Latency of one forwarded call, the owner's work included",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
