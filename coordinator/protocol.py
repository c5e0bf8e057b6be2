"""The two-phase-commit protocol as a pure state machine: no I/O, no clock, no asyncio.

Each event function checks that the event is allowed (raising ``Refused`` before touching
anything), updates the ``Transaction`` in place and returns the effects the engine must carry
out: calls to send, the one forced decision write, completion. Keeping every rule here lets
tests drive all statuses x events and all XA codes x phases without processes or disks.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from xatm.participant.errors import FailedPreconditionError, InvalidArgumentError, NotFoundError
from xatm.participant.xa import BranchStatus, Decision, Phase, TxOutcome, TxStatus, XaCode

__all__ = [
    "COMMIT_ALLOWED",
    "RESOLVE_ALLOWED",
    "ROLLBACK_ALLOWED",
    "Branch",
    "Effect",
    "Finished",
    "ForceDecision",
    "Refused",
    "Send",
    "Transaction",
    "begin_attempt",
    "branch_moved",
    "create_savepoint",
    "decision_durable",
    "enlist",
    "force_commit",
    "forget",
    "is_pending",
    "mark_rollback_only",
    "outcome",
    "outcome_known",
    "outcome_reported",
    "owed_phase",
    "pending_branches",
    "phase_two_result",
    "prepare_result",
    "recover",
    "report_branches",
    "request_commit",
    "request_rollback",
    "resolve_branch",
    "rollback_to_savepoint",
    "savepoint_dropped",
    "timeout",
]

S = TxStatus
B = BranchStatus

#: The rollback rule (docs/contract.md): initiator and operator rollbacks only from these.
ROLLBACK_ALLOWED = (S.CREATED, S.PREPARING, S.ROLLINGBACK)
#: Force commit only from these.
COMMIT_ALLOWED = (S.CREATED, S.PREPARING, S.COMMITTING)
#: An operator closes a branch by hand only while the decision still waits for its answer.
RESOLVE_ALLOWED = (S.COMMITTING, S.ROLLINGBACK)

_HEURISTIC = (B.HEURISTICALLY_COMPLETED, B.HEURISTICALLY_ROLLEDBACK)
_HEURISTIC_STATUS = {
    XaCode.XA_HEURCOM: B.HEURISTICALLY_COMPLETED,
    XaCode.XA_HEURRB: B.HEURISTICALLY_ROLLEDBACK,
    XaCode.XA_HEURMIX: B.HEURISTICALLY_COMPLETED,
    XaCode.XA_HEURHAZ: B.HEURISTICALLY_COMPLETED,
}


class Refused(FailedPreconditionError):
    """The event is not allowed in the current status; nothing was changed."""


@dataclass(slots=True)
class Branch:
    bqual: str
    rm_id: str
    endpoint: str
    status: BranchStatus = B.ENLISTED
    last_code: XaCode | None = None
    last_phase: Phase | None = None
    last_reason: str = ""
    #: Calls made in ``attempt_phase`` (retries included).
    attempts: int = 0
    attempt_phase: Phase | None = None
    #: When the engine's backoff will call again (operators see it); the protocol never reads it.
    next_retry: float | None = None


@dataclass(slots=True)
class Transaction:
    gtrid: str
    timeout_ms: int
    status: TxStatus = S.CREATED
    branches: dict[str, Branch] = field(default_factory=dict)
    rollback_code: XaCode | None = None
    rollback_reason: str = ""
    one_phase: bool = False
    #: Branches whose prepare answer has not arrived yet; None before the prepares go out and
    #: after a restart (most transactions held open never prepare: no empty set each).
    awaiting_prepare: set[str] | None = None
    #: Savepoint id -> bquals enlisted when it was created (in creation order); None until the first.
    savepoints: dict[str, tuple[str, ...]] | None = None
    #: Rebuilt from the log after a restart: earlier attempts may have reached the RM.
    recovered: bool = False
    #: Created from a gtrid made for an earlier start of this coordinator (or a replica gone),
    #: which may have sent its lone branch a one-phase commit and logged nothing (no decision
    #: is forced for one phase): XAER_NOTA to this transaction's rollback of a lone branch may
    #: then mean "committed and forgotten", and leaves the outcome unknown.
    inherited: bool = False
    #: COMMIT once the commit decision is taken (durable, or one-phase sent), ROLLBACK once
    #: rollback starts; heuristic outcomes are judged against it.
    decision: Decision | None = None
    #: Wall-clock bookkeeping for operators; the protocol never reads it.
    begun_at: float = 0.0
    completed_at: float | None = None
    #: The same two moments on this process's time.monotonic(), which is what the deadline, the
    #: overdue gauge and history retention measure from (a stepped wall clock moves neither).
    #: A transaction rebuilt from the log gets the restart's time for both.
    begun_mono: float = 0.0
    completed_mono: float | None = None
    #: Something of it is in the log, so a restart rebuilds it. Presumed abort needs nothing of an
    #: undecided transaction: its first record comes when it starts preparing or rolling back.
    journaled: bool = False

    @property
    def deadline_mono(self) -> float:
        """time.monotonic() after which the transaction is past its timeout."""
        return self.begun_mono + self.timeout_ms / 1000


@dataclass(frozen=True)
class Send:
    """Call ``phase`` on these branches (fan out in parallel)."""

    phase: Phase
    bquals: tuple[str, ...]
    savepoint_id: str = ""


@dataclass(frozen=True)
class ForceDecision:
    """Write the commit decision durably, then call ``decision_durable``."""


@dataclass(frozen=True)
class Finished:
    """The transaction reached a final status."""

    status: TxStatus


Effect = Send | ForceDecision | Finished


def _refuse(tx: Transaction, action: str, allowed: tuple[TxStatus, ...]) -> Refused:
    names = ", ".join(s.label for s in allowed)
    return Refused(
        f"transaction {tx.gtrid} is {tx.status.label}; {action} is allowed only from {names}",
    )


def _owing(tx: Transaction) -> tuple[BranchStatus, ...]:
    """The branch statuses that still owe the current decision an acknowledgement."""
    if tx.status == S.COMMITTING:
        return (B.ENLISTED,) if tx.one_phase else (B.PREPARED,)
    if tx.status == S.ROLLINGBACK:
        return (B.ENLISTED, B.PREPARED)
    return ()


def pending_branches(tx: Transaction) -> tuple[str, ...]:
    """Branches the current decision still needs an acknowledgement from."""
    wanted = _owing(tx)
    if not wanted:
        return ()
    return tuple(b.bqual for b in tx.branches.values() if b.status in wanted)


def _any_pending(tx: Transaction) -> bool:
    """Whether any branch is pending. Scanned newest first: answers arrive roughly in enlistment
    order, so a pending branch is found at once and a transaction of n branches costs O(n) in
    all rather than O(n) per answer."""
    wanted = _owing(tx)
    return bool(wanted) and any(b.status in wanted for b in reversed(tx.branches.values()))


def is_pending(tx: Transaction, bqual: str) -> bool:
    """Whether branch ``bqual`` is among ``pending_branches(tx)``, at the cost of one lookup."""
    branch = tx.branches.get(bqual)
    return branch is not None and branch.status in _owing(tx)


def begin_attempt(tx: Transaction, bqual: str, phase: Phase) -> int:
    """Count a call about to be sent; the count restarts with each new phase."""
    branch = tx.branches[bqual]
    if branch.attempt_phase != phase:
        branch.attempt_phase, branch.attempts = phase, 0
    branch.attempts += 1
    return branch.attempts


def _record(branch: Branch, phase: Phase, code: XaCode, reason: str) -> None:
    branch.last_phase, branch.last_code, branch.last_reason = phase, code, reason


def _finish_if_done(tx: Transaction) -> list[Effect]:
    if tx.status not in (S.COMMITTING, S.ROLLINGBACK) or _any_pending(tx) or tx.awaiting_prepare:
        return []
    if tx.status == S.COMMITTING and not any(b.status != B.ROLLEDBACK for b in tx.branches.values()):
        # The one-phase branch rolled back instead of committing.
        tx.decision = Decision.ROLLBACK
    if any(b.status in _HEURISTIC for b in tx.branches.values()):
        tx.status = S.HEURISTICALLY_COMPLETED
    elif tx.decision is Decision.COMMIT:
        tx.status = S.COMMITTED
    else:
        tx.status = S.ROLLEDBACK
    return [Finished(tx.status)]


def _start_rollback(tx: Transaction, code: XaCode | None, reason: str) -> list[Effect]:
    tx.status = S.ROLLINGBACK
    tx.decision = Decision.ROLLBACK
    if code is not None and tx.rollback_code is None:
        tx.rollback_code, tx.rollback_reason = code, reason
    pending = pending_branches(tx)
    effects: list[Effect] = [Send(Phase.ROLLBACK, pending)] if pending else []
    return effects + _finish_if_done(tx)


def recover(tx: Transaction) -> list[Effect]:
    """After a coordinator restart: presumed abort for anything undecided, re-drive the rest."""
    tx.recovered = True
    tx.awaiting_prepare = None
    if tx.status in (S.CREATED, S.MARKED_ROLLBACK, S.PREPARING, S.PREPARED):
        return _start_rollback(
            tx, XaCode.XA_RBROLLBACK, "coordinator restarted before a decision (presumed abort)"
        )
    if tx.status == S.COMMITTING:
        phase = Phase.ONE_PHASE_COMMIT if tx.one_phase else Phase.COMMIT
        pending = pending_branches(tx)
        return [Send(phase, pending)] if pending else _finish_if_done(tx)
    if tx.status == S.ROLLINGBACK:
        return _start_rollback(tx, None, "")
    return []


def enlist(tx: Transaction, bqual: str, rm_id: str, endpoint: str) -> XaCode:
    """Dynamic registration of a branch; a bqual already enlisted answers XAER_DUPID."""
    if tx.status != S.CREATED:
        raise _refuse(tx, "enlisting a branch", (S.CREATED,))
    if bqual in tx.branches:
        return XaCode.XAER_DUPID
    tx.branches[bqual] = Branch(bqual, rm_id, endpoint)
    return XaCode.XA_OK


def report_branches(
    tx: Transaction, branches: Iterable[tuple[str, str, str]], rollback_only: str = ""
) -> list[Effect]:
    """Branches reported to the initiator (lazy enlistment) arrive with its Commit or Rollback:
    each ``(bqual, rm_id, endpoint)`` the transaction lacks is enlisted, then a ``rollback_only``
    reason (work in a branch failed) marks it rollback-only.

    A bqual already held for the same RM is the same branch told twice (it was also enlisted
    eagerly, or the request is a retry). Raises INVALID_ARGUMENT for a bqual held for another RM.
    A branch the transaction lacks once it left Created and MarkedRollback could no longer be part
    of the outcome: after a rollback decision (e.g. the timeout) it is left to its participant,
    which ends a branch nobody reached past the deadline; otherwise Refused.
    """
    fresh: list[tuple[str, str, str]] = []
    for bqual, rm_id, endpoint in branches:
        held = tx.branches.get(bqual)
        if held is None:
            fresh.append((bqual, rm_id, endpoint))
        elif held.rm_id != rm_id:
            raise InvalidArgumentError(
                f"branch {bqual} of {tx.gtrid} belongs to resource manager {held.rm_id}, not {rm_id}",
            )
    if fresh and tx.status not in (S.CREATED, S.MARKED_ROLLBACK):
        if tx.decision is Decision.ROLLBACK:
            return []
        raise _refuse(tx, f"joining branch {fresh[0][0]}", (S.CREATED, S.MARKED_ROLLBACK))
    for bqual, rm_id, endpoint in fresh:
        tx.branches[bqual] = Branch(bqual, rm_id, endpoint)
    if rollback_only and tx.status == S.CREATED:
        return mark_rollback_only(tx, rollback_only)
    return []


def mark_rollback_only(tx: Transaction, reason: str) -> list[Effect]:
    if tx.status in (S.MARKED_ROLLBACK, S.ROLLINGBACK, S.ROLLEDBACK):
        return []
    if tx.status != S.CREATED:
        raise _refuse(tx, "marking rollback-only", (S.CREATED,))
    tx.status = S.MARKED_ROLLBACK
    tx.rollback_code, tx.rollback_reason = XaCode.XA_RBROLLBACK, reason
    return []


def request_commit(tx: Transaction) -> list[Effect]:
    """The initiator's commit: 2PC, one-phase for one branch, rollback when marked.

    Repeating commit on a transaction already deciding or decided is not an error: the
    caller waits for (or reads) the outcome, which makes a retried commit idempotent.
    """
    if tx.status == S.MARKED_ROLLBACK:
        return _start_rollback(tx, None, "")
    if tx.status != S.CREATED:
        return []
    if not tx.branches:
        tx.status, tx.decision = S.COMMITTED, Decision.COMMIT
        return [Finished(tx.status)]
    if len(tx.branches) == 1:
        tx.one_phase = True
        tx.status = S.COMMITTING
        tx.decision = Decision.COMMIT
        return [Send(Phase.ONE_PHASE_COMMIT, tuple(tx.branches))]
    tx.status = S.PREPARING
    tx.awaiting_prepare = set(tx.branches)
    return [Send(Phase.PREPARE, tuple(tx.branches))]


def force_commit(tx: Transaction) -> list[Effect]:
    """Operator commit: full 2PC from Created/Preparing, re-drive phase two from Committing."""
    if tx.status not in COMMIT_ALLOWED:
        raise _refuse(tx, "commit", COMMIT_ALLOWED)
    if tx.status == S.COMMITTING:
        phase = Phase.ONE_PHASE_COMMIT if tx.one_phase else Phase.COMMIT
        pending = pending_branches(tx)
        return [Send(phase, pending)] if pending else _finish_if_done(tx)
    return request_commit(tx)


def request_rollback(tx: Transaction, reason: str = "", code: XaCode | None = None) -> list[Effect]:
    """Rollback by the initiator or an operator, under the rollback rule.

    From Rollingback it re-drives the branches that have not acknowledged.
    """
    if tx.status not in ROLLBACK_ALLOWED:
        raise _refuse(tx, "rollback", ROLLBACK_ALLOWED)
    return _start_rollback(tx, code, reason)


def timeout(tx: Transaction) -> list[Effect]:
    """The transaction outlived its timeout before a decision: roll back with XA_RBTIMEOUT."""
    if tx.status not in (S.CREATED, S.MARKED_ROLLBACK, S.PREPARING):
        return []
    return _start_rollback(tx, XaCode.XA_RBTIMEOUT, f"transaction timeout of {tx.timeout_ms} ms expired")


def prepare_result(tx: Transaction, bqual: str, code: XaCode, reason: str = "") -> list[Effect]:
    """Read one branch's prepare answer (docs/contract.md) and decide once all have answered."""
    branch = tx.branches.get(bqual)
    awaiting = tx.awaiting_prepare
    if branch is None or awaiting is None or bqual not in awaiting:
        return []
    awaiting.discard(bqual)
    _record(branch, Phase.PREPARE, code, reason)
    if code == XaCode.XA_OK:
        branch.status = B.PREPARED
    elif code == XaCode.XA_RDONLY:
        branch.status = B.COMMITTED
    elif code.is_rollback:
        branch.status = B.ROLLEDBACK
        if tx.rollback_code is None:
            tx.rollback_code, tx.rollback_reason = code, reason
    elif tx.rollback_code is None:
        # XAER_*, an unreachable participant or a missed deadline: the vote is no.
        tx.rollback_code, tx.rollback_reason = code, reason or code.name

    if tx.status == S.ROLLINGBACK:
        # A rollback overtook the prepares; a late yes still has to be undone.
        effects: list[Effect] = [Send(Phase.ROLLBACK, (bqual,))] if branch.status == B.PREPARED else []
        return effects + _finish_if_done(tx)
    if tx.status != S.PREPARING or tx.awaiting_prepare:
        return []
    if tx.rollback_code is not None:
        return _start_rollback(tx, None, "")
    if any(b.status == B.PREPARED for b in tx.branches.values()):
        tx.status = S.PREPARED
        return [ForceDecision()]
    # Every branch was read-only: nothing to commit, no decision to log.
    tx.status, tx.decision = S.COMMITTED, Decision.COMMIT
    return [Finished(tx.status)]


