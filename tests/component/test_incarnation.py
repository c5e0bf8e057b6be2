"""Gtrids carry the coordinator start (incarnation) they were made for: a restarted coordinator
never creates a transaction from a gtrid of an earlier start, whose eager enlistments it may have
forgotten (nothing is logged before the decision). Decided transactions replay as before."""

from __future__ import annotations

import pytest

from tests.component.conftest import NODE, Rig, endpoint, until
from xatm.coordinator.engine.core import RESTARTED
from xatm.participant.api.v1.xa_pb2 import BranchRef
from xatm.participant.errors import FailedPreconditionError, NotFoundError
from xatm.participant.xa import Phase, TxOutcome, XaCode, incarnation_of, new_gtrid
from xatm.participant.xa import TxStatus as S


def _refs(*bquals: str) -> list[BranchRef]:
    return [BranchRef(bqual=b, rm_id=f"rm-{b}", endpoint=endpoint(b)) for b in bquals]


async def _made_before_a_restart(rig: Rig) -> str:
    """A gtrid an initiator made for the engine's start, enlisted eagerly, then kill -9."""
    engine = await rig.start()
    gtrid = new_gtrid(NODE, engine.incarnation)
    assert await engine.enlist(gtrid, "eager", "rm-eager", endpoint("eager"), timeout_ms=5000) == XaCode.XA_OK
    restarted = await rig.restart()
    assert restarted.incarnation != engine.incarnation
    assert restarted.known(gtrid) is None  # undecided: the restart forgot it
    return gtrid


async def test_each_start_has_its_own_incarnation_and_the_gtrids_it_makes_carry_it(rig: Rig) -> None:
    engine = await rig.start()
    tx = await engine.begin()
    assert incarnation_of(tx.gtrid) == engine.incarnation and len(engine.incarnation) == 8
    assert (await rig.restart()).incarnation != engine.incarnation


async def test_a_commit_of_a_gtrid_made_before_a_restart_rolls_back_its_reported_branches(rig: Rig) -> None:
    gtrid = await _made_before_a_restart(rig)
    assert rig.engine is not None
    result = await rig.engine.commit(gtrid, 5000, _refs("a", "b"))
    assert (result.outcome, result.tx.status) == (TxOutcome.TX_ROLLBACK, S.ROLLEDBACK)
    assert result.tx.rollback_reason.startswith(RESTARTED)
    assert sorted((c.xid.bqual, c.phase) for c in rig.peers.calls) == [
        ("a", Phase.ROLLBACK),
        ("b", Phase.ROLLBACK),
    ]
    assert rig.records(gtrid, "decision") == []  # presumed abort: no forced write
    # A retried Commit reads the same outcome.
    assert (await rig.engine.commit(gtrid, 5000, _refs("a", "b"))).outcome == TxOutcome.TX_ROLLBACK
    assert len(rig.peers.calls) == 2


async def test_an_enlistment_naming_a_gtrid_made_before_a_restart_is_refused(rig: Rig) -> None:
    gtrid = await _made_before_a_restart(rig)
    assert rig.engine is not None
    with pytest.raises(FailedPreconditionError, match="restarted before the transaction was decided"):
        await rig.engine.enlist(gtrid, "late", "rm-late", endpoint("late"), timeout_ms=5000)
    with pytest.raises(FailedPreconditionError):
        await rig.engine.begin(5000, gtrid, _refs("a"))
    assert rig.engine.known(gtrid) is None  # nothing was created


async def test_a_rollback_of_a_gtrid_made_before_a_restart_is_answered_rolled_back(rig: Rig) -> None:
    gtrid = await _made_before_a_restart(rig)
    assert rig.engine is not None
    result = await rig.engine.rollback(gtrid, "asked", 5000, _refs("a"))
    assert (result.outcome, result.tx.status) == (TxOutcome.TX_OK, S.ROLLEDBACK)
    assert [(c.xid.bqual, c.phase) for c in rig.peers.calls] == [("a", Phase.ROLLBACK)]


async def test_gtrids_of_this_start_and_of_the_old_form_are_created_as_before(rig: Rig) -> None:
    engine = await rig.start()
    for gtrid in (new_gtrid(NODE, engine.incarnation), new_gtrid(NODE)):
        assert (await engine.commit(gtrid, 5000, _refs("a"))).outcome == TxOutcome.TX_OK
    other = new_gtrid("n2", "0" * 8)  # another node's: not this one to create, whatever its start
    with pytest.raises(NotFoundError):
        await engine.enlist(other, "a", "rm-a", endpoint("a"))


