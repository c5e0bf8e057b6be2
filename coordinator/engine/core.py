"""The coordinator engine: carries out the state machine's effects with real I/O.

Everything runs on one asyncio loop. State transitions are synchronous calls into the pure
state machine, so operations on one gtrid are serialised by construction while different
gtrids never wait on each other; only participant calls and the forced decision write await.
Phase-two calls are tenacity retry loops that never give up once a decision is taken.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    retry_if_not_exception_type,
    retry_if_result,
    wait_exponential,
    wait_random,
)

from xatm.coordinator import metrics
from xatm.coordinator import protocol as sm
from xatm.coordinator.engine.peers import Peers
from xatm.coordinator.engine.recovery import RecoveryScanner
from xatm.coordinator.journal import RecordFactory as R
from xatm.coordinator.settings import Settings
from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.interface import LogStopped, TxLog
from xatm.participant import failpoints
from xatm.participant.api.v1 import admin_pb2
from xatm.participant.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    UnavailableError,
    XatmError,
)
from xatm.participant.xa import (
    FORMAT_ID,
    Decision,
    Phase,
    TxOutcome,
    TxStatus,
    XaCode,
    Xid,
    new_gtrid,
    node_of,
    validate_bqual,
    validate_gtrid,
    validate_savepoint_id,
)

T = TypeVar("T")

__all__ = ["Engine", "Result"]

log = logging.getLogger("xatm.coordinator")

#: Completed without a heuristic: nothing is called on their branches any more (a move does not
#: concern them), they age out as history, and they are not "active".
_CLOSED = (TxStatus.COMMITTED, TxStatus.ROLLEDBACK)

_OUTCOME_LABEL = {
    TxStatus.COMMITTED: "committed",
    TxStatus.ROLLEDBACK: "rolledback",
    TxStatus.HEURISTICALLY_COMPLETED: "heuristic",
}


@dataclass(frozen=True)
class Result:
    """Answer to a commit or rollback request."""

    tx: sm.Transaction
    outcome: TxOutcome


class _Driver:
    """One branch's phase-two retry loop; ``wake`` cuts a backoff short (operator re-drive)."""

    def __init__(self) -> None:
        self.wake = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def sleep(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wake.wait(), seconds)
        self.wake.clear()