def decision_durable(tx: Transaction) -> list[Effect]:
    """The commit decision is on disk: phase two may start."""
    if tx.status != S.PREPARED:
        raise _refuse(tx, "a commit decision", (S.PREPARED,))
    tx.status = S.COMMITTING
    tx.decision = Decision.COMMIT
    return [Send(Phase.COMMIT, pending_branches(tx))]


#: The reason kept for a lone branch whose XAER_NOTA may mean it committed in one phase.
NOTA_AFTER_ONE_PHASE = (
    "outcome unknown: XAER_NOTA to the rollback of a lone branch that a coordinator which logged"
    " nothing (an earlier start, a replica gone) may have committed in one phase"
)


def _needs_retry(code: XaCode) -> bool:
    return code == XaCode.XA_RETRY or (code.is_error and code != XaCode.XAER_NOTA)


def phase_two_result(
    tx: Transaction, bqual: str, phase: Phase, code: XaCode, reason: str = ""
) -> list[Effect]:
    """Read a commit or rollback answer (docs/contract.md). Returns [] for a retry; the engine retries
    while the branch stays in ``pending_branches``."""
    branch = tx.branches.get(bqual)
    if branch is None or not is_pending(tx, bqual):
        return []
    _record(branch, phase, code, reason)
    if code.is_heuristic:
        branch.status = _HEURISTIC_STATUS[code]
    elif code == XaCode.XAER_RMERR and phase == Phase.ONE_PHASE_COMMIT:
        # xa_commit with TMONEPHASE answers XAER_RMERR only after rolling the branch's work
        # back (X/Open XA, xa_commit): nothing was committed.
        branch.status = B.ROLLEDBACK
        tx.rollback_code, tx.rollback_reason = code, reason or "one-phase commit failed; work rolled back"
    elif _needs_retry(code):
        return []
    elif phase == Phase.ROLLBACK and code == XaCode.XAER_NOTA and tx.inherited and len(tx.branches) == 1:
        branch.status = B.HEURISTICALLY_COMPLETED
        branch.last_code = XaCode.XA_HEURHAZ
        branch.last_reason = NOTA_AFTER_ONE_PHASE
    elif phase == Phase.ROLLBACK:
        branch.status = B.ROLLEDBACK
    elif code.is_rollback:
        if phase == Phase.ONE_PHASE_COMMIT:
            branch.status = B.ROLLEDBACK
            tx.rollback_code, tx.rollback_reason = code, reason
        else:
            # A prepared branch the RM rolled back on its own: a heuristic rollback.
            branch.status = B.HEURISTICALLY_ROLLEDBACK
            branch.last_code = XaCode.XA_HEURRB
    elif code == XaCode.XAER_NOTA and phase == Phase.ONE_PHASE_COMMIT:
        if branch.attempts <= 1 and not tx.recovered:
            # The RM never knew the branch (e.g. it lost unprepared work): nothing was committed.
            branch.status = B.ROLLEDBACK
            tx.rollback_code, tx.rollback_reason = code, reason or "resource manager did not know the branch"
        else:
            # An earlier one-phase call may have committed before its reply was lost, or the RM
            # may have discarded the unprepared work: the outcome is unknown, and said so.
            branch.status = B.HEURISTICALLY_COMPLETED
            branch.last_code = XaCode.XA_HEURHAZ
            branch.last_reason = "one-phase commit outcome unknown: XAER_NOTA after a lost reply"
    else:
        # XA_OK, or XAER_NOTA for a branch that completed before a lost reply.
        branch.status = B.COMMITTED
    return _finish_if_done(tx)


