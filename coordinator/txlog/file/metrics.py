"""The write-ahead log's own Prometheus metrics: the WAL package owns what it reports."""

from __future__ import annotations

from xatm.participant.runtime.metric_types import Counter, Histogram, Unpublished

__all__ = ["WAL_FSYNC_DURATION", "WAL_METRICS", "WAL_RECORDS", "WAL_TORN_TAIL"]

# An fsync takes from a fraction of a millisecond (battery-backed cache) to seconds (a stalled disk).
FSYNC_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

WAL_FSYNC_DURATION = Histogram(
    "xatm_wal_fsync_duration_seconds", "WAL fsync latency", buckets=FSYNC_BUCKETS, registry=None
)
WAL_RECORDS = Counter(
    "xatm_wal_records_total", "Records appended to the transaction log", ["type"], registry=None
)
WAL_TORN_TAIL = Counter(
    "xatm_wal_torn_tail_total", "Torn or corrupt final WAL records cut off at start-up", registry=None
)
#: Published by the first write-ahead log opened in the process.
WAL_METRICS = Unpublished(WAL_FSYNC_DURATION, WAL_RECORDS, WAL_TORN_TAIL)
