"""Exhaustive tests of the pure protocol state machine: every status x event, every XA code x phase.

The expected tables are written out here literally (not imported from the code), so loosening
the rollback rule or reading any XA code differently from docs/contract.md fails a test.
"""

from __future__ import annotations

import copy

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from xatm.coordinator import protocol as sm
from xatm.participant.errors import Status, XatmError
from xatm.participant.xa import BranchStatus as B
from xatm.participant.xa import Decision, Phase, TxOutcome, XaCode
from xatm.participant.xa import TxStatus as S

ALL_CODES = list(XaCode)
RB_CODES = [c for c in XaCode if 100 <= c.value <= 107]
RETRY_CODES = [XaCode.XA_RETRY] + [c for c in XaCode if c.value < 0 and c != XaCode.XAER_NOTA]
HEUR_STATUS = {
    XaCode.XA_HEURCOM: B.HEURISTICALLY_COMPLETED,
    XaCode.XA_HEURRB: B.HEURISTICALLY_ROLLEDBACK,
    XaCode.XA_HEURMIX: B.HEURISTICALLY_COMPLETED,
    XaCode.XA_HEURHAZ: B.HEURISTICALLY_COMPLETED,
}


def _tx(n: int = 2) -> sm.Transaction:
    tx = sm.Transaction(gtrid="n1.abc", timeout_ms=1000)
    for i in range(n):
        assert sm.enlist(tx, f"b{i}", f"rm{i}", f"127.0.0.1:{9000 + i}") == XaCode.XA_OK
    return tx


def in_status(status: S) -> sm.Transaction:
    """A two-branch transaction driven through the protocol into ``status``."""
    tx = _tx()
    if status == S.CREATED:
        return tx
    if status == S.MARKED_ROLLBACK:
        sm.mark_rollback_only(tx, "asked")
        return tx
    sm.request_commit(tx)
    if status == S.PREPARING:
        return tx
    if status in (S.ROLLINGBACK, S.ROLLEDBACK):
        sm.prepare_result(tx, "b0", XaCode.XA_OK)
        sm.prepare_result(tx, "b1", XaCode.XA_RBROLLBACK)
        if status == S.ROLLEDBACK:
            sm.phase_two_result(tx, "b0", Phase.ROLLBACK, XaCode.XA_OK)
        return tx
    sm.prepare_result(tx, "b0", XaCode.XA_OK)
    sm.prepare_result(tx, "b1", XaCode.XA_OK)
    if status == S.PREPARED:
        return tx
    sm.decision_durable(tx)
    if status == S.COMMITTING:
        return tx
    if status == S.COMMITTED:
        sm.phase_two_result(tx, "b0", Phase.COMMIT, XaCode.XA_OK)
        sm.phase_two_result(tx, "b1", Phase.COMMIT, XaCode.XA_OK)
        return tx
    assert status == S.HEURISTICALLY_COMPLETED
    sm.phase_two_result(tx, "b0", Phase.COMMIT, XaCode.XA_OK)
    sm.phase_two_result(tx, "b1", Phase.COMMIT, XaCode.XA_HEURRB)
    return tx


@pytest.mark.parametrize("status", list(S))
def test_fixture_reaches_every_status(status: S) -> None:
    assert in_status(status).status == status


# ------------------------------------------------------------------ the rollback rule


@pytest.mark.parametrize("status", list(S))
def test_rollback_rule(status: S) -> None:
    tx = in_status(status)
    before = copy.deepcopy(tx)
    if status in {S.CREATED, S.PREPARING, S.ROLLINGBACK}:
        effects = sm.request_rollback(tx, "operator")
        assert tx.status in (S.ROLLINGBACK, S.ROLLEDBACK)
        assert tx.decision == Decision.ROLLBACK
        sends = [e for e in effects if isinstance(e, sm.Send)]
        assert all(e.phase == Phase.ROLLBACK for e in sends)
    else:
        with pytest.raises(XatmError) as err:
            sm.request_rollback(tx, "operator")
        assert err.value.status == Status.FAILED_PRECONDITION
        assert status.label in err.value.message
        assert "Created, Preparing, Rollingback" in err.value.message
        assert tx == before, "a refused rollback must change nothing"


@pytest.mark.parametrize("status", list(S))
def test_force_commit_rule(status: S) -> None:
    tx = in_status(status)
    before = copy.deepcopy(tx)
    if status in {S.CREATED, S.PREPARING, S.COMMITTING}:
        effects = sm.force_commit(tx)
        if status == S.CREATED:
            assert effects == [sm.Send(Phase.PREPARE, ("b0", "b1"))]
        if status == S.COMMITTING:
            assert effects == [sm.Send(Phase.COMMIT, ("b0", "b1"))]
    else:
        with pytest.raises(XatmError) as err:
            sm.force_commit(tx)
        assert err.value.status == Status.FAILED_PRECONDITION
        assert "Created, Preparing, Committing" in err.value.message
        assert tx == before