def forget(tx: Transaction) -> list[Effect]:
    """Clear a heuristic outcome: tell the branches to forget, then drop the transaction."""
    if tx.status != S.HEURISTICALLY_COMPLETED:
        raise _refuse(tx, "forget", (S.HEURISTICALLY_COMPLETED,))
    return [Send(Phase.FORGET, tuple(b.bqual for b in tx.branches.values() if b.status in _HEURISTIC))]


def create_savepoint(tx: Transaction, savepoint_id: str) -> list[Effect]:
    if tx.status != S.CREATED:
        raise _refuse(tx, "a savepoint", (S.CREATED,))
    if tx.savepoints is None:
        tx.savepoints = {}
    tx.savepoints[savepoint_id] = tuple(tx.branches)
    return [Send(Phase.SAVEPOINT, tuple(tx.branches), savepoint_id)] if tx.branches else []


def rollback_to_savepoint(tx: Transaction, savepoint_id: str) -> list[Effect]:
    """Undo work after a savepoint: later branches roll back and leave the transaction,
    earlier ones roll back to their local savepoint. Later savepoints disappear."""
    if tx.status != S.CREATED:
        raise _refuse(tx, "rollback to a savepoint", (S.CREATED,))
    savepoints = tx.savepoints
    if savepoints is None or savepoint_id not in savepoints:
        raise NotFoundError(f"no savepoint {savepoint_id!r} in transaction {tx.gtrid}")
    before = savepoints[savepoint_id]
    ids = list(savepoints)
    for later in ids[ids.index(savepoint_id) + 1 :]:
        del savepoints[later]
    after = tuple(b for b in tx.branches if b not in before)
    effects: list[Effect] = []
    if after:
        effects.append(Send(Phase.ROLLBACK, after))
    if before:
        effects.append(Send(Phase.ROLLBACK_TO_SAVEPOINT, before, savepoint_id))
    return effects


