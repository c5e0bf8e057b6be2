"""Commit through the engine: what it logs, what it sends, and what it answers."""

from __future__ import annotations

import asyncio

import pytest

from tests.component.conftest import NODE, Rig, endpoint, until, with_settings
from tests.component.fakes import Answer
from xatm.coordinator.protocol import Refused
from xatm.participant.api.v1.xa_pb2 import BranchRef
from xatm.participant.errors import Status, XatmError
from xatm.participant.xa import BranchStatus as B
from xatm.participant.xa import Phase, TxOutcome, XaCode, new_gtrid
from xatm.participant.xa import TxStatus as S


async def test_two_phase_commit_logs_the_decision_before_phase_two(rig: Rig) -> None:
    await rig.start()
    tx, commit = await rig.deciding()
    await asyncio.sleep(0.05)  # time in which an engine not waiting for durability would call
    assert rig.peers.sent(Phase.COMMIT) == []  # no phase two before the decision is on disk
    assert rig.durable(tx.gtrid, "decision") == []
    rig.log.release()
    result = await commit
    assert (result.outcome, tx.status) == (TxOutcome.TX_OK, S.COMMITTED)
    assert [c.phase for c in rig.peers.sent(bqual="a")] == [Phase.PREPARE, Phase.COMMIT]
    assert [c.phase for c in rig.peers.sent(bqual="b")] == [Phase.PREPARE, Phase.COMMIT]
    assert all(c.endpoint == endpoint(c.xid.bqual) and c.xid.gtrid == tx.gtrid for c in rig.peers.calls)
    records = rig.records(tx.gtrid)
    first_commit = next(i for i, r in enumerate(records) if r.branch_result.phase == int(Phase.COMMIT))
    # Presumed abort: nothing before it prepares, then one snapshot naming every branch; the yes
    # votes travel in the decision; 5 records.
    results = ["branch_result"] * 2
    assert rig.kinds(tx.gtrid) == ["snapshot", "decision", *results, "end"]
    first = rig.records(tx.gtrid, "snapshot")[0].snapshot
    assert (S(first.status), [b.bqual for b in first.branches]) == (S.PREPARING, ["a", "b"])
    assert rig.kinds(tx.gtrid).index("decision") < first_commit
    assert rig.records(tx.gtrid, "status") == []  # Committing and Committed are the decision's and end's
    assert rig.ended(tx.gtrid) == [S.COMMITTED]
    (durable,) = rig.durable(tx.gtrid, "decision")
    # The decision alone is enough for recovery: status, timeout and every branch's endpoint.
    decided = durable.decision.transaction
    assert (S(decided.status), decided.timeout_ms) == (S.COMMITTING, tx.timeout_ms)
    assert [(b.bqual, b.endpoint, B(b.status)) for b in decided.branches] == [
        ("a", endpoint("a"), B.PREPARED),
        ("b", endpoint("b"), B.PREPARED),
    ]


async def test_one_branch_commits_in_one_phase_without_a_decision_record(rig: Rig) -> None:
    engine = await rig.start()
    tx = await rig.tx("a")
    result = await engine.commit(tx.gtrid)
    assert (result.outcome, tx.status, tx.one_phase) == (TxOutcome.TX_OK, S.COMMITTED, True)
    assert [c.phase for c in rig.peers.calls] == [Phase.ONE_PHASE_COMMIT]
    assert rig.records(tx.gtrid, "decision") == []


async def test_a_transaction_without_branches_commits_with_no_call(rig: Rig) -> None:
    engine = await rig.start()
    tx = await rig.tx()
    assert (await engine.commit(tx.gtrid)).outcome == TxOutcome.TX_OK
    assert tx.status == S.COMMITTED and rig.peers.calls == []


async def test_read_only_branches_get_no_phase_two(rig: Rig) -> None:
    engine = await rig.start()
    rig.peers.answer(endpoint("a"), Phase.PREPARE, XaCode.XA_RDONLY)
    tx = await rig.tx("a", "b")
    assert (await engine.commit(tx.gtrid)).outcome == TxOutcome.TX_OK
    assert [(c.xid.bqual, c.phase) for c in rig.peers.calls if c.phase != Phase.PREPARE] == [
        ("b", Phase.COMMIT)
    ]
    assert tx.branches["a"].status == B.COMMITTED and tx.status == S.COMMITTED


async def test_all_read_only_commits_with_no_decision_and_no_phase_two(rig: Rig) -> None:
    engine = await rig.start()
    for bqual in ("a", "b"):
        rig.peers.answer(endpoint(bqual), Phase.PREPARE, XaCode.XA_RDONLY)
    tx = await rig.tx("a", "b")
    assert (await engine.commit(tx.gtrid)).outcome == TxOutcome.TX_OK
    assert {c.phase for c in rig.peers.calls} == {Phase.PREPARE}
    assert rig.records(tx.gtrid, "decision") == [] and tx.status == S.COMMITTED
    # No decision carries the votes: each is written before the end.
    assert rig.kinds(tx.gtrid) == ["snapshot", "branch_result", "branch_result", "end"]
    assert [XaCode(rig.answers(tx.gtrid, q)[0].code) for q in "ab"] == [XaCode.XA_RDONLY] * 2


