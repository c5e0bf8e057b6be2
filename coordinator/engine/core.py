"""The coordinator engine: carries out the state machine's effects with real I/O.

Everything runs on one asyncio loop. State transitions are synchronous calls into the pure
state machine, so operations on one gtrid are serialised by construction while different
gtrids never wait on each other; only participant calls and log writes await.

``Engine`` is the one object the servers call. It holds the verbs and the lifecycle and hands
the rest to its parts: ``registry`` (the transactions and their counts), ``decisions`` (what
is written to the log), ``audit`` (operator actions), ``phase_two`` (participant calls and the
retry drivers), ``scanner`` (in-doubt branches nobody drives), and the gauges.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

from xatm.coordinator import metrics
from xatm.coordinator import protocol as sm
from xatm.coordinator.engine import gauges
from xatm.coordinator.engine.audit import AuditTrail
from xatm.coordinator.engine.decisions import DecisionLog
from xatm.coordinator.engine.drivers import PhaseTwo
from xatm.coordinator.engine.peers import Peers
from xatm.coordinator.engine.recovery import RecoveryScanner
from xatm.coordinator.engine.registry import Kept, Registry
from xatm.coordinator.journal import RecordFactory as R
from xatm.coordinator.journal import replay, replay_compact
from xatm.coordinator.settings import Settings
from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.interface import LogStopped, TxLog
from xatm.participant import failpoints
from xatm.participant.api.v1 import admin_pb2
from xatm.participant.api.v1.xa_pb2 import BranchRef
from xatm.participant.errors import (
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
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
    incarnation_of,
    new_gtrid,
    new_incarnation,
    node_of,
    rm_id_problem,
    validate_bqual,
    validate_gtrid,
    validate_savepoint_id,
)

T = TypeVar("T")

__all__ = ["MAX_SAVEPOINTS", "Engine", "Result"]

#: Savepoints one transaction may hold at once (each remembers the branches enlisted before it).
MAX_SAVEPOINTS = 1000
#: Why a transaction whose gtrid names an earlier start of this coordinator is rolled back.
RESTARTED = "the coordinator restarted before the transaction was decided"
#: ``timeout_ms`` of a Commit or Rollback sent once the transaction's timeout has passed (0 would
#: read as the default timeout): a commit carrying it is past the deadline and never commits.
SPENT_MS = 1
LATE_COMMIT = "the commit came after the transaction's timeout had expired"

log = logging.getLogger("xatm.coordinator")

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


class Engine:
    """The coordinator's transactions, driven by the protocol, logged before they act.

    Verbs raise the ``XatmError`` subclasses their docstrings name, and ``LogStopped`` once the
    log stopped (``fence``).
    """

    AUDIT_KEPT = 10_000

    def __init__(self, settings: Settings, txlog: TxLog, node_id: str, peers: Peers | None = None):
        self.settings = settings
        self.node_id = node_id
        #: This start of the coordinator: in every gtrid made for this node from now on, so a gtrid
        #: made before a restart is told apart (its eager enlistments may be forgotten).
        self.incarnation = new_incarnation()
        self.log = txlog
        self.peers = peers or Peers(
            max_message_bytes=settings.max_message_bytes,
            call_timeout=settings.call_timeout,
            token=settings.participant_token or None,
        )
        self.registry = Registry(on_deadline=self._on_timeout)
        self.audit = AuditTrail(txlog, self.AUDIT_KEPT)
        self.decisions = DecisionLog(txlog, self.registry, self.audit)
        self.phase_two = PhaseTwo(settings, self.peers, self.decisions, after=self._after, spawn=self._spawn)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closing = False
        #: Why the log stopped, once it has (see ``fence``); every verb answers with it after.
        self.log_stopped: LogStopped | None = None
        self._sp_counter = 0
        reachability = self.phase_two.reachability
        gauges.register(
            self.registry,
            lambda: self.phase_two.in_doubt,
            reachability.down,
            lambda: reachability.owed_by_unreachable,
        )
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
        records = await self.log.open()
        audit: deque[wal_pb2.WalRecord] = deque(maxlen=self.AUDIT_KEPT)
        # One pass as the log reads it, off the loop; history past max_history is never built, and
        # the history kept stays in its compact form.
        keep = self.settings.max_history
        rebuilt = await asyncio.to_thread(replay_compact, records, keep=keep, audit=audit)
        txs = list(rebuilt.live.values())
        _count_from_now(txs)
        self.registry.load(txs, rebuilt.history, rebuilt.endpoints)
        self.audit.restore(audit)
        # The coordinator process freezes what replay left out of later collections once it has
        # started (``heap.settle``); engines embedded elsewhere leave the collector alone.
        await self._resume(txs)
        self._spawn(self._checkpoint_loop())
        self._spawn(self.scanner.run())
        self._spawn(self.phase_two.report_loop())

    async def adopt(self, records: Iterable[wal_pb2.WalRecord]) -> list[str]:
        """Take over transactions another coordinator logged (a replica whose lease expired):
        rebuild them from ``records`` (their log records in order) and finish them as start-up
        recovery does: re-drive Committing and Rollingback, presume abort for the undecided.

        Returns the gtrids adopted; a transaction already known here is left as it is.
        Raises LogStopped once the log stopped.
        """
        self._refuse_if_fenced()
        txs = [tx for gtrid, tx in replay(records).items() if self.registry.known(gtrid) is None]
        _count_from_now(txs)
        for tx in txs:
            self.registry.add(tx)
            if not tx.status.is_final:
                for branch in tx.branches.values():
                    self.registry.enlisted(branch.rm_id, branch.endpoint)
        await self._resume(txs)
        return [tx.gtrid for tx in txs]

    async def _resume(self, txs: list[sm.Transaction]) -> None:
        """Finish ``txs`` rebuilt from a log: recovery actions for the unfinished ones."""
        for tx in txs:
            if tx.status.is_final:
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
        await self.decisions.release()  # the yes votes of transactions stopped while preparing
        await self.peers.close()
        await self.log.close()

    @property
    def closing(self) -> bool:
        return self._closing

    @property
    def endpoints(self) -> set[str]:
        """Where the participants are served now (host:port): what the recovery scanner asks."""
        return self.registry.endpoints

    @property
    def audit_log(self) -> list[admin_pb2.AuditRecord]:
        """Audited operator actions, oldest first (the newest ``AUDIT_KEPT``)."""
        return self.audit.records

    @property
    def _drivers(self) -> dict[tuple[str, str], Any]:
        """The live phase-two drivers by (gtrid, bqual)."""
        return self.phase_two.drivers

    def fence(self, stopped: LogStopped) -> None:
        """Stop taking decisions because the log stopped: nothing more can be made durable.

        Timers, phase-two drivers, checkpoints and recovery scans end; verbs answer UNAVAILABLE
        with ``stopped``'s message; commit requests waiting for a decision are answered at once.
        What is in memory stays readable. Only a restart (replaying the log) resumes work.
        """
        if self.log_stopped is not None:
            return
        self.log_stopped = stopped
        self.registry.release_all()  # commit requests waiting for an end answer now
        self._halt()

    def _halt(self) -> None:
        """Cancel every timer and background task (shutdown, or a stopped log)."""
        self.registry.cancel_deadlines()
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
        """The transaction; INVALID_ARGUMENT for a malformed gtrid, NOT_FOUND for an unknown one."""
        return self.registry.get(gtrid)

    def transactions(
        self, statuses: Iterable[TxStatus] = (), begun_after: float | None = None
    ) -> list[sm.Transaction]:
        return self.registry.transactions(statuses, begun_after)

    def listing(
        self, statuses: Iterable[TxStatus] = (), begun_after: float | None = None
    ) -> list[sm.Transaction | Kept]:
        """What a listing pages through: ``transactions()`` with the history left compact."""
        return self.registry.listing(statuses, begun_after)

    def known(self, gtrid: str) -> sm.Transaction | None:
        return self.registry.known(gtrid)

    async def log_foreign_result(
        self, xid: Xid, endpoint: str, phase: Phase, code: XaCode, reason: str
    ) -> None:
        """Record what recovery did to a branch the coordinator holds no transaction for."""
        await self.decisions.foreign_result(xid, endpoint, phase, code, reason)

    def _check_own(self, xid: Xid) -> None:
        """INVALID_ARGUMENT unless ``xid`` is well-formed and this coordinator's (format, node;
        or a transaction of another replica that this one took over)."""
        validate_gtrid(xid.gtrid)
        validate_bqual(xid.bqual)
        mine = node_of(xid.gtrid) == self.node_id or self.registry.known(xid.gtrid) is not None
        if xid.format_id != FORMAT_ID or not mine:
            raise InvalidArgumentError(f"xid {xid} was not begun by this coordinator (node {self.node_id})")

    def query_outcome(self, xid: Xid) -> Decision:
        """What a participant holding an in-doubt branch must do (presumed abort)."""
        self._refuse_if_fenced()
        self._check_own(xid)
        tx = self.registry.known(xid.gtrid)
        if tx is None or xid.bqual not in tx.branches:
            return Decision.ROLLBACK
        if tx.decision is not None:
            return tx.decision
        return Decision.PENDING

    # ----------------------------------------------------------------- initiator verbs

    async def begin(
        self, timeout_ms: int = 0, gtrid: str = "", branches: Iterable[BranchRef] = ()
    ) -> sm.Transaction:
        """A new transaction with a gtrid made here; or, given the ``gtrid`` an initiator made,
        that transaction (created when unknown) with ``branches`` enlisted.

        ``timeout_ms``: 0 for the default, capped at ``max_timeout``. Raises UNAVAILABLE while
        shutting down, at ``max_open_transactions`` or while the log cannot take new
        transactions; for a given gtrid, what ``hold`` and ``report_branches`` raise.
        """
        self._refuse_if_fenced()
        if not gtrid:
            self._admit()
            return self._create(new_gtrid(self.node_id, self.incarnation), timeout_ms)
        tx = self.hold(gtrid, timeout_ms)
        await self._report(tx, branches, "")
        return tx

    def hold(self, gtrid: str, timeout_ms: int = 0, *, completing: bool = False) -> sm.Transaction:
        """The transaction ``gtrid``, created (Created, ``timeout_ms`` from now) when this coordinator
        does not hold it: initiators make their gtrids, and a transaction comes into being with the
        first enlistment, commit or rollback that names it. Nothing is logged for it yet.

        A gtrid made for an earlier start of this coordinator (``incarnation_of``) may have had
        branches enlisted that the restart forgot (nothing is logged before the decision): it is
        created only for a commit or rollback (``completing``), which then rolls it back.

        Raises INVALID_ARGUMENT for a malformed gtrid, NOT_FOUND for an unknown one made for
        another node, FAILED_PRECONDITION for one of an earlier start (not ``completing``),
        UNAVAILABLE as ``begin``.
        """
        tx = self.registry.known(validate_gtrid(gtrid))
        if tx is not None:
            return tx
        if node_of(gtrid) != self.node_id:
            raise NotFoundError(f"unknown transaction {gtrid}")  # not this node's: nothing to create
        inherited = self.made_before_restart(gtrid)
        if inherited and not completing:
            raise FailedPreconditionError(f"transaction {gtrid} cannot be joined: {RESTARTED}")
        self._admit()
        tx = self._create(gtrid, timeout_ms)
        tx.inherited = inherited
        return tx

    def made_before_restart(self, gtrid: str) -> bool:
        """True for a gtrid of this node made for an earlier start (old-form gtrids name none)."""
        made_for = incarnation_of(gtrid)
        return made_for is not None and made_for != self.incarnation and node_of(gtrid) == self.node_id

    def _admit(self) -> None:
        if self._closing:
            raise UnavailableError("coordinator is shutting down")
        if self.registry.open >= self.settings.max_open_transactions:
            raise UnavailableError(
                f"{self.registry.open} transactions are open (max_open_transactions); retry later"
            )
        if not getattr(self.log, "available", True):
            raise UnavailableError(
                "the transaction log has no quorum or cannot be reached: new transactions are refused "
                "until it answers again; decided transactions are finished then"
            )

    def _create(self, gtrid: str, timeout_ms: int) -> sm.Transaction:
        cap = int(self.settings.max_timeout * 1000)
        timeout_ms = min(timeout_ms or int(self.settings.default_timeout * 1000), cap)
        tx = sm.Transaction(
            gtrid=gtrid, timeout_ms=timeout_ms, begun_at=time.time(), begun_mono=time.monotonic()
        )
        self.registry.add(tx)
        metrics.TRANSACTIONS_STARTED.inc()
        return tx

    async def _report(self, tx: sm.Transaction, branches: Iterable[BranchRef], rollback_only: str) -> None:
        """Enlist the branches an initiator carries (reported to it in reply metadata)."""
        refs = [(validate_bqual(b.bqual), sys.intern(b.rm_id), sys.intern(b.endpoint)) for b in branches]
        for _, rm_id, endpoint in refs:
            _check_identity("a reported branch", rm_id, endpoint)
        fresh = sum(1 for bqual, _, _ in refs if bqual not in tx.branches)
        limit = self.settings.max_branches
        if fresh and len(tx.branches) + fresh > limit:
            raise ResourceExhaustedError(
                f"transaction {tx.gtrid} would have {len(tx.branches) + fresh} branches"
                f" (max_branches is {limit})"
            )
        old = tx.status
        effects = sm.report_branches(tx, refs, rollback_only[:500])
        for _, rm_id, endpoint in refs:
            self.registry.enlisted(rm_id, endpoint)
        if tx.status != old:  # marked: the reason the participant reported is the one kept
            log.info("%s marked rollback-only: %s", tx.gtrid, tx.rollback_reason)
        await self._after(tx, old, effects)

    async def enlist(self, gtrid: str, bqual: str, rm_id: str, endpoint: str, timeout_ms: int = 0) -> XaCode:
        """Add a branch (eager enlistment), creating the transaction as ``hold`` does;
        RESOURCE_EXHAUSTED past ``max_branches`` branches in one transaction."""
        validate_bqual(bqual)
        _check_identity("enlist", rm_id, endpoint)
        self._refuse_if_fenced()
        tx = self.hold(gtrid, timeout_ms)
        limit = self.settings.max_branches
        if len(tx.branches) >= limit and bqual not in tx.branches and tx.status == TxStatus.CREATED:
            raise ResourceExhaustedError(
                f"transaction {gtrid} already has {len(tx.branches)} branches (max_branches is {limit})"
            )
        # Interned: a few RMs serve the branches of all transactions held open, and each branch
        # would otherwise keep its own copies of the same two strings.
        code = sm.enlist(tx, bqual, sys.intern(rm_id), sys.intern(endpoint))
        if code == XaCode.XA_OK:
            self.registry.enlisted(rm_id, endpoint)
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
        self.registry.enlisted(rm_id, endpoint)
        # Together, so their forced records share one group commit.
        moves = [
            self._move(tx, b.bqual, rm_id, endpoint)
            for tx in self.registry.live()
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
        tx = self.registry.known(xid.gtrid)
        branch = tx.branches.get(xid.bqual) if tx is not None else None
        if tx is None or branch is None or branch.rm_id != rm_id:
            return False
        self.registry.enlisted(rm_id, endpoint)
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
        await self.decisions.forced(R.endpoint(tx, branch, time.time()))
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
        owed = sm.is_pending(tx, xid.bqual)
        old = tx.status
        reason = (f"applied by {rm_id} after asking the outcome" + (f": {reason}" if reason else ""))[:500]
        effects = sm.outcome_reported(tx, xid.bqual, rm_id, phase, code, reason)
        if owed:
            metrics.BRANCH_RESULTS.labels(phase=str(phase), code=code.name).inc()
            await self.decisions.append(
                R.branch_result(tx, tx.branches[xid.bqual], phase, code, reason, time.time())
            )
            await self._after(tx, old, effects)
            self.phase_two.wake(tx, xid.bqual)
        return tx

    async def resolve_branch(self, gtrid: str, bqual: str, committed: bool, reason: str) -> Result:
        """An operator's heuristic close of a branch whose RM is gone for good (see
        ``protocol.resolve_branch`` for the rule); answered like a force commit/rollback."""
        validate_bqual(bqual)
        self._refuse_if_fenced()
        tx = self.get(gtrid)
        old = tx.status
        effects = sm.resolve_branch(tx, bqual, committed, reason)
        branch = tx.branches[bqual]
        assert branch.last_phase is not None and branch.last_code is not None
        await self.decisions.append(
            R.branch_result(tx, branch, branch.last_phase, branch.last_code, reason, time.time())
        )
        await self._after(tx, old, effects)
        self.phase_two.wake(tx, bqual)
        return Result(tx, sm.outcome(tx, Phase.COMMIT if tx.decision is Decision.COMMIT else Phase.ROLLBACK))

    async def mark_rollback_only(self, gtrid: str, reason: str) -> sm.Transaction:
        self._refuse_if_fenced()
        tx = self.get(gtrid)
        old = tx.status
        effects = sm.mark_rollback_only(tx, reason[:500])
        await self._after(tx, old, effects)
        if tx.status != old:  # the first mark only: its reason is the one kept
            log.info("%s marked rollback-only: %s", tx.gtrid, tx.rollback_reason)
        return tx

    async def commit(
        self, gtrid: str, timeout_ms: int = 0, branches: Iterable[BranchRef] = (), rollback_only: str = ""
    ) -> Result:
        """The initiator's commit. Of a gtrid not held yet, the transaction is created first (see
        ``hold``) with the ``branches`` reported to the initiator, and marked rollback-only when
        ``rollback_only`` says why; then two-phase commit, one-phase for one branch."""
        self._refuse_if_fenced()
        tx = self.hold(gtrid, timeout_ms, completing=True)
        if tx.status == TxStatus.CREATED and tx.inherited:
            # Only a commit creates such a transaction: branches it does not carry may have been
            # enlisted before the restart, and they are rolled back (presumed abort) whatever it does.
            rollback_only = f"{RESTARTED}: branches enlisted before may have been forgotten"
            log.warning("%s rolled back: %s", gtrid, RESTARTED)
        await self._report(tx, branches, rollback_only)
        old = tx.status
        if tx.timeout_ms <= SPENT_MS and old == TxStatus.CREATED:
            # Created with what an initiator sends once nothing is left of its timeout (or begun
            # with 1 ms): the commit comes late, however soon after that it got here.
            await self._after(tx, old, sm.request_rollback(tx, LATE_COMMIT, XaCode.XA_RBTIMEOUT))
        elif time.monotonic() >= tx.deadline_mono:
            # Past its timeout already (a commit that comes late): no prepare is sent.
            await self._after(tx, old, sm.timeout(tx))
        return await self._complete(gtrid, sm.request_commit, Phase.COMMIT)

    async def rollback(
        self,
        gtrid: str,
        reason: str = "",
        timeout_ms: int = 0,
        branches: Iterable[BranchRef] = (),
        rollback_only: str = "",
        code: XaCode | None = None,
    ) -> Result:
        """The initiator's rollback; ``timeout_ms`` and ``branches`` as for ``commit``, and
        ``rollback_only`` (work in a reported branch failed) is the reason kept. With ``code``
        (an operator's rollback), ``reason`` is kept as the transaction's rollback reason. A
        transaction never decided needs no forced write to roll back (presumed abort)."""
        self._refuse_if_fenced()
        tx = self.hold(gtrid, timeout_ms, completing=True)
        await self._report(tx, branches, "")
        if rollback_only and tx.status == TxStatus.CREATED:
            reason, code = rollback_only[:500], XaCode.XA_RBROLLBACK
            log.info("%s marked rollback-only: %s", tx.gtrid, reason)
        return await self._complete(gtrid, lambda tx: sm.request_rollback(tx, reason, code), Phase.ROLLBACK)

    async def force_commit(self, gtrid: str) -> Result:
        return await self._complete(gtrid, sm.force_commit, Phase.COMMIT)

    async def _complete(
        self, gtrid: str, event: Callable[[sm.Transaction], list[sm.Effect]], answer: Phase
    ) -> Result:
        """Apply a commit or rollback request, wait (bounded) for its end, answer in tx.h terms.

        Re-driving branches already retrying needs nothing extra: ``send`` wakes their drivers.
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
            await self.phase_two.call_all(tx, effect)
        await self.decisions.append(R.forget(tx, time.time()))
        self.registry.drop(tx.gtrid)

    async def create_savepoint(self, gtrid: str) -> str:
        self._refuse_if_fenced()
        tx = self.get(gtrid)
        if len(tx.savepoints or ()) >= MAX_SAVEPOINTS and tx.status == TxStatus.CREATED:
            raise ResourceExhaustedError(
                f"transaction {gtrid} already holds {MAX_SAVEPOINTS} savepoints; roll back to an "
                "earlier one to release the later ones"
            )
        self._sp_counter += 1
        savepoint_id = f"sp{self._sp_counter}.{time.time_ns() % 10**9:x}"
        effects = sm.create_savepoint(tx, savepoint_id)
        await self._run_savepoint_calls(tx, effects)
        await self.decisions.append(R.savepoint(tx, savepoint_id, False, time.time()))
        return savepoint_id

    async def rollback_to_savepoint(self, gtrid: str, savepoint_id: str) -> sm.Transaction:
        self._refuse_if_fenced()
        tx = self.get(gtrid)
        validate_savepoint_id(savepoint_id)
        effects = sm.rollback_to_savepoint(tx, savepoint_id)
        await self._run_savepoint_calls(tx, effects)
        await self.decisions.append(R.savepoint(tx, savepoint_id, True, time.time()))
        return tx

    async def _run_savepoint_calls(self, tx: sm.Transaction, effects: list[sm.Effect]) -> None:
        """Savepoint calls are synchronous parts of the business flow: any failure marks the
        transaction rollback-only and is reported to the caller."""
        failures: list[str] = []
        for effect in effects:
            assert isinstance(effect, sm.Send)
            for bqual, code, reason in await self.phase_two.call_all(tx, effect):
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

    # ----------------------------------------------------------------- effects

    async def _after(self, tx: sm.Transaction, old: TxStatus, effects: list[sm.Effect]) -> None:
        """Log a status change, then carry out the effects."""
        self.registry.observe(tx)
        if tx.status != old:
            await self.decisions.status_changed(tx)
        for effect in effects:
            if isinstance(effect, sm.Send):
                self.phase_two.send(tx, effect)
            elif isinstance(effect, sm.ForceDecision):
                # Only the last prepare answer asks for it, in the prepare call's own task: the
                # decision is written there, then phase two starts from it (no task of its own).
                await self._decide(tx)
            else:
                await self._finished(tx)

    async def _decide(self, tx: sm.Transaction) -> None:
        await failpoints.ahit("coordinator.after_prepare")
        await failpoints.ahit("coordinator.before_decision")
        try:
            await self.decisions.decide(tx)
        except LogStopped as err:
            # The decision may or may not be on disk: the transaction stays undecided here,
            # and its commit request is answered UNAVAILABLE, not with an outcome.
            self.fence(err)
            raise
        try:
            await failpoints.ahit("coordinator.after_decision")
            old = tx.status
            effects = sm.decision_durable(tx)
        finally:
            self.decisions.applied(tx)
        await self._after(tx, old, effects)

    async def _finished(self, tx: sm.Transaction) -> None:
        now, ended = time.time(), time.monotonic()
        tx.completed_at, tx.completed_mono = now, ended
        self.registry.finished(tx)
        await self.decisions.ended(tx)
        self.phase_two.forget(tx.gtrid)
        label = _OUTCOME_LABEL[tx.status]
        metrics.TRANSACTIONS_COMPLETED.labels(outcome=label).inc()
        if not tx.recovered:
            metrics.TRANSACTION_DURATION.labels(outcome=label).observe(ended - tx.begun_mono)
        # A commit is routine, one line each would cost more than it tells: DEBUG. Anything else is
        # news, and a heuristic outcome needs an operator (xactl forget after checking the RMs).
        if tx.status == TxStatus.HEURISTICALLY_COMPLETED:
            codes = ", ".join(f"{b.bqual}={b.last_code.name}" for b in tx.branches.values() if b.last_code)
            log.warning(
                "%s %s (%s): check the resource managers, then xactl forget", tx.gtrid, tx.status.label, codes
            )
            return
        level = logging.DEBUG if tx.status == TxStatus.COMMITTED else logging.INFO
        log.log(level, "%s %s", tx.gtrid, tx.status.label)

    def _on_timeout(self, gtrid: str) -> None:
        tx = self.registry.known(gtrid)
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
        await self.registry.wait_done(tx.gtrid, self.settings.commit_wait)  # fence() ends it too
        give_up = asyncio.get_running_loop().time() + 2 * self.settings.call_timeout
        await self.registry.wait_decided(tx, give_up, lambda: self.log_stopped is not None)

    async def record_audit(self, record: admin_pb2.AuditRecord) -> None:
        """Durably log an operator action (forced, like a decision) and keep it listable."""
        self._refuse_if_fenced()
        await self.audit.record(record)

    # ----------------------------------------------------------------- housekeeping

    async def checkpoint(self) -> None:
        """Drop history past retention and rewrite the log as one snapshot per kept transaction."""
        await self.decisions.checkpoint(
            retention=self.settings.history_retention, keep=self.settings.max_history
        )

    async def _checkpoint_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.checkpoint_interval)
            try:
                await self.checkpoint()
            except LogStopped:
                return  # the log keeps what it had or the whole snapshot; the stop is reported once
            except Exception:
                log.exception("checkpoint failed; will try again")


def _count_from_now(txs: Iterable[sm.Transaction]) -> None:
    """The log holds wall-clock times only, and a monotonic time does not survive a restart:
    deadlines and retention of transactions rebuilt from a log count from now."""
    now = time.monotonic()
    for tx in txs:
        tx.journaled = True
        tx.begun_mono = now
        tx.completed_mono = now if tx.completed_at is not None else None


def _check_identity(what: str, rm_id: str, endpoint: str) -> None:
    """A participant names its resource manager (``rm_id_problem``'s rule) and the host:port
    serving it (1-256 characters)."""
    problem = rm_id_problem(rm_id)
    if problem:
        raise InvalidArgumentError(f"{what}: rm_id {repr(rm_id)[:40]} {problem}")
    if not endpoint or len(endpoint) > 256:
        raise InvalidArgumentError(f"{what} needs an endpoint of 1-256 characters")