def test_rollback_from_rollingback_redrives_only_unacknowledged() -> None:
    tx = _tx(3)
    sm.request_commit(tx)
    sm.prepare_result(tx, "b0", XaCode.XA_OK)
    sm.prepare_result(tx, "b1", XaCode.XA_OK)
    sm.prepare_result(tx, "b2", XaCode.XA_RBDEADLOCK)
    sm.phase_two_result(tx, "b0", Phase.ROLLBACK, XaCode.XA_OK)
    assert sm.request_rollback(tx) == [sm.Send(Phase.ROLLBACK, ("b1",))]


# ------------------------------------------------------------------ every event in every status


EVENTS = {
    "enlist": lambda tx: sm.enlist(tx, "new", "rmx", "127.0.0.1:1"),
    "mark_rollback_only": lambda tx: sm.mark_rollback_only(tx, "x"),
    "commit": sm.request_commit,
    "timeout": sm.timeout,
    "decision_durable": sm.decision_durable,
    "forget": sm.forget,
    "savepoint": lambda tx: sm.create_savepoint(tx, "sp1"),
    "recover": sm.recover,
}
# Statuses in which each event changes something or is accepted (others refuse or ignore).
ACCEPTED = {
    "enlist": {S.CREATED},
    "mark_rollback_only": {S.CREATED, S.MARKED_ROLLBACK, S.ROLLINGBACK, S.ROLLEDBACK},
    "commit": set(S),
    "timeout": set(S),
    "decision_durable": {S.PREPARED},
    "forget": {S.HEURISTICALLY_COMPLETED},
    "savepoint": {S.CREATED},
    "recover": set(S),
}


@pytest.mark.parametrize("status", list(S))
@pytest.mark.parametrize("event", list(EVENTS))
def test_every_event_in_every_status(event: str, status: S) -> None:
    tx = in_status(status)
    before = copy.deepcopy(tx)
    if status not in ACCEPTED[event]:
        with pytest.raises(XatmError) as err:
            EVENTS[event](tx)
        assert err.value.status == Status.FAILED_PRECONDITION
        assert tx == before
        return
    EVENTS[event](tx)
    expected = {
        ("commit", S.CREATED): S.PREPARING,
        ("commit", S.MARKED_ROLLBACK): S.ROLLINGBACK,
        ("timeout", S.CREATED): S.ROLLINGBACK,
        ("timeout", S.MARKED_ROLLBACK): S.ROLLINGBACK,
        ("timeout", S.PREPARING): S.ROLLINGBACK,
        ("mark_rollback_only", S.CREATED): S.MARKED_ROLLBACK,
        ("decision_durable", S.PREPARED): S.COMMITTING,
        ("recover", S.CREATED): S.ROLLINGBACK,
        ("recover", S.MARKED_ROLLBACK): S.ROLLINGBACK,
        ("recover", S.PREPARING): S.ROLLINGBACK,
        ("recover", S.PREPARED): S.ROLLINGBACK,
    }.get((event, status), status)
    assert tx.status == expected


@pytest.mark.parametrize("status", list(S))
def test_reported_branches_in_every_status(status: S) -> None:
    """Branches carried by Commit (lazy enlistment) join while the transaction is undecided, are
    left to their participants once it rolls back, and are refused once it may commit."""
    tx = in_status(status)
    before = copy.deepcopy(tx)
    report = [("b0", "rm0", "127.0.0.1:9000"), ("new", "rmx", "127.0.0.1:1")]
    if status in (S.CREATED, S.MARKED_ROLLBACK):
        assert sm.report_branches(tx, report, "rmx: failed") == []
        assert (tx.status, list(tx.branches)) == (S.MARKED_ROLLBACK, ["b0", "b1", "new"])
        assert tx.branches["new"] == sm.Branch("new", "rmx", "127.0.0.1:1")
        assert tx.rollback_reason == ("rmx: failed" if status == S.CREATED else "asked")  # the first kept
    elif tx.decision is Decision.ROLLBACK:
        assert sm.report_branches(tx, report, "rmx: failed") == []
        assert tx == before
    else:
        with pytest.raises(XatmError) as err:
            sm.report_branches(tx, report)
        assert err.value.status == Status.FAILED_PRECONDITION and "joining branch new" in err.value.message
        assert tx == before
    # The same branch told twice (a retried Commit, or also enlisted eagerly) changes nothing.
    again = in_status(status)
    unchanged = copy.deepcopy(again)
    assert sm.report_branches(again, [("b0", "rm0", "127.0.0.1:9000")]) == [] and again == unchanged


