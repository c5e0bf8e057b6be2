"""Rollback, rollback-only marks, timeouts, force commit and heuristic outcomes through the engine."""

from __future__ import annotations

import asyncio

import pytest

from tests.component.conftest import Rig, endpoint, until, with_settings
from tests.component.fakes import DEADLINE_REASON, Answer
from xatm.coordinator.protocol import Refused
from xatm.participant.errors import Status, XatmError
from xatm.participant.xa import BranchStatus as B
from xatm.participant.xa import Phase, TxOutcome, XaCode
from xatm.participant.xa import TxStatus as S


async def test_rollback_calls_every_branch_and_ends_rolledback(rig: Rig) -> None:
    engine = await rig.start()
    tx = await rig.tx("a", "b")
    result = await engine.rollback(tx.gtrid, "changed my mind")
    assert (result.outcome, tx.status) == (TxOutcome.TX_OK, S.ROLLEDBACK)
    assert sorted(c.xid.bqual for c in rig.peers.sent(Phase.ROLLBACK)) == ["a", "b"]
    assert rig.peers.sent(Phase.PREPARE) == []
    assert rig.ended(tx.gtrid) == [S.ROLLEDBACK]
    # A commit after the rollback reads the outcome: rolled back.
    assert (await engine.commit(tx.gtrid)).outcome == TxOutcome.TX_ROLLBACK


async def test_rollback_is_retried_until_acknowledged(rig: Rig) -> None:
    engine = await rig.start()
    rig.peers.answer(endpoint("a"), Phase.ROLLBACK, XaCode.XAER_RMFAIL, XaCode.XA_OK)
    tx = await rig.tx("a")
    await engine.rollback(tx.gtrid)
    await until("rolled back", lambda: tx.status == S.ROLLEDBACK)
    assert len(rig.peers.sent(Phase.ROLLBACK, "a")) == 2


async def test_the_rollback_rule_refuses_once_decided_and_sends_nothing(rig: Rig) -> None:
    engine = await rig.start()
    tx, commit = await rig.deciding()
    with pytest.raises(Refused) as err:
        await engine.rollback(tx.gtrid)
    assert err.value.status == Status.FAILED_PRECONDITION and "Prepared" in err.value.message
    rig.log.release()
    await commit
    for status_now in (S.COMMITTED,):
        assert tx.status == status_now
        with pytest.raises(Refused):
            await engine.rollback(tx.gtrid)
    assert rig.peers.sent(Phase.ROLLBACK) == []
    assert rig.ended(tx.gtrid) == [S.COMMITTED]


async def test_rollback_only_makes_commit_roll_back_without_prepare(rig: Rig) -> None:
    engine = await rig.start()
    tx = await rig.tx("a", "b")
    await engine.mark_rollback_only(tx.gtrid, "handler failed")
    await engine.mark_rollback_only(tx.gtrid, "second reason")  # the first reason is kept
    assert (tx.status, tx.rollback_reason) == (S.MARKED_ROLLBACK, "handler failed")
    assert rig.records(tx.gtrid) == []  # still undecided: a restart would presume abort anyway
    with pytest.raises(Refused):
        await engine.enlist(tx.gtrid, "c", "rm-c", endpoint("c"))
    result = await engine.commit(tx.gtrid)
    assert (result.outcome, tx.status, tx.rollback_code) == (
        TxOutcome.TX_ROLLBACK,
        S.ROLLEDBACK,
        XaCode.XA_RBROLLBACK,
    )
    assert rig.peers.sent(Phase.PREPARE) == [] and len(rig.peers.sent(Phase.ROLLBACK)) == 2


async def test_the_transaction_timeout_rolls_back(rig: Rig) -> None:
    engine = await rig.start()
    tx = await rig.tx("a", timeout_ms=50)
    await until("rolled back by the timer", lambda: tx.status == S.ROLLEDBACK)
    assert tx.rollback_code == XaCode.XA_RBTIMEOUT and "50 ms" in tx.rollback_reason
    assert [c.phase for c in rig.peers.calls] == [Phase.ROLLBACK]
    assert (await engine.commit(tx.gtrid)).outcome == TxOutcome.TX_ROLLBACK


