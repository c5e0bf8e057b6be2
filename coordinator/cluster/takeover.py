"""Takeover: a replica finishes the transactions of replicas whose etcd lease expired.

Every ``interval`` seconds the replica lists the replicas that logged transactions but hold no
lease any more, claims each of their transactions (a compare-and-set in etcd: one claimant
wins, and the old owner's later writes on it fail) and hands the claimed records to its engine,
which finishes them as start-up recovery does. A replica that died is therefore replaced within
its lease TTL plus one ``interval``.
"""

from __future__ import annotations

import asyncio
import logging

from xatm.coordinator.cluster.metrics import TAKEOVERS
from xatm.coordinator.engine.core import Engine
from xatm.coordinator.txlog.etcd import EtcdLog
from xatm.coordinator.txlog.etcd.client import is_outage
from xatm.coordinator.txlog.interface import LogStopped

__all__ = ["Takeover"]

log = logging.getLogger("xatm.coordinator.cluster")


class Takeover:
    """Claims and finishes orphaned transactions for ``engine``, whose log is ``txlog``."""

    def __init__(self, engine: Engine, txlog: EtcdLog, interval: float):
        self.engine = engine
        self.txlog = txlog
        self.interval = interval
        #: Transactions this replica took over since it started.
        self.taken = 0

    async def scan_once(self) -> list[str]:
        """One pass: claim every orphaned transaction and hand it to the engine.

        Returns the gtrids taken over. Raises LogStopped once this replica's log stopped, the
        etcd client's error when etcd cannot answer.
        """
        taken: list[str] = []
        for dead, gtrids in (await self.txlog.orphans()).items():
            for gtrid in gtrids:
                taken += await self.claim(dead, gtrid)
        return taken

    async def claim(self, dead: str, gtrid: str) -> list[str]:
        """Claim ``gtrid`` from replica ``dead`` (whose lease expired) and hand it to the engine;
        the gtrids adopted ([] when another replica was quicker or ``dead`` came back).

        Raises LogStopped once this replica's log stopped, the etcd client's error when etcd
        cannot answer.
        """
        records = await self.txlog.claim(dead, gtrid)
        if records is None:
            return []
        adopted = await self.engine.adopt(records)
        for each in adopted:
            tx = self.engine.get(each)
            TAKEOVERS.labels(status=tx.status.label).inc()
            log.warning("took over %s (%s) from replica %s, whose lease expired", each, tx.status.label, dead)
        self.taken += len(adopted)
        return adopted

    async def run(self) -> None:
        """Scan every ``interval`` seconds until cancelled or the log stops."""
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.scan_once()
            except LogStopped:
                return  # this replica is fenced; the stop is reported by the coordinator
            except Exception as err:
                if not is_outage(err):
                    log.exception("takeover scan failed; will try again")