def test_a_reported_bqual_of_another_resource_manager_is_refused() -> None:
    tx = _tx()
    before = copy.deepcopy(tx)
    with pytest.raises(XatmError) as err:
        sm.report_branches(tx, [("new", "rmx", "127.0.0.1:1"), ("b0", "rm-other", "127.0.0.1:2")])
    assert err.value.status == Status.INVALID_ARGUMENT and tx == before  # nothing enlisted either


def test_timeout_records_rbtimeout() -> None:
    tx = _tx()
    effects = sm.timeout(tx)
    assert tx.rollback_code == XaCode.XA_RBTIMEOUT
    assert effects == [sm.Send(Phase.ROLLBACK, ("b0", "b1"))]


def test_duplicate_bqual_answers_dupid() -> None:
    tx = _tx(1)
    assert sm.enlist(tx, "b0", "other", "127.0.0.1:2") == XaCode.XAER_DUPID
    assert tx.branches["b0"].rm_id == "rm0"


# ------------------------------------------------------------------ XA codes per phase (docs/contract.md)


@pytest.mark.parametrize("code", ALL_CODES, ids=lambda c: c.name)
def test_prepare_reading_of_every_code(code: XaCode) -> None:
    tx = _tx()
    sm.request_commit(tx)
    sm.prepare_result(tx, "b1", XaCode.XA_OK)
    effects = sm.prepare_result(tx, "b0", code)
    branch = tx.branches["b0"]
    assert (branch.last_code, branch.last_phase) == (code, Phase.PREPARE)
    if code == XaCode.XA_OK:
        assert branch.status == B.PREPARED
        assert tx.status == S.PREPARED and effects == [sm.ForceDecision()]
    elif code == XaCode.XA_RDONLY:
        assert branch.status == B.COMMITTED  # done, no phase two
        assert tx.status == S.PREPARED and effects == [sm.ForceDecision()]
        sm.decision_durable(tx)
        assert sm.pending_branches(tx) == ("b1",)
    elif code in RB_CODES:
        assert branch.status == B.ROLLEDBACK
        assert tx.status == S.ROLLINGBACK and tx.rollback_code == code
        assert effects == [sm.Send(Phase.ROLLBACK, ("b1",))]
    else:
        # XAER_*, XA_RETRY, heuristics or anything else in prepare: the transaction rolls back.
        assert tx.status == S.ROLLINGBACK and tx.rollback_code == code
        assert effects == [sm.Send(Phase.ROLLBACK, ("b0", "b1"))]


def _committing(one_phase: bool = False) -> sm.Transaction:
    if one_phase:
        tx = _tx(1)
        assert sm.request_commit(tx) == [sm.Send(Phase.ONE_PHASE_COMMIT, ("b0",))]
        return tx
    tx = in_status(S.COMMITTING)
    sm.phase_two_result(tx, "b1", Phase.COMMIT, XaCode.XA_OK)
    return tx


@pytest.mark.parametrize("code", ALL_CODES, ids=lambda c: c.name)
def test_commit_reading_of_every_code(code: XaCode) -> None:
    tx = _committing()
    effects = sm.phase_two_result(tx, "b0", Phase.COMMIT, code)
    branch = tx.branches["b0"]
    assert branch.last_code in (code, XaCode.XA_HEURRB)
    if code in (XaCode.XA_OK, XaCode.XAER_NOTA):
        assert branch.status == B.COMMITTED and tx.status == S.COMMITTED
        assert effects == [sm.Finished(S.COMMITTED)]
        assert sm.outcome(tx, Phase.COMMIT) == TxOutcome.TX_OK
    elif code in RETRY_CODES:
        assert branch.status == B.PREPARED and tx.status == S.COMMITTING and effects == []
        assert sm.pending_branches(tx) == ("b0",)  # retried, forever: the decision is durable
    elif code in HEUR_STATUS:
        assert branch.status == HEUR_STATUS[code] and tx.status == S.HEURISTICALLY_COMPLETED
        expected = {
            XaCode.XA_HEURCOM: TxOutcome.TX_OK,
            XaCode.XA_HEURRB: TxOutcome.TX_MIXED,
            XaCode.XA_HEURMIX: TxOutcome.TX_MIXED,
            XaCode.XA_HEURHAZ: TxOutcome.TX_HAZARD,
        }[code]
        assert sm.outcome(tx, Phase.COMMIT) == expected
    elif code in RB_CODES:
        # A prepared branch rolled back on its own against a commit decision: heuristic.
        assert branch.status == B.HEURISTICALLY_ROLLEDBACK and tx.status == S.HEURISTICALLY_COMPLETED
        assert sm.outcome(tx, Phase.COMMIT) == TxOutcome.TX_MIXED
    else:
        assert code in (XaCode.XA_RDONLY, XaCode.XA_NOMIGRATE)
        assert branch.status == B.COMMITTED


