"""Calls to participants: the prepare fan-out, synchronous rounds (savepoints, forget), and the
phase-two drivers that retry a branch until it acknowledges the decision.

Every call takes a slot of the fan-out bounds first (``FanOut``) and passes the endpoint's
backoff (``Reachability``). A phase-two driver never gives up once a decision is taken; it
ends when its branch owes nothing more, or when the log stops (no answer could be recorded).
A branch still owed after its first answer is logged once as a WARNING; after that the
periodic summary (``report_loop``) says which participants still owe how much.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Protocol

from xatm.coordinator import metrics
from xatm.coordinator import protocol as sm
from xatm.coordinator.engine.decisions import DecisionLog
from xatm.coordinator.engine.fanout import FanOut
from xatm.coordinator.engine.peers import Peers
from xatm.coordinator.engine.reachability import Reachability, Waiter, backoff_delay
from xatm.coordinator.journal import RecordFactory as R
from xatm.coordinator.txlog.interface import LogStopped
from xatm.participant import failpoints
from xatm.participant.xa import Phase, TxStatus, XaCode, Xid

__all__ = ["After", "Driver", "PhaseTwo", "Tuning"]

log = logging.getLogger("xatm.coordinator")

#: Carries out a status change's effects: (transaction, status before, effects).
After = Callable[[sm.Transaction, TxStatus, list[sm.Effect]], Awaitable[None]]
Spawn = Callable[[Coroutine[Any, Any, Any]], "asyncio.Task[Any]"]


class Tuning(Protocol):
    """The settings the drivers read (the coordinator's ``Settings`` has them); seconds and counts."""

    call_timeout: float
    retry_initial: float
    retry_max: float
    max_calls_in_flight: int
    max_calls_per_participant: int
    max_calls_per_transaction: int
    unreachable_summary_interval: float


class Driver(Waiter):
    """One branch's phase-two retry loop; ``wake`` cuts a backoff short (operator re-drive)."""

    def __init__(self) -> None:
        super().__init__()
        self.task: asyncio.Task[None] | None = None
        #: Where the branch is called (it follows a move between tries).
        self.endpoint = ""


class PhaseTwo:
    """Sends the calls the protocol's ``Send`` effects ask for."""

    def __init__(
        self, settings: Tuning, peers: Peers, decisions: DecisionLog, *, after: After, spawn: Spawn
    ) -> None:
        self.settings = settings
        self.peers = peers
        self._decisions = decisions
        self._after = after
        self._spawn = spawn
        self.fanout = FanOut(
            overall=settings.max_calls_in_flight,
            per_endpoint=settings.max_calls_per_participant,
            per_transaction=settings.max_calls_per_transaction,
        )
        self.reachability = Reachability(initial=settings.retry_initial, cap=settings.retry_max)
        #: Live drivers by (gtrid, bqual).
        self.drivers: dict[tuple[str, str], Driver] = {}
        #: Branches owing an acknowledgement of a decision, by gtrid, and how many in all (the
        #: in-doubt gauge). A driver's call may still be out after its branch was closed by an
        #: operator or by the participant's report: the branch is no longer in doubt then.
        self._owed: dict[str, set[str]] = {}
        self.in_doubt = 0
        #: Phase-two calls sent per transaction, so a failpoint can sit between two of them.
        self._calls_sent: dict[str, int] = {}
        #: When the prepare calls of a transaction whose prepares are still out were started
        #: (time.perf_counter()), for the phase's duration.
        self._preparing: dict[str, float] = {}

    # ----------------------------------------------------------------- one call

    async def call_once(
        self, tx: sm.Transaction, bqual: str, phase: Phase, savepoint_id: str = ""
    ) -> tuple[XaCode, str]:
        """One call to a branch's participant within the fan-out bounds; never raises but for
        cancellation (failures are XA codes)."""
        branch = tx.branches[bqual]
        async with self.fanout.slot(tx.gtrid, branch.endpoint):
            sm.begin_attempt(tx, bqual, phase)
            timeout = self.settings.call_timeout
            if phase == Phase.PREPARE:
                timeout = max(0.001, min(timeout, tx.deadline_mono - time.monotonic()))
            endpoint, sent = branch.endpoint, time.monotonic()
            code, reason = await self.peers.call(
                endpoint, phase, Xid(tx.gtrid, bqual), timeout=timeout, savepoint_id=savepoint_id
            )
        self.reachability.record(endpoint, code, reason, sent)
        metrics.BRANCH_RESULTS.labels(phase=str(phase), code=code.name).inc()
        return code, reason

    async def call_all(self, tx: sm.Transaction, effect: sm.Send) -> list[tuple[str, XaCode, str]]:
        """One synchronous round of calls (forget, savepoints), each answer logged."""
        results = await asyncio.gather(
            *(self.call_once(tx, b, effect.phase, effect.savepoint_id) for b in effect.bquals)
        )
        answers = []
        for bqual, (code, reason) in zip(effect.bquals, results, strict=True):
            branch = tx.branches[bqual]
            await self._decisions.append(R.branch_result(tx, branch, effect.phase, code, reason, time.time()))
            answers.append((bqual, code, reason))
        return answers

    # ----------------------------------------------------------------- fan-out

    def send(self, tx: sm.Transaction, effect: sm.Send) -> None:
        """Start the calls of a ``Send`` effect in the background (a running driver is woken)."""
        if effect.phase == Phase.PREPARE:
            self._spawn(self._prepare_all(tx, effect.bquals))
            return
        for bqual in effect.bquals:
            driver = self.drivers.get((tx.gtrid, bqual))
            if driver is not None and driver.task is not None and not driver.task.done():
                driver.wake()
                continue
            driver = self.drivers[(tx.gtrid, bqual)] = Driver()
            self._owe(tx.gtrid, bqual)
            driver.task = self._spawn(self._drive(tx, bqual, effect.phase, driver))

    def wake(self, tx: sm.Transaction, bqual: str) -> None:
        """Cut a branch driver's backoff short (it ends at once when nothing is owed any more)."""
        if not sm.is_pending(tx, bqual):
            self._settle(tx.gtrid, bqual)
        driver = self.drivers.get((tx.gtrid, bqual))
        if driver is not None:
            driver.wake()

    def forget(self, gtrid: str) -> None:
        """``gtrid`` ended: its per-transaction bookkeeping goes."""
        self._calls_sent.pop(gtrid, None)
        self._preparing.pop(gtrid, None)
        self.in_doubt -= len(self._owed.pop(gtrid, ()))

    def _owe(self, gtrid: str, bqual: str) -> None:
        owed = self._owed.setdefault(gtrid, set())
        if bqual not in owed:
            owed.add(bqual)
            self.in_doubt += 1

    def _settle(self, gtrid: str, bqual: str) -> None:
        owed = self._owed.get(gtrid)
        if owed is not None and bqual in owed:
            owed.discard(bqual)
            self.in_doubt -= 1
            if not owed:
                del self._owed[gtrid]

    async def _prepare_all(self, tx: sm.Transaction, bquals: tuple[str, ...]) -> None:
        """The prepare calls of ``tx`` (``bquals``: two or more, as the protocol sends them): this
        task calls the first branch, a task of its own each of the others (no gather: the last
        answer, whichever it is, carries on to the decision)."""
        await failpoints.ahit("coordinator.before_prepare")
        self._preparing[tx.gtrid] = time.perf_counter()
        first, *others = bquals
        for bqual in others:
            self._spawn(self._prepare_one(tx, bqual))
        await self._prepare_one(tx, first)

    async def _prepare_one(self, tx: sm.Transaction, bqual: str) -> None:
        code, reason = await self.call_once(tx, bqual, Phase.PREPARE)
        old = tx.status
        effects = sm.prepare_result(tx, bqual, code, reason)
        if not tx.awaiting_prepare:
            started = self._preparing.pop(tx.gtrid, None)
            if started is not None:
                metrics.PHASE_DURATION.labels(phase="prepare").observe(time.perf_counter() - started)
        await self._decisions.vote(tx, bqual, code, reason, preparing=old == TxStatus.PREPARING)
        await self._after(tx, old, effects)

    # ----------------------------------------------------------------- phase two

    async def _drive(self, tx: sm.Transaction, bqual: str, phase: Phase, driver: Driver) -> None:
        """Phase two for one branch: call until acknowledged, backing off between tries (the
        endpoint's backoff when its participant is unreachable, the branch's own otherwise)."""
        if phase == Phase.ROLLBACK:
            await failpoints.ahit("coordinator.before_rollback")
        started = time.perf_counter()
        branch = tx.branches[bqual]
        tries = 0
        try:
            while True:
                endpoint = driver.endpoint = branch.endpoint  # a move points the next try elsewhere
                await self.reachability.turn(endpoint, driver)
                driver.settle()
                try:
                    pending = await self._step(tx, bqual, phase, warn=tries == 0)
                except LogStopped:
                    raise  # no answer can be recorded any more; the stop is reported once
                except Exception as exc:
                    log.error("%s branch %s: %s failed: %r", tx.gtrid, bqual, phase, exc)
                    pending = True
                finally:
                    self.reachability.release(endpoint, driver)
                if not pending:
                    return
                tries += 1
                metrics.RETRIES.labels(phase=str(phase)).inc()
                delay = backoff_delay(tries, self.settings.retry_initial, self.settings.retry_max)
                probe = self.reachability.retry_at(branch.endpoint)
                wait = max(delay, probe - time.monotonic()) if probe is not None else delay
                branch.next_retry = time.time() + wait
                await driver.sleep(delay)
        finally:
            branch.next_retry = None
            self.reachability.leave(driver)
            self.drivers.pop((tx.gtrid, bqual), None)
            self._settle(tx.gtrid, bqual)
            metrics.PHASE_DURATION.labels(phase=str(phase)).observe(time.perf_counter() - started)

    async def _step(self, tx: sm.Transaction, bqual: str, phase: Phase, *, warn: bool) -> bool:
        """One call; True while the branch still owes an acknowledgement."""
        if not sm.is_pending(tx, bqual):
            return False
        if self._calls_sent.get(tx.gtrid):
            await failpoints.ahit("coordinator.between_phase_two")
        self._calls_sent[tx.gtrid] = self._calls_sent.get(tx.gtrid, 0) + 1
        code, reason = await self.call_once(tx, bqual, phase)
        if not sm.is_pending(tx, bqual):
            # Closed while the call was out (its participant reported, or an operator resolved it):
            # the late answer is logged as one that changed nothing.
            await self._decisions.append(R.late_result(tx, bqual, phase, code, reason, time.time()))
            return False
        old = tx.status
        effects = sm.phase_two_result(tx, bqual, phase, code, reason)
        await self._decisions.append(
            R.branch_result(tx, tx.branches[bqual], phase, code, reason, time.time())
        )
        await self._after(tx, old, effects)
        pending = sm.is_pending(tx, bqual)
        if pending:
            # Once per branch: a participant gone for good must not fill the log; the periodic
            # summary keeps saying what is still owed.
            log.log(
                logging.WARNING if warn else logging.DEBUG,
                "%s branch %s: %s answered %s %s; will retry",
                tx.gtrid,
                bqual,
                phase,
                code.name,
                reason,
            )
        return pending

    # ----------------------------------------------------------------- reporting

    def summary(self) -> str | None:
        """One line on the branches still owed by participants that do not answer, or None."""
        down = self.reachability.down
        if not down:
            return None
        owed = Counter(d.endpoint for d in self.drivers.values() if d.endpoint in down)
        now = time.monotonic()
        worst = sorted(down.items(), key=lambda item: -owed[item[0]])[:5]
        parts = [
            f"{endpoint} ({owed[endpoint]} branches, failing for {now - state.since:.0f} s: {state.reason})"
            for endpoint, state in worst
        ]
        more = f" and {len(down) - len(worst)} more" if len(down) > len(worst) else ""
        return (
            f"{sum(owed.values())} branches wait for {len(down)} participant(s) that do not answer: "
            + "; ".join(parts)
            + more
        )

    async def report_loop(self) -> None:
        """Every ``unreachable_summary_interval`` seconds, one WARNING while participants owe."""
        while True:
            await asyncio.sleep(self.settings.unreachable_summary_interval)
            self.reachability.keep_only({d.endpoint for d in self.drivers.values()})
            line = self.summary()
            if line is not None:
                log.warning("%s", line)