async def test_a_transaction_decided_before_a_restart_is_still_served(rig: Rig) -> None:
    engine = await rig.start()
    tx = await rig.tx("a", "b")
    assert (await engine.commit(tx.gtrid)).outcome == TxOutcome.TX_OK
    restarted = await rig.restart()
    again = await restarted.commit(tx.gtrid)  # a retried Commit reads the logged outcome
    assert (again.outcome, again.tx.status) == (TxOutcome.TX_OK, S.COMMITTED)
    assert {c.phase for c in rig.peers.calls} <= {Phase.COMMIT}  # phase two re-driven, nothing else


async def test_a_lone_branch_not_known_to_the_rollback_of_an_earlier_start_leaves_the_outcome_unknown(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    """The earlier start may have sent the lone branch a one-phase commit and logged nothing (no
    decision is forced for one phase), then died before its reply: the initiator asks again, and
    the participant's XAER_NOTA may mean "committed and forgotten". Found by a newcomer: this was
    answered rolled back while the row had committed."""
    gtrid = await _made_before_a_restart(rig)
    assert rig.engine is not None
    rig.peers.answer(endpoint("a"), Phase.ROLLBACK, XaCode.XAER_NOTA)
    result = await rig.engine.commit(gtrid, 5000, _refs("a"))
    assert (result.outcome, result.tx.status) == (TxOutcome.TX_HAZARD, S.HEURISTICALLY_COMPLETED)
    branch = result.tx.branches["a"]
    assert branch.last_code == XaCode.XA_HEURHAZ and "one phase" in branch.last_reason
    # An outcome an operator must look into is a warning, with the codes that make it one.
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and gtrid in r.getMessage()]
    assert any("HeuristicallyCompleted (a=XA_HEURHAZ)" in line for line in warned), warned


async def test_not_known_to_a_rollback_is_rolled_back_where_no_one_phase_commit_can_have_been(
    rig: Rig,
) -> None:
    """Two branches commit only after a logged decision; a lone branch of this start is this
    coordinator's own: XAER_NOTA to their rollback is rolled back, as before."""
    gtrid = await _made_before_a_restart(rig)
    engine = rig.engine
    assert engine is not None
    for bqual in ("a", "b", "c"):
        rig.peers.answer(endpoint(bqual), Phase.ROLLBACK, XaCode.XAER_NOTA)
    two = await engine.commit(gtrid, 5000, _refs("a", "b"))
    assert (two.outcome, two.tx.status) == (TxOutcome.TX_ROLLBACK, S.ROLLEDBACK)
    own = new_gtrid(NODE, engine.incarnation)
    lone = await engine.rollback(own, "asked", 5000, _refs("c"))
    assert (lone.outcome, lone.tx.status) == (TxOutcome.TX_OK, S.ROLLEDBACK)


async def test_the_unknown_outcome_rule_survives_another_restart_while_the_rollback_is_retried(
    rig: Rig,
) -> None:
    """Found by a review: the mark that a transaction was taken on from an earlier start's gtrid
    lived in memory only, so a restart while its lone branch's rollback was still retried made a
    later XAER_NOTA read as rolled back again."""
    gtrid = await _made_before_a_restart(rig)
    engine = rig.engine
    assert engine is not None
    rig.peers.answer(endpoint("a"), Phase.ROLLBACK, XaCode.XAER_RMFAIL)  # unreachable for now
    result = await engine.commit(gtrid, 5000, _refs("a"))
    assert result.tx.status == S.ROLLINGBACK and result.tx.inherited
    await engine.checkpoint()  # what it logged is on disk (a later forced write does the same)
    rig.peers.answer(endpoint("a"), Phase.ROLLBACK, XaCode.XAER_NOTA)
    again = (await rig.restart()).get(gtrid)
    assert again.inherited
    await until("an outcome", lambda: again.status != S.ROLLINGBACK)
    assert again.status == S.HEURISTICALLY_COMPLETED and again.branches["a"].last_code == XaCode.XA_HEURHAZ