@pytest.mark.parametrize("code", ALL_CODES, ids=lambda c: c.name)
def test_rollback_reading_of_every_code(code: XaCode) -> None:
    tx = in_status(S.ROLLINGBACK)
    effects = sm.phase_two_result(tx, "b0", Phase.ROLLBACK, code)
    branch = tx.branches["b0"]
    if code in RETRY_CODES:
        assert branch.status == B.PREPARED and tx.status == S.ROLLINGBACK and effects == []
    elif code in HEUR_STATUS:
        assert branch.status == HEUR_STATUS[code] and tx.status == S.HEURISTICALLY_COMPLETED
        expected = {
            # b1 voted no and is rolled back: b0 heuristically committed makes it part of each.
            XaCode.XA_HEURCOM: TxOutcome.TX_MIXED,
            XaCode.XA_HEURRB: TxOutcome.TX_OK,
            XaCode.XA_HEURMIX: TxOutcome.TX_MIXED,
            XaCode.XA_HEURHAZ: TxOutcome.TX_HAZARD,
        }[code]
        assert sm.outcome(tx, Phase.ROLLBACK) == expected
    else:
        # XA_OK, XAER_NOTA (already gone) and XA_RB* all mean the branch is rolled back.
        assert branch.status == B.ROLLEDBACK and tx.status == S.ROLLEDBACK
        assert sm.outcome(tx, Phase.ROLLBACK) == TxOutcome.TX_OK
        assert sm.outcome(tx, Phase.COMMIT) == TxOutcome.TX_ROLLBACK


def test_a_rollback_every_branch_of_which_committed_heuristically_answers_tx_committed() -> None:
    """Found by a newcomer: TX_COMMITTED was also the answer when another branch had been rolled
    back (its no vote), which is a mixed outcome (``tx_rollback``: TX_MIXED, partly committed and
    partly rolled back; TX_COMMITTED, heuristically committed)."""
    tx = _tx()
    sm.request_commit(tx)
    sm.prepare_result(tx, "b0", XaCode.XA_OK)
    sm.request_rollback(tx, "operator")  # while b1 still prepares: Preparing allows it
    sm.prepare_result(tx, "b1", XaCode.XA_OK)  # its yes comes after: it is owed a rollback too
    for bqual in tx.branches:
        sm.phase_two_result(tx, bqual, Phase.ROLLBACK, XaCode.XA_HEURCOM)
    assert tx.status == S.HEURISTICALLY_COMPLETED
    assert sm.outcome(tx, Phase.ROLLBACK) == TxOutcome.TX_COMMITTED


@pytest.mark.parametrize("code", ALL_CODES, ids=lambda c: c.name)
def test_one_phase_reading_of_every_code(code: XaCode) -> None:
    tx = _committing(one_phase=True)
    sm.begin_attempt(tx, "b0", Phase.ONE_PHASE_COMMIT)
    sm.phase_two_result(tx, "b0", Phase.ONE_PHASE_COMMIT, code)
    branch = tx.branches["b0"]
    if code in RETRY_CODES and code != XaCode.XAER_RMERR:
        # Unknown whether the RM committed: retried, and no answer may claim a commit yet.
        assert tx.status == S.COMMITTING and branch.status == B.ENLISTED
        assert sm.outcome(tx, Phase.COMMIT) == TxOutcome.TX_HAZARD
    elif code in HEUR_STATUS:
        assert tx.status == S.HEURISTICALLY_COMPLETED
    elif code in RB_CODES or code in (XaCode.XAER_NOTA, XaCode.XAER_RMERR):
        # First attempt: the RM did not commit (voted no, never knew the branch, or failed and
        # rolled the work back, which is what XAER_RMERR from a one-phase commit means).
        assert branch.status == B.ROLLEDBACK and tx.status == S.ROLLEDBACK
        assert sm.outcome(tx, Phase.COMMIT) == TxOutcome.TX_ROLLBACK
    else:
        assert branch.status == B.COMMITTED and tx.status == S.COMMITTED