def savepoint_dropped(tx: Transaction, bqual: str, code: XaCode, reason: str = "") -> None:
    """A branch enlisted after the savepoint answered its rollback: it leaves the transaction."""
    branch = tx.branches.get(bqual)
    if branch is None:
        return
    _record(branch, Phase.ROLLBACK, code, reason)
    if not _needs_retry(code):
        del tx.branches[bqual]


def outcome_known(tx: Transaction) -> bool:
    """Whether the transaction's outcome is settled, even if phase two is still running.

    A two-phase commit is settled once its decision is durable (Committing); a one-phase commit
    only once its single branch has answered, because the resource manager, not the
    coordinator, decides it; Preparing and Prepared are undecided.
    """
    if tx.status in (S.PREPARING, S.PREPARED):
        return False
    return not (tx.status == S.COMMITTING and tx.one_phase)


def outcome(tx: Transaction, requested: Phase) -> TxOutcome:
    """The tx.h answer to a commit (``Phase.COMMIT``) or rollback (``Phase.ROLLBACK``) request.

    Never claims more than is known: while the outcome is not settled (``outcome_known``) the
    answer is ``TX_HAZARD`` with the non-final status beside it, which clients read as
    "outcome unknown yet", distinct from a heuristic hazard (status HeuristicallyCompleted).
    """
    codes = {b.last_code for b in tx.branches.values() if b.status in _HEURISTIC}
    if XaCode.XA_HEURHAZ in codes or not outcome_known(tx):
        return TxOutcome.TX_HAZARD
    committed = tx.decision is Decision.COMMIT
    agreeing = {XaCode.XA_HEURCOM} if committed else {XaCode.XA_HEURRB}
    if codes and not codes <= agreeing:
        if not committed and requested == Phase.ROLLBACK and codes == {XaCode.XA_HEURCOM}:
            # Heuristically committed only if no branch was rolled back (a no vote, a rollback
            # acknowledged): otherwise part committed, part rolled back.
            rolled_back = any(b.status == B.ROLLEDBACK for b in tx.branches.values())
            return TxOutcome.TX_MIXED if rolled_back else TxOutcome.TX_COMMITTED
        return TxOutcome.TX_MIXED
    if tx.status in (S.COMMITTED, S.COMMITTING) or (codes and committed):
        return TxOutcome.TX_COMMITTED if requested == Phase.ROLLBACK else TxOutcome.TX_OK
    return TxOutcome.TX_OK if requested == Phase.ROLLBACK else TxOutcome.TX_ROLLBACK


