"""The etcd log's own Prometheus metrics: store latency (writes and reads), lease renewals,
compare-and-set conflicts."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

__all__ = ["ETCD_CAS_CONFLICTS", "ETCD_LEASE_RENEWALS", "ETCD_READ_DURATION", "ETCD_WRITE_DURATION"]

# An etcd write is a quorum round trip: a millisecond on loopback, seconds while a leader is elected.
WRITE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

ETCD_WRITE_DURATION = Histogram(
    "xatm_etcd_write_duration_seconds",
    "Latency of one etcd transaction of the log, retries while etcd cannot answer included",
    buckets=WRITE_BUCKETS,
)
ETCD_READ_DURATION = Histogram(
    "xatm_etcd_read_duration_seconds",
    "Latency of one paged range read of the log (start-up, takeover scans, listings, forwarding)",
    buckets=WRITE_BUCKETS,
)
ETCD_LEASE_RENEWALS = Counter(
    "xatm_etcd_lease_renewals_total", "Keep-alives of this replica's etcd lease", ["result"]
)
ETCD_CAS_CONFLICTS = Counter(
    "xatm_etcd_cas_conflicts_total",
    "etcd compare-and-set failures: a fenced write, or a takeover claim another replica won",
    ["op"],
)