#: The tx.h answer to a commit and to a rollback request, by the status the transaction is in
#: when the answer is given (the two-branch transactions of ``in_status``).
OUTCOME_TABLE = {
    S.CREATED: (TxOutcome.TX_ROLLBACK, TxOutcome.TX_OK),
    S.MARKED_ROLLBACK: (TxOutcome.TX_ROLLBACK, TxOutcome.TX_OK),
    S.PREPARING: (TxOutcome.TX_HAZARD, TxOutcome.TX_HAZARD),
    S.PREPARED: (TxOutcome.TX_HAZARD, TxOutcome.TX_HAZARD),
    S.COMMITTING: (TxOutcome.TX_OK, TxOutcome.TX_COMMITTED),
    S.COMMITTED: (TxOutcome.TX_OK, TxOutcome.TX_COMMITTED),
    S.ROLLINGBACK: (TxOutcome.TX_ROLLBACK, TxOutcome.TX_OK),
    S.ROLLEDBACK: (TxOutcome.TX_ROLLBACK, TxOutcome.TX_OK),
    S.HEURISTICALLY_COMPLETED: (TxOutcome.TX_MIXED, TxOutcome.TX_MIXED),
}


@pytest.mark.parametrize("status", list(S))
def test_answers_claim_only_what_is_known(status: S) -> None:
    """TX_OK for a commit only once the decision is durable; undecided is TX_HAZARD (unknown)."""
    tx = in_status(status)
    assert (sm.outcome(tx, Phase.COMMIT), sm.outcome(tx, Phase.ROLLBACK)) == OUTCOME_TABLE[status]
    assert sm.outcome_known(tx) == (status not in (S.PREPARING, S.PREPARED))


def test_one_phase_commit_is_unknown_until_its_branch_answers() -> None:
    tx = _committing(one_phase=True)
    assert tx.status == S.COMMITTING and not sm.outcome_known(tx)
    assert sm.outcome(tx, Phase.COMMIT) == TxOutcome.TX_HAZARD
    sm.begin_attempt(tx, "b0", Phase.ONE_PHASE_COMMIT)
    sm.phase_two_result(tx, "b0", Phase.ONE_PHASE_COMMIT, XaCode.XA_OK)
    assert sm.outcome(tx, Phase.COMMIT) == TxOutcome.TX_OK


@pytest.mark.parametrize("recovered", [False, True])
def test_one_phase_nota_after_a_lost_reply_is_a_hazard(recovered: bool) -> None:
    """A one-phase branch is not prepared: NOTA after a lost reply cannot tell commit from loss."""
    tx = _committing(one_phase=True)
    sm.begin_attempt(tx, "b0", Phase.ONE_PHASE_COMMIT)
    if recovered:
        tx.recovered = True
    else:
        sm.phase_two_result(tx, "b0", Phase.ONE_PHASE_COMMIT, XaCode.XAER_RMFAIL)
        sm.begin_attempt(tx, "b0", Phase.ONE_PHASE_COMMIT)
    sm.phase_two_result(tx, "b0", Phase.ONE_PHASE_COMMIT, XaCode.XAER_NOTA)
    assert tx.status == S.HEURISTICALLY_COMPLETED
    assert tx.branches["b0"].last_code == XaCode.XA_HEURHAZ
    assert sm.outcome(tx, Phase.COMMIT) == TxOutcome.TX_HAZARD


def test_single_branch_sends_no_prepare_and_all_readonly_needs_no_decision() -> None:
    assert sm.request_commit(_tx(1)) == [sm.Send(Phase.ONE_PHASE_COMMIT, ("b0",))]
    tx = _tx(2)
    sm.request_commit(tx)
    sm.prepare_result(tx, "b0", XaCode.XA_RDONLY)
    assert sm.prepare_result(tx, "b1", XaCode.XA_RDONLY) == [sm.Finished(S.COMMITTED)]
    assert sm.request_commit(_tx(0)) == [sm.Finished(S.COMMITTED)]


def test_late_prepare_yes_after_rollback_is_rolled_back() -> None:
    tx = in_status(S.PREPARING)
    sm.request_rollback(tx)
    assert sm.prepare_result(tx, "b0", XaCode.XA_OK) == [sm.Send(Phase.ROLLBACK, ("b0",))]


