"""The coordinator's side of in-doubt resolution: scan participants for branches nobody drives.

Transactions the coordinator knows are driven by the engine (retries never stop once decided).
What a scan finds is the rest: prepared branches of this node's gtrids that the coordinator has
no record of — it crashed before anything about them reached its log. Presumed abort says they
roll back, but only after two sightings separated by a safety interval, so a branch whose
transaction is still being set up elsewhere in time is never hit by a stale scan.
XIDs with another formatID or another node's gtrid are never touched.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Protocol

from xatm.coordinator import metrics
from xatm.coordinator import protocol as sm
from xatm.coordinator.engine.peers import PeerError, Peers
from xatm.participant.errors import UnavailableError, XatmError
from xatm.participant.xa import FORMAT_ID, Decision, Phase, XaCode, Xid, node_of

__all__ = ["RecoveryHost", "RecoveryScanner"]

log = logging.getLogger("xatm.recovery")


class RecoveryHost(Protocol):
    """What the scanner needs of the engine (which implements it), so neither imports the other."""

    node_id: str

    @property
    def endpoints(self) -> set[str]: ...

    def query_outcome(self, xid: Xid) -> Decision: ...

    def known(self, gtrid: str) -> sm.Transaction | None: ...

    async def follow(self, xid: Xid, rm_id: str, endpoint: str) -> bool: ...

    async def log_foreign_result(
        self, xid: Xid, endpoint: str, phase: Phase, code: XaCode, reason: str
    ) -> None: ...


class RecoveryScanner:
    def __init__(
        self, engine: RecoveryHost, peers: Peers, *, interval: float, safety: float, call_timeout: float
    ):
        self.engine = engine
        self.peers = peers
        self.interval = interval
        self.safety = safety
        self.call_timeout = call_timeout
        #: Orphan candidates: xid -> (endpoint, first seen on time.monotonic()).
        self._seen: dict[Xid, tuple[str, float]] = {}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.scan_once()
            except Exception:
                metrics.RECOVERY_ACTIONS.labels(action="failed").inc()
                log.exception("recovery scan failed; will try again")

    async def scan_once(self, now: float | None = None) -> dict[str, int]:
        """One scan of every known endpoint; ``now`` is a time.monotonic() reading (default: now).

        The safety interval between two sightings is measured on the monotonic clock, so a
        stepped wall clock can neither hasten an orphan rollback nor hold one off.
        Returns counts by action: orphan_rollback, reapplied, candidates.
        """
        now = time.monotonic() if now is None else now
        counts = {"orphan_rollback": 0, "reapplied": 0, "candidates": 0}
        still_seen: dict[Xid, tuple[str, float]] = {}
        for endpoint in sorted(self.engine.endpoints):
            try:
                xids, rm_id = await self.peers.recover(endpoint, FORMAT_ID, timeout=self.call_timeout)
            except PeerError as err:
                # This endpoint is skipped until the next scan; the others are still scanned.
                if err.transport:
                    log.debug("recover scan: %s unreachable (%s)", endpoint, err.reason)
                else:
                    log.warning("recover scan: %s answered badly, skipped: %s", endpoint, err.reason)
                continue
            for xid in xids:
                if xid.format_id != FORMAT_ID or node_of(xid.gtrid) != self.engine.node_id:
                    continue
                try:
                    await self._resolve(endpoint, rm_id, xid, now, counts, still_seen)
                except UnavailableError:
                    raise  # the engine takes nothing now (its log stopped): the scan ends here
                except XatmError as err:
                    # This branch stays in doubt (its transaction cannot be read, for one);
                    # the others are still resolved.
                    metrics.RECOVERY_ACTIONS.labels(action="failed").inc()
                    log.warning("recover scan: %s at %s skipped: %s", xid, endpoint, err.message)
        self._seen = still_seen
        return counts

    async def _resolve(
        self,
        endpoint: str,
        rm_id: str,
        xid: Xid,
        now: float,
        counts: dict[str, int],
        still_seen: dict[Xid, tuple[str, float]],
    ) -> None:
        """Act on one in-doubt branch ``xid`` an RM at ``endpoint`` reported, counting what was done."""
        decision = self.engine.query_outcome(xid)
        if decision == Decision.PENDING:
            return
        tx = self.engine.known(xid.gtrid)
        if tx is not None and not tx.status.is_final:
            # The engine drives it; found at another endpoint than it calls, it follows.
            await self.engine.follow(xid, rm_id, endpoint)
            return
        if tx is not None:
            # Final here but still prepared there (a reply lost before an RM restart).
            again = "recommit" if decision == Decision.COMMIT else "rerollback"
            await self._apply(endpoint, xid, decision, again)
            counts["reapplied"] += 1
            return
        first = self._seen.get(xid, (endpoint, now))[1]
        if now - first >= self.safety:
            await self._apply(endpoint, xid, Decision.ROLLBACK, "orphan_rollback")
            counts["orphan_rollback"] += 1
        else:
            still_seen[xid] = (endpoint, first)
            counts["candidates"] += 1

    async def _apply(self, endpoint: str, xid: Xid, decision: Decision, action: str) -> None:
        phase = Phase.COMMIT if decision == Decision.COMMIT else Phase.ROLLBACK
        code, reason = await self.peers.call(endpoint, phase, xid, timeout=self.call_timeout)
        metrics.BRANCH_RESULTS.labels(phase=str(phase), code=code.name).inc()
        await self.engine.log_foreign_result(xid, endpoint, phase, code, reason)
        if code in (XaCode.XA_OK, XaCode.XAER_NOTA) or code.is_rollback:
            metrics.RECOVERY_ACTIONS.labels(
                action="orphan_rollback" if action == "orphan_rollback" else "recommit"
            ).inc()
            log.warning("recovery: %s %s at %s: %s", action, xid, endpoint, code.name)
        else:
            metrics.RECOVERY_ACTIONS.labels(action="failed").inc()
            log.warning("recovery: %s %s at %s failed: %s %s", action, xid, endpoint, code.name, reason)