@with_settings(call_timeout=5.0)
async def test_a_prepare_past_the_transaction_deadline_votes_no(rig: Rig) -> None:
    engine = await rig.start()
    never = asyncio.Event()
    rig.peers.answer(endpoint("b"), Phase.PREPARE, Answer(until=never))
    tx = await rig.tx("a", "b", timeout_ms=300)
    result = await engine.commit(tx.gtrid)
    await until("rolled back", lambda: tx.status == S.ROLLEDBACK)
    # The prepare's deadline is what is left of the transaction's, not the 5 s call timeout.
    assert all(c.timeout <= 0.3 for c in rig.peers.sent(Phase.PREPARE))
    assert result.outcome == TxOutcome.TX_ROLLBACK
    # Whichever ends first, the transaction's timer or the call's deadline, the vote is no.
    assert tx.rollback_code in (XaCode.XA_RBTIMEOUT, XaCode.XAER_RMFAIL)
    assert sorted(c.xid.bqual for c in rig.peers.sent(Phase.ROLLBACK)) == ["a", "b"]


async def test_a_prepare_past_the_call_timeout_votes_no(rig: Rig) -> None:
    engine = await rig.start()
    rig.peers.answer(endpoint("a"), Phase.PREPARE, Answer(delay=5.0))
    tx = await rig.tx("a", "b")
    result = await engine.commit(tx.gtrid)
    assert result.outcome == TxOutcome.TX_ROLLBACK
    assert (tx.rollback_code, tx.rollback_reason) == (XaCode.XAER_RMFAIL, DEADLINE_REASON)
    assert rig.peers.sent(Phase.PREPARE, "a")[0].timeout == pytest.approx(0.5)


@with_settings(commit_wait=0.1)
async def test_an_unreachable_participant_votes_no(rig: Rig) -> None:
    engine = await rig.start()
    rig.peers.unreachable(endpoint("b"))
    tx = await rig.tx("a", "b")
    result = await engine.commit(tx.gtrid)
    assert result.outcome == TxOutcome.TX_ROLLBACK and tx.status == S.ROLLINGBACK  # b still owes its ack
    rig.peers.unreachable(endpoint("b"), down=False)
    await until("rolled back", lambda: tx.status == S.ROLLEDBACK)


async def test_force_commit_runs_two_phase_commit_from_created(rig: Rig) -> None:
    engine = await rig.start()
    tx = await rig.tx("a", "b")
    result = await engine.force_commit(tx.gtrid)
    assert (result.outcome, tx.status) == (TxOutcome.TX_OK, S.COMMITTED)
    assert len(rig.records(tx.gtrid, "decision")) == 1


@with_settings(retry_initial=60.0, retry_max=60.0, commit_wait=0.1)
async def test_force_commit_redrives_a_waiting_branch_at_once(rig: Rig) -> None:
    engine = await rig.start()
    rig.peers.answer(endpoint("b"), Phase.COMMIT, XaCode.XAER_RMFAIL, XaCode.XA_OK)
    tx = await rig.tx("a", "b")
    await engine.commit(tx.gtrid)
    assert tx.status == S.COMMITTING and len(rig.peers.sent(Phase.COMMIT, "b")) == 1  # backing off 60 s
    result = await engine.force_commit(tx.gtrid)
    await until("committed well before the 60 s backoff ends", lambda: tx.status == S.COMMITTED)
    assert result.outcome == TxOutcome.TX_OK and len(rig.peers.sent(Phase.COMMIT, "b")) == 2


@pytest.mark.parametrize(
    ("first", "refused", "never"),
    [
        ("rollback", "force_commit", {Phase.COMMIT, Phase.ONE_PHASE_COMMIT}),
        ("commit", "forget", {Phase.FORGET}),
    ],
)
async def test_a_verb_refused_in_the_status_reached_sends_nothing(
    rig: Rig, first: str, refused: str, never: set[Phase]
) -> None:
    engine = await rig.start()
    tx = await rig.tx("a")
    await getattr(engine, first)(tx.gtrid)
    with pytest.raises(Refused):
        await getattr(engine, refused)(tx.gtrid)
    assert engine.get(tx.gtrid) is tx and not [c for c in rig.peers.calls if c.phase in never]


@pytest.mark.parametrize(
    ("code", "outcome"),
    [
        (XaCode.XA_HEURRB, TxOutcome.TX_MIXED),
        (XaCode.XA_HEURMIX, TxOutcome.TX_MIXED),
        (XaCode.XA_HEURHAZ, TxOutcome.TX_HAZARD),
        (XaCode.XA_HEURCOM, TxOutcome.TX_OK),
    ],
)
async def test_a_heuristic_answer_ends_heuristically_completed_until_forgotten(
    rig: Rig, code: XaCode, outcome: TxOutcome
) -> None:
    engine = await rig.start()
    rig.peers.answer(endpoint("b"), Phase.COMMIT, code)
    tx = await rig.tx("a", "b")
    result = await engine.commit(tx.gtrid)
    assert (result.outcome, tx.status) == (outcome, S.HEURISTICALLY_COMPLETED)
    assert rig.ended(tx.gtrid) == [S.HEURISTICALLY_COMPLETED]
    await engine.forget(tx.gtrid)
    assert [(c.xid.bqual, c.phase) for c in rig.peers.sent(Phase.FORGET)] == [("b", Phase.FORGET)]
    assert rig.kinds(tx.gtrid)[-2:] == ["branch_result", "forget"]
    with pytest.raises(XatmError) as gone:
        engine.get(tx.gtrid)
    assert gone.value.status == Status.NOT_FOUND