def test_savepoints() -> None:
    tx = _tx(1)
    assert sm.create_savepoint(tx, "s1") == [sm.Send(Phase.SAVEPOINT, ("b0",), "s1")]
    sm.enlist(tx, "b1", "rm1", "127.0.0.1:2")
    sm.create_savepoint(tx, "s2")
    effects = sm.rollback_to_savepoint(tx, "s1")
    assert effects == [sm.Send(Phase.ROLLBACK, ("b1",)), sm.Send(Phase.ROLLBACK_TO_SAVEPOINT, ("b0",), "s1")]
    assert list(tx.savepoints) == ["s1"]
    sm.savepoint_dropped(tx, "b1", XaCode.XA_OK)
    assert list(tx.branches) == ["b0"]
    with pytest.raises(XatmError) as err:
        sm.rollback_to_savepoint(tx, "s2")
    assert err.value.status == Status.NOT_FOUND


def test_forget_only_heuristic_branches() -> None:
    tx = in_status(S.HEURISTICALLY_COMPLETED)
    assert sm.forget(tx) == [sm.Send(Phase.FORGET, ("b1",))]


# ------------------------------------------------------------------ random protocol runs


class ProtocolRuns(RuleBasedStateMachine):
    """Random interleavings of answers and requests; the invariants of atomicity must hold."""

    def __init__(self) -> None:
        super().__init__()
        self.tx = _tx(3)
        self.commit_sent: set[str] = set()
        self.rollback_sent: set[str] = set()

    def _apply(self, effects: list[sm.Effect]) -> None:
        for effect in effects:
            if isinstance(effect, sm.Send) and effect.phase in (Phase.COMMIT, Phase.ONE_PHASE_COMMIT):
                self.commit_sent.update(effect.bquals)
            elif isinstance(effect, sm.Send) and effect.phase == Phase.ROLLBACK:
                self.rollback_sent.update(effect.bquals)
            elif isinstance(effect, sm.ForceDecision):
                assert all(b.status in (B.PREPARED, B.COMMITTED) for b in self.tx.branches.values())
                self._apply(sm.decision_durable(self.tx))

    @rule()
    def commit(self) -> None:
        self._apply(sm.request_commit(self.tx))

    @rule()
    def rollback(self) -> None:
        try:
            self._apply(sm.request_rollback(self.tx))
        except XatmError:
            assert self.tx.status not in (S.CREATED, S.PREPARING, S.ROLLINGBACK)

    @rule()
    def timeout(self) -> None:
        self._apply(sm.timeout(self.tx))

    @precondition(lambda self: self.tx.awaiting_prepare)
    @rule(data=st.data(), code=st.sampled_from(ALL_CODES))
    def prepare_answer(self, data: st.DataObject, code: XaCode) -> None:
        bqual = data.draw(st.sampled_from(sorted(self.tx.awaiting_prepare)))
        self._apply(sm.prepare_result(self.tx, bqual, code))

    @precondition(lambda self: sm.pending_branches(self.tx))
    @rule(data=st.data(), code=st.sampled_from(ALL_CODES))
    def phase_two_answer(self, data: st.DataObject, code: XaCode) -> None:
        bqual = data.draw(st.sampled_from(sm.pending_branches(self.tx)))
        phase = Phase.ROLLBACK if self.tx.status == S.ROLLINGBACK else Phase.COMMIT
        self._apply(sm.phase_two_result(self.tx, bqual, phase, code))

    @rule(fail=st.booleans())
    def late_report(self, fail: bool) -> None:
        """Branches reported to the initiator arrive (Commit, or a retried one) at any moment."""
        bqual, before = f"r{len(self.tx.branches)}", self.tx.status
        try:
            late = [(bqual, "rm-late", "127.0.0.1:1")]
            effects = sm.report_branches(self.tx, late, "failed" if fail else "")
        except XatmError:
            assert before not in (S.CREATED, S.MARKED_ROLLBACK) and self.tx.decision is not Decision.ROLLBACK
            assert bqual not in self.tx.branches
            return
        self._apply(effects)
        if bqual in self.tx.branches:
            assert before in (S.CREATED, S.MARKED_ROLLBACK)
        else:
            assert self.tx.decision is Decision.ROLLBACK

    @invariant()
    def never_both_directions(self) -> None:
        assert not (self.commit_sent and self.rollback_sent)

    @invariant()
    def final_statuses_are_consistent(self) -> None:
        statuses = {b.status for b in self.tx.branches.values()}
        if self.tx.status == S.COMMITTED:
            assert statuses == {B.COMMITTED}
        if self.tx.status == S.ROLLEDBACK:
            assert all(
                b.status == B.ROLLEDBACK or b.last_code == XaCode.XA_RDONLY for b in self.tx.branches.values()
            )


TestProtocolRuns = ProtocolRuns.TestCase
TestProtocolRuns.settings = settings(max_examples=300, stateful_step_count=30, deadline=None)


# ------------------------------------------------------------------ participants that move, report or vanish

