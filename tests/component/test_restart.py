"""What a restarted engine decides from the log it replays: presumed abort for the undecided,
phase two re-driven for the decided, history kept. A crash keeps only durable records."""

from __future__ import annotations

import asyncio

import pytest

from tests.component.conftest import Rig, endpoint, until, with_settings
from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.interface import LogStopped
from xatm.participant.api.v1 import admin_pb2
from xatm.participant.xa import Decision, Phase, TxOutcome, XaCode, Xid
from xatm.participant.xa import TxStatus as S

PRESUMED_ABORT = "coordinator restarted before a decision (presumed abort)"


def _is_decision(record: wal_pb2.WalRecord) -> bool:
    return bool(record.WhichOneof("body") == "decision")


@pytest.mark.parametrize("status", [S.CREATED, S.MARKED_ROLLBACK, S.PREPARED])
async def test_the_undecided_are_rolled_back_after_a_restart(rig: Rig, status: S) -> None:
    engine = await rig.start()
    if status == S.PREPARED:
        # The log stops at the decision: everything before it is on disk, the decision is not.
        rig.log.stop_at(_is_decision, "disk full")
        gtrid = (await rig.tx("a", "b")).gtrid
        with pytest.raises(LogStopped):
            await engine.commit(gtrid)
    else:
        gtrid = (await rig.tx("a", "b")).gtrid
        if status == S.MARKED_ROLLBACK:
            await engine.mark_rollback_only(gtrid, "handler failed")
        await engine.checkpoint()  # what the log holds so far is durable
    assert engine.get(gtrid).status == status
    engine = await rig.restart()
    tx = engine.get(gtrid)
    await until("rolled back", lambda: tx.status == S.ROLLEDBACK)
    assert tx.recovered and tx.decision == Decision.ROLLBACK
    assert sorted(c.xid.bqual for c in rig.peers.calls if c.phase == Phase.ROLLBACK) == ["a", "b"]
    assert {c.phase for c in rig.peers.calls} == {Phase.ROLLBACK}
    if status != S.MARKED_ROLLBACK:
        assert (tx.rollback_code, tx.rollback_reason) == (XaCode.XA_RBROLLBACK, PRESUMED_ABORT)
    assert engine.query_outcome(Xid(gtrid, "a")) == Decision.ROLLBACK


@pytest.mark.parametrize(
    ("bquals", "phase", "final"),
    [
        (("a", "b"), Phase.COMMIT, S.COMMITTED),
        (("a",), Phase.ONE_PHASE_COMMIT, S.COMMITTED),
        (("a", "b"), Phase.ROLLBACK, S.ROLLEDBACK),
    ],
    ids=["two-phase", "one-phase", "rollback"],
)
@with_settings(commit_wait=0.1)
async def test_phase_two_in_flight_is_redriven_to_the_unacknowledged_branch(
    rig: Rig, bquals: tuple[str, ...], phase: Phase, final: S
) -> None:
    engine = await rig.start()
    late = bquals[-1]
    rig.peers.answer(endpoint(late), phase, XaCode.XAER_RMFAIL)
    tx = await rig.tx(*bquals)
    await (engine.rollback(tx.gtrid) if phase == Phase.ROLLBACK else engine.commit(tx.gtrid))
    await engine.checkpoint()  # the other branch's acknowledgement is durable too
    assert tx.status == (S.ROLLINGBACK if phase == Phase.ROLLBACK else S.COMMITTING)
    rig.peers.answer(endpoint(late), phase, XaCode.XA_OK)
    engine = await rig.restart()
    again = engine.get(tx.gtrid)
    await until(final.label, lambda: again.status == final)
    assert [(c.xid.bqual, c.phase) for c in rig.peers.calls] == [(late, phase)]
    decided = Decision.ROLLBACK if phase == Phase.ROLLBACK else Decision.COMMIT
    assert again.recovered and engine.query_outcome(Xid(tx.gtrid, "a")) == decided


async def test_a_decision_checkpointed_while_being_written_survives_as_committing(rig: Rig) -> None:
    engine = await rig.start()
    tx, commit = await rig.deciding()
    checkpoint = asyncio.ensure_future(engine.checkpoint())  # taken while the decision is written
    await asyncio.sleep(0)
    rig.log.release()
    await checkpoint
    assert (await commit).outcome == TxOutcome.TX_OK
    # Phase two's records were never forced: a crash leaves the checkpoint's snapshot.
    assert next(r.WhichOneof("body") for r in rig.log.store.records if r.gtrid == tx.gtrid) == "snapshot"
    engine = await rig.restart()
    again = engine.get(tx.gtrid)
    await until("committed", lambda: again.status == S.COMMITTED)
    assert again.decision == Decision.COMMIT and {c.phase for c in rig.peers.calls} == {Phase.COMMIT}


async def test_final_transactions_survive_a_clean_restart_as_history(rig: Rig) -> None:
    engine = await rig.start()
    committed, rolled_back = await rig.tx("a", "b"), await rig.tx("a")
    await engine.commit(committed.gtrid)
    await engine.rollback(rolled_back.gtrid)
    engine = await rig.restart(crash=False)
    assert engine.get(committed.gtrid).status == S.COMMITTED
    assert engine.get(rolled_back.gtrid).status == S.ROLLEDBACK
    assert rig.peers.calls == []
    assert (await engine.commit(committed.gtrid)).outcome == TxOutcome.TX_OK


async def test_a_crash_loses_what_was_never_forced(rig: Rig) -> None:
    engine = await rig.start()
    tx = await rig.tx("a")  # undecided: presumed abort needs nothing of it in the log
    assert rig.records(tx.gtrid) == []
    engine = await rig.restart()
    assert engine.known(tx.gtrid) is None
    assert engine.query_outcome(Xid(tx.gtrid, "a")) == Decision.ROLLBACK  # presumed abort


@with_settings(history_retention=0.05)
async def test_a_checkpoint_keeps_open_transactions_and_audits_and_drops_old_history(rig: Rig) -> None:
    engine = await rig.start()
    done, still_open = await rig.tx("a"), await rig.tx("a", "b")
    await engine.commit(done.gtrid)
    audit = admin_pb2.AuditRecord(actor="ops", action="force_rollback", gtrid=still_open.gtrid, result="ok")
    await engine.record_audit(audit)
    assert audit in [r.audit for r in rig.log.store.records]  # forced: durable at once
    await asyncio.sleep(0.1)  # past the retention of the committed one
    await engine.checkpoint()
    assert engine.known(done.gtrid) is None
    kept = {(r.gtrid, r.WhichOneof("body")) for r in rig.log.store.records}
    assert kept == {(still_open.gtrid, "audit"), (still_open.gtrid, "snapshot")}
    engine = await rig.restart()
    assert engine.audit_log == [audit]
    assert engine.known(done.gtrid) is None
    await until("presumed abort", lambda: engine.get(still_open.gtrid).status == S.ROLLEDBACK)