class Engine:
    AUDIT_KEPT = 10_000

    def __init__(self, settings: Settings, txlog: TxLog, node_id: str, peers: Peers | None = None):
        self.settings = settings
        self.node_id = node_id
        self.log = txlog
        self.peers = peers or Peers(max_message_bytes=settings.max_message_bytes)
        self._txs: dict[str, sm.Transaction] = {}
        self._done: dict[str, asyncio.Event] = {}
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._drivers: dict[tuple[str, str], _Driver] = {}
        #: Phase-two calls sent per transaction, so a failpoint can sit between two of them.
        self._phase_two_calls: dict[str, int] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        #: Why the log stopped, once it has (see ``fence``); every verb answers with it after.
        self.log_stopped: LogStopped | None = None
        self._sp_counter = 0
        #: Transactions not yet final (begin refuses past max_open_transactions).
        self._open = 0
        #: Where each resource manager ever enlisted (recovered from the log too) is served now;
        #: a participant that re-registers elsewhere replaces its entry.
        self._rm_endpoints: dict[str, str] = {}
        #: Audited operator actions, oldest first (the newest AUDIT_KEPT survive checkpoints).
        self.audit_log: list[admin_pb2.AuditRecord] = []
        #: Transactions whose commit decision is in the log's queue but not yet applied here.
        self._deciding: set[str] = set()
        self._register_gauges()
        self.scanner = RecoveryScanner(
            self,
            self.peers,
            interval=settings.recovery_interval,
            safety=settings.recovery_interval,
            call_timeout=settings.call_timeout,
        )

    # ----------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Open the log, rebuild transactions and resume whatever was in flight."""
        from xatm.coordinator.journal import replay

        records = await self.log.open()
        self._txs = replay(records)
        # Unfinished transactions last: their endpoints are the newest (a move updates only them).
        ordered = sorted(self._txs.values(), key=lambda tx: tx.status not in _CLOSED)
        self._rm_endpoints = {b.rm_id: b.endpoint for tx in ordered for b in tx.branches.values()}
        self.audit_log = [r.audit for r in records if r.WhichOneof("body") == "audit"][-self.AUDIT_KEPT :]
        self._open = sum(1 for tx in self._txs.values() if not tx.status.is_final)
        await self._resume(list(self._txs.values()))
        self._spawn(self._checkpoint_loop())
        self._spawn(self.scanner.run())

    async def adopt(self, records: Iterable[wal_pb2.WalRecord]) -> list[str]:
        """Take over transactions another coordinator logged (a replica whose lease expired):
        rebuild them from ``records`` (their log records in order) and finish them as start-up
        recovery does: re-drive Committing and Rollingback, presume abort for the undecided.

        Returns the gtrids adopted; a transaction already known here is left as it is.
        Raises LogStopped once the log stopped.
        """
        from xatm.coordinator.journal import replay

        self._refuse_if_fenced()
        txs = [tx for gtrid, tx in replay(records).items() if gtrid not in self._txs]
        for tx in txs:
            self._txs[tx.gtrid] = tx
            if not tx.status.is_final:
                self._open += 1
                self._rm_endpoints.update({b.rm_id: b.endpoint for b in tx.branches.values()})
        await self._resume(txs)
        return [tx.gtrid for tx in txs]

    async def _resume(self, txs: list[sm.Transaction]) -> None:
        """Finish ``txs`` rebuilt from a log: recovery actions for the unfinished ones."""
        restarted = time.monotonic()
        for tx in txs:
            # The log holds wall-clock times only, and a monotonic time does not survive a
            # restart: deadlines and retention of what the log rebuilt count from now.
            tx.begun_mono = restarted
            tx.completed_mono = restarted if tx.completed_at is not None else None
            self._done[tx.gtrid] = asyncio.Event()
            if tx.status.is_final:
                self._done[tx.gtrid].set()
                continue
            action = {
                TxStatus.COMMITTING: "recommit",
                TxStatus.ROLLINGBACK: "rerollback",
            }.get(tx.status, "presumed_abort")
            metrics.RECOVERY_ACTIONS.labels(action=action).inc()
            log.info("recovery: %s %s from %s", action, tx.gtrid, tx.status.label)
            old = tx.status
            effects = sm.recover(tx)
            await self._after(tx, old, effects)

    async def stop(self) -> None:
        self._closing = True
        self._halt()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.peers.close()
        await self.log.close()

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def endpoints(self) -> set[str]:
        """Where the participants are served now (host:port): what the recovery scanner asks."""
        return set(self._rm_endpoints.values())

    def fence(self, stopped: LogStopped) -> None:
        """Stop taking decisions because the log stopped: nothing more can be made durable.

        Timers, phase-two drivers, checkpoints and recovery scans end; verbs answer UNAVAILABLE
        with ``stopped``'s message; commit requests waiting for a decision are answered at once.
        What is in memory stays readable. Only a restart (replaying the log) resumes work.
        """
        if self.log_stopped is not None:
            return
        self.log_stopped = stopped
        for waiting in self._done.values():  # commit requests waiting for an end answer now
            waiting.set()
        self._halt()

    def _halt(self) -> None:
        """Cancel every timer and background task (shutdown, or a stopped log)."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        for task in list(self._tasks):
            task.cancel()

    def _refuse_if_fenced(self) -> None:
        if self.log_stopped is not None:
            raise LogStopped(self.log_stopped.reason)

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        exc = None if task.cancelled() else task.exception()
        # A task ended by the stopped log is not reported on its own: the stop is, once.
        if exc is not None and not isinstance(exc, LogStopped):
            log.error("background task %s failed", task.get_name(), exc_info=exc)

    # ----------------------------------------------------------------- queries

    def get(self, gtrid: str) -> sm.Transaction:
        validate_gtrid(gtrid)
        tx = self._txs.get(gtrid)
        if tx is None:
            raise NotFoundError(f"unknown transaction {gtrid}")
        return tx

    def transactions(
        self, statuses: Iterable[TxStatus] = (), begun_after: float | None = None
    ) -> list[sm.Transaction]:
        wanted = set(statuses)
        return [
            tx
            for tx in self._txs.values()
            if (not wanted or tx.status in wanted) and (begun_after is None or tx.begun_at >= begun_after)
        ]

    def known(self, gtrid: str) -> sm.Transaction | None:
        return self._txs.get(gtrid)

    async def log_foreign_result(
        self, xid: Xid, endpoint: str, phase: Phase, code: XaCode, reason: str
    ) -> None:
        """Record what recovery did to a branch the coordinator holds no transaction for."""
        branch = sm.Branch(
            xid.bqual, "", endpoint, sm.B.ROLLEDBACK if phase == Phase.ROLLBACK else sm.B.COMMITTED
        )
        tx = sm.Transaction(gtrid=xid.gtrid, timeout_ms=0)
        await self._append(R.branch_result(tx, branch, phase, code, reason, time.time()))

    def _check_own(self, xid: Xid) -> None:
        """INVALID_ARGUMENT unless ``xid`` is well-formed and this coordinator's (format, node)."""
        validate_gtrid(xid.gtrid)
        validate_bqual(xid.bqual)
        if xid.format_id != FORMAT_ID or node_of(xid.gtrid) != self.node_id:
            raise InvalidArgumentError(f"xid {xid} was not begun by this coordinator (node {self.node_id})",
            )

    def query_outcome(self, xid: Xid) -> Decision:
        """What a participant holding an in-doubt branch must do (presumed abort)."""
        self._refuse_if_fenced()
        self._check_own(xid)
        tx = self._txs.get(xid.gtrid)
        if tx is None or xid.bqual not in tx.branches:
            return Decision.ROLLBACK
        if tx.decision is not None:
            return tx.decision
        return Decision.PENDING

    # ----------------------------------------------------------------- initiator verbs

    async def begin(self, timeout_ms: int = 0) -> sm.Transaction:
        self._refuse_if_fenced()
        if self._closing:
            raise UnavailableError("coordinator is shutting down")
        if self._open >= self.settings.max_open_transactions:
            raise UnavailableError(f"{self._open} transactions are open (max_open_transactions); retry later",
            )
        cap = int(self.settings.max_timeout * 1000)
        timeout_ms = min(timeout_ms or int(self.settings.default_timeout * 1000), cap)
        now = time.time()
        tx = sm.Transaction(
            gtrid=new_gtrid(self.node_id), timeout_ms=timeout_ms, begun_at=now, begun_mono=time.monotonic()
        )
        self._txs[tx.gtrid] = tx
        self._open += 1
        self._done[tx.gtrid] = asyncio.Event()
        loop = asyncio.get_running_loop()
        self._timers[tx.gtrid] = loop.call_later(timeout_ms / 1000, self._on_timeout, tx.gtrid)
        metrics.TRANSACTIONS_STARTED.inc()
        await self._append(R.begin(tx, now))
        return tx

    async def enlist(self, gtrid: str, bqual: str, rm_id: str, endpoint: str) -> XaCode:
        validate_bqual(bqual)
        _check_identity("enlist", rm_id, endpoint)
        self._refuse_if_fenced()
        tx = self.get(gtrid)
        code = sm.enlist(tx, bqual, rm_id, endpoint)
        if code == XaCode.XA_OK:
            self._rm_endpoints[rm_id] = endpoint
            await self._append(R.enlist(tx, tx.branches[bqual], time.time()))
        return code

    # ----------------------------------------------------------------- participants that move or report

    async def register_participant(self, rm_id: str, endpoint: str) -> int:
        """A participant serving ``rm_id`` (re)started at ``endpoint`` (host:port).

        Every branch of that RM that may still be called (its transaction is not Committed or
        Rolledback) moves there, durably, and one owed a phase-two call gets it at once.
        Returns how many branches moved; raises INVALID_ARGUMENT for a malformed identity.
        """
        _check_identity("register", rm_id, endpoint)
        self._refuse_if_fenced()
        self._rm_endpoints[rm_id] = endpoint
        # Together, so their forced records share one group commit.
        moves = [
            self._move(tx, b.bqual, rm_id, endpoint)
            for tx in list(self._txs.values())
            for b in tx.branches.values()
            if b.rm_id == rm_id
        ]
        return sum(await asyncio.gather(*moves))

    async def participant_query(self, xid: Xid, rm_id: str, endpoint: str) -> Decision:
        """``query_outcome`` for a participant that may say who it is and where it is served now:
        a branch of that RM held at another endpoint moves there first."""
        decision = self.query_outcome(xid)
        try:
            _check_identity("an outcome query", rm_id, endpoint)
        except XatmError as err:
            # Saying who asks is optional; a malformed identity must not withhold the outcome.
            if rm_id or endpoint:
                log.warning("outcome query for %s: %s; the branch stays where it is", xid, err.message)
            return decision
        await self.follow(xid, rm_id, endpoint)
        return decision

    async def follow(self, xid: Xid, rm_id: str, endpoint: str) -> bool:
        """``xid`` is held by resource manager ``rm_id`` served at ``endpoint`` (it said so, or a
        recovery scan found it there): if that is the branch's own RM, the branch moves there.
        True when it moved."""
        tx = self._txs.get(xid.gtrid)
        branch = tx.branches.get(xid.bqual) if tx is not None else None
        if tx is None or branch is None or branch.rm_id != rm_id:
            return False
        self._rm_endpoints[rm_id] = endpoint
        return await self._move(tx, xid.bqual, rm_id, endpoint)

    async def _move(self, tx: sm.Transaction, bqual: str, rm_id: str, endpoint: str) -> bool:
        """Point one branch at ``endpoint``; True when it moved (then the move is on disk)."""
        branch = tx.branches.get(bqual)
        if branch is None:  # left the transaction meanwhile (rollback to a savepoint)
            return False
        was = branch.endpoint
        effects = sm.branch_moved(tx, bqual, rm_id, endpoint)
        if branch.endpoint == was:
            return False
        log.warning(
            "%s branch %s: resource manager %s moved from %s to %s", tx.gtrid, bqual, rm_id, was, endpoint
        )
        # Forced: the participant is told its move is known only once a restart cannot lose it.
        await self.log.append(R.endpoint(tx, branch, time.time()), force=True)
        await self._after(tx, tx.status, effects)
        return True

    async def report_outcome(
        self, xid: Xid, rm_id: str, phase: Phase, code: XaCode, reason: str
    ) -> sm.Transaction:
        """A participant applied the decision on its own (after asking for it): take the RM's
        answer as the branch's phase-two result, log it, and finish the transaction if it was the
        last one owed. Raises NOT_FOUND (unknown gtrid or bqual), INVALID_ARGUMENT (not this
        coordinator's xid, or the branch is another RM's), FAILED_PRECONDITION (a phase the
        decision does not owe)."""
        self._check_own(xid)
        self._refuse_if_fenced()
        tx = self.get(xid.gtrid)
        owed = xid.bqual in sm.pending_branches(tx)
        old = tx.status
        reason = (f"applied by {rm_id} after asking the outcome" + (f": {reason}" if reason else ""))[:500]
        effects = sm.outcome_reported(tx, xid.bqual, rm_id, phase, code, reason)
        if owed:
            metrics.BRANCH_RESULTS.labels(phase=str(phase), code=code.name).inc()
            await self._append(R.branch_result(tx, tx.branches[xid.bqual], phase, code, reason, time.time()))
            await self._after(tx, old, effects)
            self._wake(tx.gtrid, xid.bqual)
        return tx

    async def resolve_branch(self, gtrid: str, bqual: str, committed: bool, reason: str) -> Result:
        """An operator's heuristic close of a branch whose RM is gone for good (see
        ``statemachine.resolve_branch`` for the rule); answered like a force commit/rollback."""
        validate_bqual(bqual)
        self._refuse_if_fenced()
        tx = self.get(gtrid)
        old = tx.status
        effects = sm.resolve_branch(tx, bqual, committed, reason)
        branch = tx.branches[bqual]
        assert branch.last_phase is not None and branch.last_code is not None
        await self._append(
            R.branch_result(tx, branch, branch.last_phase, branch.last_code, reason, time.time())
        )
        await self._after(tx, old, effects)
        self._wake(gtrid, bqual)
        return Result(tx, sm.outcome(tx, Phase.COMMIT if tx.decision is Decision.COMMIT else Phase.ROLLBACK))

    def _wake(self, gtrid: str, bqual: str) -> None:
        """Cut a branch driver's backoff short (it ends at once when nothing is owed any more)."""
        driver = self._drivers.get((gtrid, bqual))
        if driver is not None:
            driver.wake.set()

    async def mark_rollback_only(self, gtrid: str, reason: str) -> sm.Transaction:
        self._refuse_if_fenced()
        tx = self.get(gtrid)
        old = tx.status
        effects = sm.mark_rollback_only(tx, reason[:500])
        await self._after(tx, old, effects)
        if tx.status != old:  # the first mark only: its reason is the one kept
            log.info("%s marked rollback-only: %s", tx.gtrid, tx.rollback_reason)
        return tx

    async def commit(self, gtrid: str) -> Result:
        return await self._complete(gtrid, sm.request_commit, Phase.COMMIT)

    async def rollback(self, gtrid: str, reason: str = "") -> Result:
        return await self._complete(gtrid, lambda tx: sm.request_rollback(tx, reason), Phase.ROLLBACK)

    async def force_commit(self, gtrid: str) -> Result:
        return await self._complete(gtrid, sm.force_commit, Phase.COMMIT)

    async def _complete(
        self, gtrid: str, event: Callable[[sm.Transaction], list[sm.Effect]], answer: Phase
    ) -> Result:
        """Apply a commit or rollback request, wait (bounded) for its end, answer in tx.h terms.

        Re-driving branches already retrying needs nothing extra: ``_send`` wakes their drivers.
        Raises ``LogStopped`` when the log stopped before the transaction had a decision:
        nothing may be claimed about it then (a restart presumes abort unless the decision
        reached the disk after all).
        """
        self._refuse_if_fenced()
        tx = self.get(gtrid)
        old = tx.status
        effects = event(tx)
        await self._after(tx, old, effects)
        await self._wait(tx)
        if not sm.outcome_known(tx):
            self._refuse_if_fenced()
        return Result(tx, sm.outcome(tx, answer))

    async def forget(self, gtrid: str) -> None:
        self._refuse_if_fenced()
        tx = self.get(gtrid)
        for effect in sm.forget(tx):
            assert isinstance(effect, sm.Send)
            await self._call_all(tx, effect)
        await self._append(R.forget(tx, time.time()))
        self._drop(tx.gtrid)

    async def create_savepoint(self, gtrid: str) -> str:
        self._refuse_if_fenced()
        tx = self.get(gtrid)
        self._sp_counter += 1
        savepoint_id = f"sp{self._sp_counter}.{time.time_ns() % 10**9:x}"
        effects = sm.create_savepoint(tx, savepoint_id)
        await self._run_savepoint_calls(tx, effects)
        await self._append(R.savepoint(tx, savepoint_id, False, time.time()))
        return savepoint_id

    async def rollback_to_savepoint(self, gtrid: str, savepoint_id: str) -> sm.Transaction:
        self._refuse_if_fenced()
        tx = self.get(gtrid)
        validate_savepoint_id(savepoint_id)
        effects = sm.rollback_to_savepoint(tx, savepoint_id)
        await self._run_savepoint_calls(tx, effects)
        await self._append(R.savepoint(tx, savepoint_id, True, time.time()))
        return tx

    async def _run_savepoint_calls(self, tx: sm.Transaction, effects: list[sm.Effect]) -> None:
        """Savepoint calls are synchronous parts of the business flow: any failure marks the
        transaction rollback-only and is reported to the caller."""
        failures: list[str] = []
        for effect in effects:
            assert isinstance(effect, sm.Send)
            for bqual, code, reason in await self._call_all(tx, effect):
                if effect.phase == Phase.ROLLBACK:
                    sm.savepoint_dropped(tx, bqual, code, reason)
                elif code != XaCode.XA_OK:
                    failures.append(f"{bqual}: {code.name} {reason}".strip())
        if failures:
            await self.mark_rollback_only(tx.gtrid, "savepoint failed: " + "; ".join(failures))
            raise FailedPreconditionError(
                f"savepoint operation failed on {len(failures)} branch(es), transaction {tx.gtrid} "
                f"is now MarkedRollback: {'; '.join(failures)}",
            )

    async def _call_all(self, tx: sm.Transaction, effect: sm.Send) -> list[tuple[str, XaCode, str]]:
        """One synchronous round of calls (forget, savepoints), each answer logged."""
        results = await asyncio.gather(
            *(self._call_once(tx, b, effect.phase, effect.savepoint_id) for b in effect.bquals)
        )
        answers = []
        for bqual, (code, reason) in zip(effect.bquals, results, strict=True):
            branch = tx.branches[bqual]
            await self._append(R.branch_result(tx, branch, effect.phase, code, reason, time.time()))
            answers.append((bqual, code, reason))
        return answers

    # ----------------------------------------------------------------- effects

    async def _after(self, tx: sm.Transaction, old: TxStatus, effects: list[sm.Effect]) -> None:
        """Log a status change, then carry out the effects."""
        if tx.status != old:
            await self._append(R.status(tx, time.time()))
        for effect in effects:
            if isinstance(effect, sm.Send):
                self._send(tx, effect)
            elif isinstance(effect, sm.ForceDecision):
                self._spawn(self._decide(tx))
            else:
                await self._finished(tx)

    def _send(self, tx: sm.Transaction, effect: sm.Send) -> None:
        if effect.phase == Phase.PREPARE:
            self._spawn(self._prepare_all(tx, effect.bquals))
            return
        for bqual in effect.bquals:
            driver = self._drivers.get((tx.gtrid, bqual))
            if driver is not None and driver.task is not None and not driver.task.done():
                driver.wake.set()
                continue
            driver = self._drivers[(tx.gtrid, bqual)] = _Driver()
            driver.task = self._spawn(self._drive(tx, bqual, effect.phase, driver))

    async def _call_once(
        self, tx: sm.Transaction, bqual: str, phase: Phase, savepoint_id: str = ""
    ) -> tuple[XaCode, str]:
        branch = tx.branches[bqual]
        sm.begin_attempt(tx, bqual, phase)
        timeout = self.settings.call_timeout
        if phase == Phase.PREPARE:
            timeout = max(0.001, min(timeout, tx.deadline_mono - time.monotonic()))
        code, reason = await self.peers.call(
            branch.endpoint, phase, Xid(tx.gtrid, bqual), timeout=timeout, savepoint_id=savepoint_id
        )
        metrics.BRANCH_RESULTS.labels(phase=str(phase), code=code.name).inc()
        return code, reason

    async def _prepare_all(self, tx: sm.Transaction, bquals: tuple[str, ...]) -> None:
        await failpoints.ahit("coordinator.before_prepare")
        started = time.perf_counter()
        await asyncio.gather(*(self._prepare_one(tx, b) for b in bquals))
        metrics.PHASE_DURATION.labels(phase="prepare").observe(time.perf_counter() - started)

    async def _prepare_one(self, tx: sm.Transaction, bqual: str) -> None:
        code, reason = await self._call_once(tx, bqual, Phase.PREPARE)
        old = tx.status
        effects = sm.prepare_result(tx, bqual, code, reason)
        await self._append(R.branch_result(tx, tx.branches[bqual], Phase.PREPARE, code, reason, time.time()))
        await self._after(tx, old, effects)

    async def _decide(self, tx: sm.Transaction) -> None:
        await failpoints.ahit("coordinator.after_prepare")
        await failpoints.ahit("coordinator.before_decision")
        started = time.perf_counter()
        # From here until decision_durable() the log holds a decision that ``tx`` does not show
        # yet; a checkpoint in between must not replace it by the undecided status.
        self._deciding.add(tx.gtrid)
        try:
            try:
                await self.log.append(R.decision(tx, time.time()), force=True)
            except LogStopped as err:
                # The decision may or may not be on disk: the transaction stays undecided here,
                # and its commit request is answered UNAVAILABLE, not with an outcome.
                self.fence(err)
                raise
            metrics.PHASE_DURATION.labels(phase="decision").observe(time.perf_counter() - started)
            await failpoints.ahit("coordinator.after_decision")
            old = tx.status
            effects = sm.decision_durable(tx)
        finally:
            self._deciding.discard(tx.gtrid)
        await self._after(tx, old, effects)

    async def _drive(self, tx: sm.Transaction, bqual: str, phase: Phase, driver: _Driver) -> None:
        """Phase two for one branch: retry with capped, jittered backoff until acknowledged."""
        if phase == Phase.ROLLBACK:
            await failpoints.ahit("coordinator.before_rollback")
        started = time.perf_counter()
        branch = tx.branches[bqual]

        def before_sleep(state: RetryCallState) -> None:
            delay = state.next_action.sleep if state.next_action else 0.0
            branch.next_retry = time.time() + delay
            metrics.RETRIES.labels(phase=str(phase)).inc()
            if state.outcome is not None and state.outcome.failed:
                log.error("%s branch %s: %s failed: %r", tx.gtrid, bqual, phase, state.outcome.exception())

        retrying = AsyncRetrying(
            # Capped exponential backoff plus jitter, so retries of many branches do not align.
            wait=wait_exponential(multiplier=self.settings.retry_initial, max=self.settings.retry_max)
            + wait_random(0, self.settings.retry_initial),
            # A stopped log ends the driver: no answer can be recorded any more (reported once).
            retry=retry_if_result(bool)
            | (retry_if_exception_type(Exception) & retry_if_not_exception_type(LogStopped)),
            sleep=driver.sleep,
            before_sleep=before_sleep,
            reraise=True,
        )
        try:
            async for attempt in retrying:
                with attempt:
                    pending = await self._phase_two_step(tx, bqual, phase)
                outcome = attempt.retry_state.outcome  # set by the `with attempt` block just ended
                if outcome is not None and not outcome.failed:
                    attempt.retry_state.set_result(pending)
        finally:
            branch.next_retry = None
            self._drivers.pop((tx.gtrid, bqual), None)
            metrics.PHASE_DURATION.labels(phase=str(phase)).observe(time.perf_counter() - started)

    async def _phase_two_step(self, tx: sm.Transaction, bqual: str, phase: Phase) -> bool:
        """One call; True while the branch still owes an acknowledgement."""
        if bqual not in sm.pending_branches(tx):
            return False
        if self._phase_two_calls.get(tx.gtrid):
            await failpoints.ahit("coordinator.between_phase_two")
        self._phase_two_calls[tx.gtrid] = self._phase_two_calls.get(tx.gtrid, 0) + 1
        code, reason = await self._call_once(tx, bqual, phase)
        if bqual not in sm.pending_branches(tx):
            # Closed while the call was out (its participant reported, or an operator resolved it):
            # the late answer is logged as one that changed nothing.
            await self._append(R.late_result(tx, bqual, phase, code, reason, time.time()))
            return False
        old = tx.status
        effects = sm.phase_two_result(tx, bqual, phase, code, reason)
        await self._append(R.branch_result(tx, tx.branches[bqual], phase, code, reason, time.time()))
        await self._after(tx, old, effects)
        pending = bqual in sm.pending_branches(tx)
        if pending:
            log.warning(
                "%s branch %s: %s answered %s %s; will retry", tx.gtrid, bqual, phase, code.name, reason
            )
        return pending

    async def _finished(self, tx: sm.Transaction) -> None:
        now, ended = time.time(), time.monotonic()
        tx.completed_at, tx.completed_mono = now, ended
        self._open -= 1
        timer = self._timers.pop(tx.gtrid, None)
        if timer is not None:
            timer.cancel()
        await self._append(R.end(tx, now))
        self._phase_two_calls.pop(tx.gtrid, None)
        label = _OUTCOME_LABEL[tx.status]
        metrics.TRANSACTIONS_COMPLETED.labels(outcome=label).inc()
        if not tx.recovered:
            metrics.TRANSACTION_DURATION.labels(outcome=label).observe(ended - tx.begun_mono)
        log.info("%s %s", tx.gtrid, tx.status.label)
        self._done[tx.gtrid].set()

    def _on_timeout(self, gtrid: str) -> None:
        self._timers.pop(gtrid, None)
        tx = self._txs.get(gtrid)
        if tx is None:
            return
        old = tx.status
        effects = sm.timeout(tx)
        if tx.status != old:
            log.info("%s timed out in %s; rolling back", gtrid, old.label)
            self._spawn(self._after(tx, old, effects))

    async def _wait(self, tx: sm.Transaction) -> None:
        """Wait (bounded) for the final status; phase two goes on in the background after.

        The answer must at least carry the decision, so if prepares are still out when
        commit_wait ends, keep waiting for them: each ends within its per-call deadline.
        """
        with contextlib.suppress(TimeoutError):  # fence() sets every event too
            await asyncio.wait_for(self._done[tx.gtrid].wait(), self.settings.commit_wait)
        loop = asyncio.get_running_loop()
        give_up = loop.time() + 2 * self.settings.call_timeout
        while (
            tx.status in (TxStatus.PREPARING, TxStatus.PREPARED)
            and loop.time() < give_up
            and self.log_stopped is None
        ):
            await asyncio.sleep(0.01)

    async def _append(self, record: wal_pb2.WalRecord) -> None:
        await self.log.append(record)

    def _drop(self, gtrid: str) -> None:
        self._txs.pop(gtrid, None)
        self._done.pop(gtrid, None)

    async def record_audit(self, record: admin_pb2.AuditRecord) -> None:
        """Durably log an operator action (forced, like a decision) and keep it listable."""
        self._refuse_if_fenced()
        # Listed before the write is awaited: a checkpoint queued meanwhile must carry it along.
        self.audit_log.append(record)
        del self.audit_log[: -self.AUDIT_KEPT]
        await self.log.append(R.audit(record), force=True)

    # ----------------------------------------------------------------- housekeeping

    async def checkpoint(self) -> None:
        """Drop history past retention and rewrite the log as one snapshot per kept transaction."""
        now = time.time()
        horizon = time.monotonic() - self.settings.history_retention
        history = [tx for tx in self._txs.values() if tx.status in _CLOSED]
        excess = len(history) - self.settings.max_history
        for i, tx in enumerate(history):  # oldest first: dicts keep begin order
            if i < excess or (tx.completed_mono is not None and tx.completed_mono < horizon):
                self._drop(tx.gtrid)
        audits = [R.audit(record) for record in self.audit_log]
        await self.log.checkpoint(audits + [self._snapshot(tx, now) for tx in self._txs.values()])

    def _snapshot(self, tx: sm.Transaction, now: float) -> wal_pb2.WalRecord:
        """The checkpoint record of ``tx``: what the log says about it, which may be ahead of ``tx``.

        A commit decision queued before the checkpoint is durable by the time the checkpoint is
        (the log is written in order), so the snapshot must say Committing already.
        """
        if tx.gtrid in self._deciding:
            tx = dataclasses.replace(tx, status=TxStatus.COMMITTING, decision=Decision.COMMIT)
        return R.snapshot(tx, now)

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.checkpoint_interval)
            try:
                await self.checkpoint()
            except LogStopped:
                return  # the log keeps what it had or the whole snapshot; the stop is reported once
            except Exception:
                log.exception("checkpoint failed; will try again")

    def _register_gauges(self) -> None:
        def count(status: TxStatus) -> Callable[[], float]:
            return lambda: sum(1 for tx in self._txs.values() if tx.status == status)

        def overdue(status: TxStatus) -> Callable[[], float]:
            def measure() -> float:
                now = time.monotonic()
                return sum(1 for tx in self._txs.values() if tx.status == status and tx.deadline_mono < now)

            return measure

        for status in TxStatus:
            if status not in _CLOSED:
                # HeuristicallyCompleted stays "active" until an operator forgets it.
                metrics.TRANSACTIONS_ACTIVE.labels(status=status.label).set_function(count(status))
            if not status.is_final:
                metrics.TRANSACTIONS_OVERDUE.labels(status=status.label).set_function(overdue(status))
        metrics.IN_DOUBT_BRANCHES.set_function(
            lambda: sum(
                len(sm.pending_branches(tx))
                for tx in self._txs.values()
                if tx.decision is not None and tx.status in (TxStatus.COMMITTING, TxStatus.ROLLINGBACK)
            )
        )


def _check_identity(what: str, rm_id: str, endpoint: str) -> None:
    """A participant names its resource manager and the host:port serving it, 1-256 characters each."""
    if not rm_id or not endpoint or len(rm_id) > 256 or len(endpoint) > 256:
        raise InvalidArgumentError(f"{what} needs rm_id and endpoint of 1-256 characters"
        )