MOVED = "127.0.0.1:9100"
# What moving b0 to MOVED sends in each status; None: the endpoint is left alone (nothing is called
# any more in Committed or Rolledback).
MOVE_SENDS: dict[S, list[sm.Send] | None] = {
    S.CREATED: [],
    S.MARKED_ROLLBACK: [],
    S.PREPARING: [],
    S.PREPARED: [],
    S.COMMITTING: [sm.Send(Phase.COMMIT, ("b0",))],
    S.COMMITTED: None,
    S.ROLLINGBACK: [sm.Send(Phase.ROLLBACK, ("b0",))],
    S.ROLLEDBACK: None,
    S.HEURISTICALLY_COMPLETED: [],
}


@pytest.mark.parametrize("status", list(S))
def test_branch_moved_in_every_status(status: S) -> None:
    tx = in_status(status)
    before = copy.deepcopy(tx)
    effects = sm.branch_moved(tx, "b0", "rm0", MOVED)
    assert tx.status == status
    assert tx.branches["b1"] == before.branches["b1"]
    if MOVE_SENDS[status] is None:
        assert effects == [] and tx == before
    else:
        assert effects == MOVE_SENDS[status]
        assert tx.branches["b0"].endpoint == MOVED
        assert sm.branch_moved(tx, "b0", "rm0", MOVED) == [], "the same endpoint again changes nothing"


def test_branch_moved_one_phase_redrives_the_one_phase_commit() -> None:
    tx = _tx(1)
    sm.request_commit(tx)
    assert sm.branch_moved(tx, "b0", "rm0", MOVED) == [sm.Send(Phase.ONE_PHASE_COMMIT, ("b0",))]


def test_branch_moved_refuses_another_rm_and_unknown_branches() -> None:
    tx = in_status(S.COMMITTING)
    before = copy.deepcopy(tx)
    with pytest.raises(XatmError) as err:
        sm.branch_moved(tx, "b0", "rm1", MOVED)
    assert err.value.status == Status.INVALID_ARGUMENT and "rm0" in err.value.message
    with pytest.raises(XatmError) as err:
        sm.branch_moved(tx, "nope", "rm0", MOVED)
    assert err.value.status == Status.NOT_FOUND
    assert tx == before


def test_owed_phase_in_every_status() -> None:
    owed = {status: sm.owed_phase(in_status(status)) for status in S}
    assert owed == {
        S.CREATED: None,
        S.MARKED_ROLLBACK: None,
        S.PREPARING: None,
        S.PREPARED: None,
        S.COMMITTING: Phase.COMMIT,
        S.COMMITTED: None,
        S.ROLLINGBACK: Phase.ROLLBACK,
        S.ROLLEDBACK: None,
        S.HEURISTICALLY_COMPLETED: None,
    }


@pytest.mark.parametrize("status", list(S))
@pytest.mark.parametrize("phase", [Phase.COMMIT, Phase.ROLLBACK])
def test_outcome_reported_in_every_status(status: S, phase: Phase) -> None:
    tx = in_status(status)
    before = copy.deepcopy(tx)
    accepted = {(S.COMMITTING, Phase.COMMIT): S.COMMITTING, (S.ROLLINGBACK, Phase.ROLLBACK): S.ROLLEDBACK}
    refused = {(S.COMMITTING, Phase.ROLLBACK), (S.ROLLINGBACK, Phase.COMMIT)}
    if (status, phase) in refused:
        with pytest.raises(XatmError) as err:
            sm.outcome_reported(tx, "b0", "rm0", phase, XaCode.XA_OK, "applied")
        assert err.value.status == Status.FAILED_PRECONDITION
        assert status.label in err.value.message
        assert tx == before
    elif (status, phase) in accepted:
        sm.outcome_reported(tx, "b0", "rm0", phase, XaCode.XA_OK, "applied")
        assert tx.status == accepted[(status, phase)]
        branch = tx.branches["b0"]
        assert (branch.last_phase, branch.last_code, branch.last_reason) == (phase, XaCode.XA_OK, "applied")
        assert branch.status == (B.COMMITTED if phase == Phase.COMMIT else B.ROLLEDBACK)
    else:
        # Nothing owed by b0: a repeated or late report changes nothing.
        assert sm.outcome_reported(tx, "b0", "rm0", phase, XaCode.XA_OK, "applied") == []
        assert tx == before