async def test_a_no_vote_rolls_back_the_yes_voters_only(rig: Rig) -> None:
    engine = await rig.start()
    rig.peers.answer(endpoint("b"), Phase.PREPARE, Answer(XaCode.XA_RBINTEGRITY, "constraint"))
    tx = await rig.tx("a", "b")
    result = await engine.commit(tx.gtrid)
    assert (result.outcome, tx.status) == (TxOutcome.TX_ROLLBACK, S.ROLLEDBACK)
    assert (tx.rollback_code, tx.rollback_reason) == (XaCode.XA_RBINTEGRITY, "constraint")
    assert [c.xid.bqual for c in rig.peers.sent(Phase.ROLLBACK)] == ["a"]
    assert rig.records(tx.gtrid, "decision") == []


async def test_a_repeated_commit_reads_the_same_outcome_and_sends_nothing_more(rig: Rig) -> None:
    engine = await rig.start()
    tx = await rig.tx("a", "b")
    await engine.commit(tx.gtrid)
    sent = len(rig.peers.calls)
    assert (await engine.commit(tx.gtrid)).outcome == TxOutcome.TX_OK
    assert len(rig.peers.calls) == sent


async def test_phase_two_is_retried_until_acknowledged(rig: Rig) -> None:
    engine = await rig.start()
    rig.peers.answer(endpoint("b"), Phase.COMMIT, XaCode.XAER_RMFAIL, XaCode.XA_RETRY, XaCode.XA_OK)
    tx = await rig.tx("a", "b")
    result = await engine.commit(tx.gtrid)
    await until("committed", lambda: tx.status == S.COMMITTED)
    assert result.outcome == TxOutcome.TX_OK
    codes = [XaCode(answer.code) for answer in rig.answers(tx.gtrid, "b")]
    assert codes == [XaCode.XA_OK, XaCode.XAER_RMFAIL, XaCode.XA_RETRY, XaCode.XA_OK]  # prepare, then commits
    assert len(rig.peers.sent(Phase.COMMIT, "b")) == 3 and len(rig.peers.sent(Phase.COMMIT, "a")) == 1
    assert tx.branches["b"].attempts == 3


@with_settings(commit_wait=0.1)
async def test_a_durable_decision_is_answered_committed_while_phase_two_goes_on(rig: Rig) -> None:
    engine = await rig.start()
    rig.peers.answer(endpoint("b"), Phase.COMMIT, XaCode.XAER_RMFAIL)
    tx = await rig.tx("a", "b")
    result = await engine.commit(tx.gtrid)
    # The outcome is settled once the decision is durable; the answer does not wait for b.
    assert (result.outcome, tx.status) == (TxOutcome.TX_OK, S.COMMITTING)
    rig.peers.answer(endpoint("b"), Phase.COMMIT, XaCode.XA_OK)
    await until("committed", lambda: tx.status == S.COMMITTED)
    assert rig.ended(tx.gtrid) == [S.COMMITTED]


async def test_enlist_rules(rig: Rig) -> None:
    engine = await rig.start()
    tx = await rig.tx("a")
    assert await engine.enlist(tx.gtrid, "a", "rm-a", endpoint("a")) == XaCode.XAER_DUPID
    assert rig.records(tx.gtrid) == []  # an undecided transaction is not logged (presumed abort)
    with pytest.raises(XatmError) as bad:
        await engine.enlist(tx.gtrid, "no spaces", "rm-x", endpoint("x"))
    assert bad.value.status == Status.INVALID_ARGUMENT
    with pytest.raises(XatmError) as unknown:
        await engine.enlist("elsewhere.0000", "x", "rm-x", endpoint("x"))
    assert unknown.value.status == Status.NOT_FOUND  # not this node's gtrid: nothing is created
    await engine.commit(tx.gtrid)
    with pytest.raises(Refused):
        await engine.enlist(tx.gtrid, "late", "rm-late", endpoint("late"))
    assert "late" not in tx.branches


async def test_an_enlistment_naming_an_unknown_gtrid_of_this_node_creates_the_transaction(rig: Rig) -> None:
    engine = await rig.start()
    gtrid = new_gtrid(NODE)
    assert await engine.enlist(gtrid, "a", "rm-a", endpoint("a"), timeout_ms=3000) == XaCode.XA_OK
    tx = engine.get(gtrid)
    assert (tx.status, tx.timeout_ms, list(tx.branches)) == (S.CREATED, 3000, ["a"])
    assert (await engine.commit(gtrid)).outcome == TxOutcome.TX_OK
    assert [c.phase for c in rig.peers.calls] == [Phase.ONE_PHASE_COMMIT]