def owed_phase(tx: Transaction) -> Phase | None:
    """The phase-two call the current decision sends to its pending branches, or None."""
    if tx.status == S.COMMITTING:
        return Phase.ONE_PHASE_COMMIT if tx.one_phase else Phase.COMMIT
    if tx.status == S.ROLLINGBACK:
        return Phase.ROLLBACK
    return None


def _branch(tx: Transaction, bqual: str) -> Branch:
    branch = tx.branches.get(bqual)
    if branch is None:
        raise NotFoundError(f"transaction {tx.gtrid} has no branch {bqual}")
    return branch


def _own_branch(tx: Transaction, bqual: str, rm_id: str) -> Branch:
    """The branch, which a participant speaking for ``rm_id`` claims as its own."""
    branch = _branch(tx, bqual)
    if branch.rm_id != rm_id:
        raise InvalidArgumentError(
            f"branch {bqual} of {tx.gtrid} belongs to resource manager {branch.rm_id}, not {rm_id}",
        )
    return branch


def branch_moved(tx: Transaction, bqual: str, rm_id: str, endpoint: str) -> list[Effect]:
    """The branch's resource manager re-registered at ``endpoint``: every later call goes there.

    Raises NOT_FOUND for an unknown bqual and INVALID_ARGUMENT when the branch belongs to another
    RM. In Committed or Rolledback nothing is called any more, so nothing changes. A branch still
    owed a phase-two call gets it at once: the Send wakes its driver out of its backoff.
    """
    branch = _own_branch(tx, bqual, rm_id)
    if branch.endpoint == endpoint or tx.status in (S.COMMITTED, S.ROLLEDBACK):
        return []
    branch.endpoint = endpoint
    phase = owed_phase(tx)
    return [Send(phase, (bqual,))] if phase is not None and is_pending(tx, bqual) else []


