"""Prometheus metrics of coordinator replicas."""

from __future__ import annotations

from prometheus_client import Counter

__all__ = ["TAKEOVERS"]

TAKEOVERS = Counter(
    "xatm_takeovers_total",
    "Transactions taken over from replicas whose lease expired, by status then",
    ["status"],
)