async def test_a_commit_carrying_reported_branches_creates_the_transaction_and_runs_2pc(rig: Rig) -> None:
    """Lazy enlistment: the coordinator first hears of the transaction from its Commit."""
    engine = await rig.start()
    gtrid = new_gtrid(NODE)
    reported = [BranchRef(bqual=b, rm_id=f"rm-{b}", endpoint=endpoint(b)) for b in ("a", "b")]
    result = await engine.commit(gtrid, 5000, reported)
    assert (result.outcome, result.tx.status, result.tx.timeout_ms) == (TxOutcome.TX_OK, S.COMMITTED, 5000)
    assert [(c.xid.bqual, c.phase) for c in rig.peers.calls if c.phase == Phase.COMMIT] == [
        ("a", Phase.COMMIT),
        ("b", Phase.COMMIT),
    ]
    assert [b.bqual for b in rig.durable(gtrid, "decision")[0].decision.transaction.branches] == ["a", "b"]
    # A retried Commit carrying the same branches reads the outcome; nothing runs again.
    again = await engine.commit(gtrid, 5000, reported)
    assert again.outcome == TxOutcome.TX_OK and len(rig.peers.calls) == 4


async def test_a_commit_carrying_a_failure_rolls_back_with_its_reason(rig: Rig) -> None:
    engine = await rig.start()
    gtrid = new_gtrid(NODE)
    reported = [BranchRef(bqual=b, rm_id=f"rm-{b}", endpoint=endpoint(b)) for b in ("a", "b")]
    result = await engine.commit(gtrid, 5000, reported, "rm-b: ABORTED: insufficient funds")
    assert (result.outcome, result.tx.rollback_reason) == (
        TxOutcome.TX_ROLLBACK,
        "rm-b: ABORTED: insufficient funds",
    )
    assert {c.phase for c in rig.peers.calls} == {Phase.ROLLBACK}  # no prepare
    assert rig.records(gtrid, "decision") == []
    assert [r for r in rig.log.store.records if r.gtrid == gtrid] == []  # no forced write


async def test_a_rollback_of_a_transaction_never_held_rolls_back_its_reported_branches(rig: Rig) -> None:
    engine = await rig.start()
    gtrid = new_gtrid(NODE)
    reported = [BranchRef(bqual="a", rm_id="rm-a", endpoint=endpoint("a"))]
    result = await engine.rollback(gtrid, "asked", 5000, reported)
    assert (result.outcome, result.tx.status) == (TxOutcome.TX_OK, S.ROLLEDBACK)
    assert [(c.xid.bqual, c.phase) for c in rig.peers.calls] == [("a", Phase.ROLLBACK)]


@with_settings(max_open_transactions=2)
async def test_begin_refuses_past_max_open_transactions(rig: Rig) -> None:
    engine = await rig.start()
    first, _ = await rig.tx(), await rig.tx()
    with pytest.raises(XatmError) as err:
        await engine.begin()
    assert err.value.status == Status.UNAVAILABLE and "max_open_transactions" in err.value.message
    await engine.commit(first.gtrid)
    await engine.begin()  # a final transaction frees its place


@with_settings(max_timeout=2.0)
async def test_begin_caps_the_timeout(rig: Rig) -> None:
    engine = await rig.start()
    asked, default = await engine.begin(60_000), await engine.begin()
    assert asked.timeout_ms == 2000 and default.timeout_ms == 2000  # default_timeout 10 s is capped too


@with_settings(commit_wait=0.1)
async def test_an_unacknowledged_one_phase_commit_is_answered_unknown(rig: Rig) -> None:
    engine = await rig.start()
    rig.peers.answer(endpoint("a"), Phase.ONE_PHASE_COMMIT, XaCode.XAER_RMFAIL)
    tx = await rig.tx("a")
    result = await engine.commit(tx.gtrid)
    # The resource manager decides a one-phase commit: until it answers, nothing is known.
    assert (result.outcome, result.tx.status) == (TxOutcome.TX_HAZARD, S.COMMITTING)
    rig.peers.answer(endpoint("a"), Phase.ONE_PHASE_COMMIT, XaCode.XA_OK)
    await until("committed", lambda: tx.status == S.COMMITTED)
    assert (await engine.commit(tx.gtrid)).outcome == TxOutcome.TX_OK


@with_settings(commit_wait=0.1, call_timeout=0.1)
async def test_a_decision_not_yet_durable_is_answered_unknown(rig: Rig) -> None:
    engine = await rig.start()
    tx = await rig.tx("a", "b")
    rig.log.hold()
    result = await engine.commit(tx.gtrid)
    assert (result.outcome, result.tx.status) == (TxOutcome.TX_HAZARD, S.PREPARED)
    assert rig.peers.sent(Phase.COMMIT) == []
    rig.log.release()
    await until("committed", lambda: tx.status == S.COMMITTED)
    assert (await engine.commit(tx.gtrid)).outcome == TxOutcome.TX_OK
