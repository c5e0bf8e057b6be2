"""Audited operator actions: each one forced to the log like a decision, the newest kept listable."""

from __future__ import annotations

from collections.abc import Iterable

from xatm.coordinator.journal import RecordFactory as R
from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.interface import TxLog
from xatm.participant.api.v1 import admin_pb2

__all__ = ["AuditTrail"]


class AuditTrail:
    """The newest ``kept`` audit records, oldest first; every checkpoint carries them along."""

    def __init__(self, log: TxLog, kept: int) -> None:
        self._log = log
        self.kept = kept
        self.records: list[admin_pb2.AuditRecord] = []

    def restore(self, records: Iterable[wal_pb2.WalRecord]) -> None:
        """Take the audit records among what the log replayed."""
        self.records = [r.audit for r in records if r.WhichOneof("body") == "audit"][-self.kept :]

    async def record(self, record: admin_pb2.AuditRecord) -> None:
        """Durably log an operator action (forced) and keep it listable; raises LogStopped."""
        # Listed before the write is awaited: a checkpoint queued meanwhile must carry it along.
        self.records.append(record)
        del self.records[: -self.kept]
        await self._log.append(R.audit(record), force=True)

    def as_records(self) -> list[wal_pb2.WalRecord]:
        """The kept records as log records, for a checkpoint."""
        return [R.audit(record) for record in self.records]
