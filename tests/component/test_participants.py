"""What participants ask and tell the engine: outcome queries, re-registration, reported outcomes."""

from __future__ import annotations

import pytest

from tests.component.conftest import Rig, endpoint, until, with_settings
from xatm.coordinator.protocol import Refused
from xatm.participant.errors import Status, XatmError
from xatm.participant.xa import FORMAT_ID, Decision, Phase, XaCode, Xid
from xatm.participant.xa import TxStatus as S

#: Phase two of b fails and backs off for a minute: only a move or a report can finish it soon.
STUCK = {"retry_initial": 60.0, "retry_max": 60.0, "commit_wait": 0.1}


async def _stuck_on_b(rig: Rig) -> tuple[str, Xid]:
    """A two-phase commit decided, with b's commit failing at its old endpoint."""
    assert rig.engine is not None
    rig.peers.unreachable(endpoint("b"))
    tx = await rig.tx("a", "b")
    rig.peers.unreachable(endpoint("b"), down=False)
    rig.peers.answer(endpoint("b"), Phase.COMMIT, XaCode.XAER_RMFAIL)
    await rig.engine.commit(tx.gtrid)
    assert tx.status == S.COMMITTING
    return tx.gtrid, Xid(tx.gtrid, "b")


async def test_query_outcome_answers_by_presumed_abort(rig: Rig) -> None:
    engine = await rig.start()
    tx = await rig.tx("a", "b")
    assert engine.query_outcome(Xid(tx.gtrid, "a")) == Decision.PENDING
    assert engine.query_outcome(Xid(tx.gtrid, "zz")) == Decision.ROLLBACK  # never enlisted
    assert engine.query_outcome(Xid("n1.00ff", "a")) == Decision.ROLLBACK  # never begun (or forgotten)
    await engine.commit(tx.gtrid)
    assert engine.query_outcome(Xid(tx.gtrid, "a")) == Decision.COMMIT
    for foreign in (Xid("n2.00ff", "a"), Xid(tx.gtrid, "a", format_id=FORMAT_ID + 1)):
        with pytest.raises(XatmError) as err:
            engine.query_outcome(foreign)
        assert err.value.status == Status.INVALID_ARGUMENT


@with_settings(**STUCK)
async def test_a_re_registered_participant_gets_its_owed_call_at_once(rig: Rig) -> None:
    engine = await rig.start()
    gtrid, _ = await _stuck_on_b(rig)
    tx = engine.get(gtrid)
    assert await engine.register_participant("rm-b", "b-moved.test:1") == 1
    await until("committed well before the 60 s backoff ends", lambda: tx.status == S.COMMITTED)
    assert rig.peers.sent(Phase.COMMIT, "b")[-1].endpoint == "b-moved.test:1"
    moved = rig.records(gtrid, "endpoint")
    assert [(r.endpoint.bqual, r.endpoint.endpoint) for r in moved] == [("b", "b-moved.test:1")]
    assert moved[0] in rig.log.store.records  # forced: durable before the participant hears of it
    assert engine.endpoints == {endpoint("a"), "b-moved.test:1"}
    # Finished transactions stay where they were: nothing is called on them any more.
    assert await engine.register_participant("rm-b", "b-again.test:1") == 0


async def test_register_refuses_a_malformed_identity(rig: Rig) -> None:
    engine = await rig.start()
    with pytest.raises(XatmError) as err:
        await engine.register_participant("", "x.test:1")
    assert err.value.status == Status.INVALID_ARGUMENT


@with_settings(**STUCK)
async def test_an_outcome_query_naming_a_new_endpoint_moves_the_branch(rig: Rig) -> None:
    engine = await rig.start()
    gtrid, xid = await _stuck_on_b(rig)
    assert await engine.participant_query(xid, "rm-b", "b-new.test:1") == Decision.COMMIT
    await until("committed at the new endpoint", lambda: engine.get(gtrid).status == S.COMMITTED)
    assert engine.get(gtrid).branches["b"].endpoint == "b-new.test:1"
    # Another RM's claim, or no identity at all, moves nothing but still gets the outcome.
    assert await engine.participant_query(Xid(gtrid, "a"), "rm-b", "elsewhere.test:1") == Decision.COMMIT
    assert await engine.participant_query(Xid(gtrid, "a"), "", "") == Decision.COMMIT
    assert engine.get(gtrid).branches["a"].endpoint == endpoint("a")


@with_settings(**STUCK)
async def test_a_reported_outcome_acknowledges_the_branch(rig: Rig) -> None:
    engine = await rig.start()
    gtrid, xid = await _stuck_on_b(rig)
    tx = engine.get(gtrid)
    with pytest.raises(Refused):
        await engine.report_outcome(xid, "rm-b", Phase.ROLLBACK, XaCode.XA_OK, "")  # not what is owed
    with pytest.raises(XatmError) as other:
        await engine.report_outcome(xid, "rm-a", Phase.COMMIT, XaCode.XA_OK, "")
    assert other.value.status == Status.INVALID_ARGUMENT
    foreign = Xid(gtrid, "b", format_id=FORMAT_ID + 1)  # another transaction manager's branch
    with pytest.raises(XatmError) as alien:
        await engine.report_outcome(foreign, "rm-b", Phase.COMMIT, XaCode.XA_OK, "")
    assert alien.value.status == Status.INVALID_ARGUMENT
    assert tx.status == S.COMMITTING
    reported = await engine.report_outcome(xid, "rm-b", Phase.COMMIT, XaCode.XA_OK, "done")
    assert reported is tx and reported.status == S.COMMITTED
    assert rig.answers(gtrid, "b")[-1].reason == "applied by rm-b after asking the outcome: done"
    assert rig.ended(gtrid) == [S.COMMITTED]
    # Repeated, it changes nothing and logs nothing.
    before = len(rig.log.appended)
    await engine.report_outcome(xid, "rm-b", Phase.COMMIT, XaCode.XA_OK, "again")
    assert len(rig.log.appended) == before