def outcome_reported(
    tx: Transaction, bqual: str, rm_id: str, phase: Phase, code: XaCode, reason: str = ""
) -> list[Effect]:
    """A participant applied the decision itself (after asking for it) and reports the RM's answer,
    which is read exactly like the answer to the coordinator's own phase-two call.

    A report for a branch that owes nothing (acknowledged already, or not decided) changes nothing:
    reports may repeat or race the coordinator's call. A phase other than the one the decision
    owes is refused with FAILED_PRECONDITION; an unknown bqual with NOT_FOUND, another RM's branch
    with INVALID_ARGUMENT.
    """
    _own_branch(tx, bqual, rm_id)
    if not is_pending(tx, bqual):
        return []
    owed = owed_phase(tx)
    if phase != owed:
        raise Refused(
            f"transaction {tx.gtrid} is {tx.status.label}: branch {bqual} owes {owed}, not {phase}",
        )
    return phase_two_result(tx, bqual, phase, code, reason)


def resolve_branch(tx: Transaction, bqual: str, committed: bool, reason: str) -> list[Effect]:
    """An operator closes a branch whose resource manager is gone for good, stating what happened
    to the branch there: a heuristic decision, recorded as XA_HEURCOM or XA_HEURRB.

    Allowed only for a branch still owed an acknowledgement in Committing or Rollingback; anything
    else is refused with FAILED_PRECONDITION (NOT_FOUND for an unknown bqual). Once no branch owes
    an answer the transaction ends HeuristicallyCompleted, to be forgotten like any other.
    """
    branch = _branch(tx, bqual)
    if tx.status not in RESOLVE_ALLOWED:
        raise _refuse(tx, "resolving a branch by hand", RESOLVE_ALLOWED)
    phase = owed_phase(tx)
    if phase is None or not is_pending(tx, bqual):
        raise Refused(
            f"branch {bqual} of transaction {tx.gtrid} is {branch.status.label} and owes no answer; "
            "resolving by hand is allowed only for a branch still owed one in Committing or Rollingback",
        )
    code = XaCode.XA_HEURCOM if committed else XaCode.XA_HEURRB
    branch.status = _HEURISTIC_STATUS[code]
    _record(branch, phase, code, reason)
    return _finish_if_done(tx)
