"""The etcd log's own Prometheus metrics: store latency (writes and reads), lease renewals,
compare-and-set conflicts."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from xatm.participant.runtime.metric_types import Unpublished

__all__ = [
    "ETCD_CAS_CONFLICTS",
    "ETCD_LEASE_RENEWALS",
    "ETCD_METRICS",
    "ETCD_READ_DURATION",
    "ETCD_WRITE_DURATION",
]

# An etcd write is a quorum round trip: a millisecond on loopback, seconds while a leader is elected.
WRITE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

ETCD_WRITE_DURATION = Histogram(
    "xatm_etcd_write_duration_seconds",
    "Latency of one etcd transaction of the log, retries while etcd cannot answer included",
    buckets=WRITE_BUCKETS,
    registry=None,
)
ETCD_READ_DURATION = Histogram(
    "xatm_etcd_read_duration_seconds",
    "Latency of one paged range read of the log (start-up, takeover scans, listings, forwarding)",
    buckets=WRITE_BUCKETS,
    registry=None,
)
ETCD_LEASE_RENEWALS = Counter(
    "xatm_etcd_lease_renewals_total", "Keep-alives of this replica's etcd lease", ["result"], registry=None
)
ETCD_CAS_CONFLICTS = Counter(
    "xatm_etcd_cas_conflicts_total",
    "etcd compare-and-set failures: a fenced write, or a takeover claim another replica won",
    ["op"],
    registry=None,
)
#: Published by the first etcd log opened in the process (a coordinator on the file log has none).
ETCD_METRICS = Unpublished(ETCD_WRITE_DURATION, ETCD_READ_DURATION, ETCD_LEASE_RENEWALS, ETCD_CAS_CONFLICTS)