async def test_a_savepoint_is_sent_to_the_branches_and_rolled_back_to(rig: Rig) -> None:
    engine = await rig.start()
    tx = await rig.tx("a")
    sp = await engine.create_savepoint(tx.gtrid)
    assert [(c.xid.bqual, c.savepoint_id) for c in rig.peers.sent(Phase.SAVEPOINT)] == [("a", sp)]
    await engine.enlist(tx.gtrid, "b", "rm-b", endpoint("b"))
    await engine.rollback_to_savepoint(tx.gtrid, sp)
    # b joined after the savepoint: rolled back and gone; a goes back to the savepoint.
    assert [c.xid.bqual for c in rig.peers.sent(Phase.ROLLBACK)] == ["b"]
    assert [(c.xid.bqual, c.savepoint_id) for c in rig.peers.sent(Phase.ROLLBACK_TO_SAVEPOINT)] == [("a", sp)]
    assert list(tx.branches) == ["a"]
    saved = rig.records(tx.gtrid, "savepoint")
    assert [(r.savepoint.savepoint_id, r.savepoint.rolled_back) for r in saved] == [(sp, False), (sp, True)]
    assert (await engine.commit(tx.gtrid)).outcome == TxOutcome.TX_OK
    assert [c.phase for c in rig.peers.sent(bqual="a")][-1] == Phase.ONE_PHASE_COMMIT


async def test_a_failed_savepoint_marks_the_transaction_rollback_only(rig: Rig) -> None:
    engine = await rig.start()
    rig.peers.answer(endpoint("b"), Phase.SAVEPOINT, Answer(XaCode.XAER_RMERR, "no savepoints here"))
    tx = await rig.tx("a", "b")
    with pytest.raises(XatmError) as err:
        await engine.create_savepoint(tx.gtrid)
    assert err.value.status == Status.FAILED_PRECONDITION and "no savepoints here" in err.value.message
    assert tx.status == S.MARKED_ROLLBACK
    assert (await engine.commit(tx.gtrid)).outcome == TxOutcome.TX_ROLLBACK


@with_settings(commit_wait=0.1)
async def test_resolve_branch_closes_a_branch_by_hand(rig: Rig) -> None:
    engine = await rig.start()
    rig.peers.unreachable(endpoint("b"))
    tx = await rig.tx("a", "b")
    rig.peers.unreachable(endpoint("b"), down=False)
    rig.peers.answer(endpoint("b"), Phase.COMMIT, XaCode.XAER_RMFAIL)
    await engine.commit(tx.gtrid)
    assert tx.status == S.COMMITTING
    with pytest.raises(Refused):
        await engine.resolve_branch(tx.gtrid, "a", True, "a answered already")
    result = await engine.resolve_branch(tx.gtrid, "b", True, "restored from backup")
    assert (result.outcome, tx.status) == (TxOutcome.TX_OK, S.HEURISTICALLY_COMPLETED)
    assert tx.branches["b"].status == B.HEURISTICALLY_COMPLETED
    closing = rig.answers(tx.gtrid, "b")[-1]
    assert (XaCode(closing.code), closing.reason) == (XaCode.XA_HEURCOM, "restored from backup")


async def test_an_operators_rollback_keeps_who_and_why_as_the_rollback_reason(rig: Rig) -> None:
    """The initiator that commits afterwards, and `xactl show`, read who rolled it back and why."""
    engine = await rig.start()
    tx = await rig.tx("a", "b")
    await engine.rollback(tx.gtrid, "forced by alice: wrong amount", code=XaCode.XA_RBROLLBACK)
    assert (tx.status, tx.rollback_code, tx.rollback_reason) == (
        S.ROLLEDBACK,
        XaCode.XA_RBROLLBACK,
        "forced by alice: wrong amount",
    )
    late = await engine.commit(tx.gtrid)
    assert (late.outcome, late.tx.rollback_reason) == (TxOutcome.TX_ROLLBACK, "forced by alice: wrong amount")