@pytest.mark.parametrize("code", ALL_CODES, ids=lambda c: c.name)
def test_outcome_reported_reads_every_code_like_a_phase_two_answer(code: XaCode) -> None:
    reported, answered = in_status(S.COMMITTING), in_status(S.COMMITTING)
    assert sm.outcome_reported(reported, "b0", "rm0", Phase.COMMIT, code, "r") == sm.phase_two_result(
        answered, "b0", Phase.COMMIT, code, "r"
    )
    assert reported == answered


def test_outcome_reported_finishes_the_transaction() -> None:
    tx = in_status(S.COMMITTING)
    sm.phase_two_result(tx, "b1", Phase.COMMIT, XaCode.XA_OK)
    assert sm.outcome_reported(tx, "b0", "rm0", Phase.COMMIT, XaCode.XAER_NOTA) == [sm.Finished(S.COMMITTED)]
    assert tx.branches["b0"].status == B.COMMITTED and sm.pending_branches(tx) == ()
    with pytest.raises(XatmError) as err:
        sm.outcome_reported(tx, "nope", "rm0", Phase.COMMIT, XaCode.XA_OK)
    assert err.value.status == Status.NOT_FOUND


def test_outcome_reported_by_another_rm_is_refused() -> None:
    tx = in_status(S.COMMITTING)
    before = copy.deepcopy(tx)
    with pytest.raises(XatmError) as err:
        sm.outcome_reported(tx, "b0", "rm1", Phase.COMMIT, XaCode.XA_OK)
    assert err.value.status == Status.INVALID_ARGUMENT and "rm0" in err.value.message
    assert tx == before


# The branch status and recorded (phase, code) of b0 after an operator states its outcome.
RESOLVED = {
    (S.COMMITTING, True): (B.HEURISTICALLY_COMPLETED, Phase.COMMIT, XaCode.XA_HEURCOM),
    (S.COMMITTING, False): (B.HEURISTICALLY_ROLLEDBACK, Phase.COMMIT, XaCode.XA_HEURRB),
    (S.ROLLINGBACK, True): (B.HEURISTICALLY_COMPLETED, Phase.ROLLBACK, XaCode.XA_HEURCOM),
    (S.ROLLINGBACK, False): (B.HEURISTICALLY_ROLLEDBACK, Phase.ROLLBACK, XaCode.XA_HEURRB),
}


@pytest.mark.parametrize("status", list(S))
@pytest.mark.parametrize("committed", [True, False])
def test_resolve_branch_in_every_status(status: S, committed: bool) -> None:
    tx = in_status(status)
    before = copy.deepcopy(tx)
    if (status, committed) not in RESOLVED:
        with pytest.raises(XatmError) as err:
            sm.resolve_branch(tx, "b0", committed, "rm gone")
        assert err.value.status == Status.FAILED_PRECONDITION
        assert status.label in err.value.message and "Committing, Rollingback" in err.value.message
        assert tx == before
        return
    effects = sm.resolve_branch(tx, "b0", committed, "rm gone")
    branch = tx.branches["b0"]
    assert (branch.status, branch.last_phase, branch.last_code) == RESOLVED[(status, committed)]
    assert branch.last_reason == "rm gone"
    if status == S.COMMITTING:
        # b1 still owes its commit answer: the transaction waits for it, then ends heuristic.
        assert effects == [] and tx.status == S.COMMITTING and sm.pending_branches(tx) == ("b1",)
        effects = sm.phase_two_result(tx, "b1", Phase.COMMIT, XaCode.XA_OK)
    assert effects == [sm.Finished(S.HEURISTICALLY_COMPLETED)]
    assert tx.status == S.HEURISTICALLY_COMPLETED
    assert sm.forget(tx) == [sm.Send(Phase.FORGET, ("b0",))]


def test_resolve_branch_refuses_an_acknowledged_or_unknown_branch() -> None:
    tx = in_status(S.COMMITTING)
    sm.phase_two_result(tx, "b1", Phase.COMMIT, XaCode.XA_OK)
    before = copy.deepcopy(tx)
    with pytest.raises(XatmError) as err:
        sm.resolve_branch(tx, "b1", True, "x")
    assert err.value.status == Status.FAILED_PRECONDITION
    assert "Committed" in err.value.message and "Committing or Rollingback" in err.value.message
    with pytest.raises(XatmError) as err:
        sm.resolve_branch(tx, "nope", True, "x")
    assert err.value.status == Status.NOT_FOUND
    assert tx == before


def test_resolve_branch_of_a_one_phase_commit() -> None:
    tx = _tx(1)
    sm.request_commit(tx)
    assert sm.resolve_branch(tx, "b0", True, "rm gone") == [sm.Finished(S.HEURISTICALLY_COMPLETED)]
    assert tx.branches["b0"].last_phase == Phase.ONE_PHASE_COMMIT
