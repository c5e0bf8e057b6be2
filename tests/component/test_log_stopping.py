"""When the log stops, every verb answers UNAVAILABLE and nothing is claimed that the disk may lack;
the next start decides from whatever did reach the disk."""

from __future__ import annotations

import asyncio

import pytest

from tests.component.conftest import Rig, endpoint, until
from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.interface import LogStopped
from xatm.participant.errors import Status
from xatm.participant.xa import Decision, Phase, XaCode, Xid
from xatm.participant.xa import TxStatus as S


def _is_decision(record: wal_pb2.WalRecord) -> bool:
    return bool(record.WhichOneof("body") == "decision")


async def test_a_stopped_log_fences_every_verb_and_keeps_state_readable(rig: Rig) -> None:
    engine = await rig.start()
    open_tx = await rig.tx("a", "b")
    done = await rig.tx("a")
    await engine.commit(done.gtrid)
    rig.log.stop("No space left on device (ENOSPC)")
    await until("fenced", lambda: engine.log_stopped is not None)
    xid = Xid(open_tx.gtrid, "a")
    verbs = {
        "begin": engine.begin(),
        "enlist": engine.enlist(open_tx.gtrid, "c", "rm-c", endpoint("c")),
        "commit": engine.commit(open_tx.gtrid),
        "rollback": engine.rollback(open_tx.gtrid),
        "force_commit": engine.force_commit(open_tx.gtrid),
        "mark_rollback_only": engine.mark_rollback_only(open_tx.gtrid, "x"),
        "savepoint": engine.create_savepoint(open_tx.gtrid),
        "register_participant": engine.register_participant("rm-a", "a2.test:1"),
        "participant_query": engine.participant_query(xid, "rm-a", "a2.test:1"),
        "report_outcome": engine.report_outcome(xid, "rm-a", Phase.COMMIT, XaCode.XA_OK, ""),
        "resolve_branch": engine.resolve_branch(open_tx.gtrid, "a", True, "x"),
        "forget": engine.forget(done.gtrid),
    }
    for name, verb in verbs.items():
        with pytest.raises(LogStopped) as err:
            await verb
        assert err.value.status == Status.UNAVAILABLE, name
        assert "ENOSPC" in err.value.message, name
    with pytest.raises(LogStopped):
        engine.query_outcome(xid)
    assert engine.get(open_tx.gtrid).status == S.CREATED and engine.get(done.gtrid).status == S.COMMITTED
    assert rig.peers.calls == [c for c in rig.peers.calls if c.xid.gtrid == done.gtrid]  # nothing sent


@pytest.mark.parametrize("reached_disk", [False, True], ids=["decision-lost", "decision-on-disk"])
async def test_a_failed_decision_write_claims_nothing_and_the_restart_reads_the_disk(
    rig: Rig, reached_disk: bool
) -> None:
    engine = await rig.start()
    rig.log.stop_at(_is_decision, "fsync failed: Input/output error (EIO)", durable=reached_disk)
    tx = await rig.tx("a", "b")
    with pytest.raises(LogStopped) as err:
        await engine.commit(tx.gtrid)
    assert err.value.status == Status.UNAVAILABLE
    assert (tx.status, tx.decision) == (S.PREPARED, None)  # no outcome claimed either way
    assert rig.peers.sent(Phase.COMMIT) == [] and rig.peers.sent(Phase.ROLLBACK) == []
    engine = await rig.restart()
    again = engine.get(tx.gtrid)
    final = S.COMMITTED if reached_disk else S.ROLLEDBACK
    await until(f"{final.label}", lambda: again.status == final)
    phase = Phase.COMMIT if reached_disk else Phase.ROLLBACK
    assert sorted((c.xid.bqual, c.phase) for c in rig.peers.calls) == [("a", phase), ("b", phase)]
    decided = Decision.COMMIT if reached_disk else Decision.ROLLBACK
    assert engine.query_outcome(Xid(tx.gtrid, "a")) == decided


async def test_a_commit_waiting_on_the_decision_is_answered_when_the_log_stops(rig: Rig) -> None:
    await rig.start()
    tx, commit = await rig.deciding()
    rig.log.stop("the log's segment was deleted")
    with pytest.raises(LogStopped, match="segment was deleted"):
        await commit
    assert tx.decision is None and rig.peers.sent(Phase.COMMIT) == []


async def test_phase_two_stops_calling_once_the_log_stops(rig: Rig) -> None:
    engine = await rig.start()
    rig.peers.answer(endpoint("b"), Phase.COMMIT, XaCode.XAER_RMFAIL)
    tx = await rig.tx("a", "b")
    commit = asyncio.ensure_future(engine.commit(tx.gtrid))
    await until("b's commit retried", lambda: len(rig.peers.sent(Phase.COMMIT, "b")) >= 2)
    rig.log.stop("disk full")
    await until("fenced", lambda: engine.log_stopped is not None)
    sent = len(rig.peers.sent(Phase.COMMIT, "b"))
    await asyncio.sleep(0.2)  # several backoffs (at most 0.06 s each) in which a driver would call
    assert len(rig.peers.sent(Phase.COMMIT, "b")) <= sent + 1  # at most the call already out
    # The decision was durable before the stop: the answer is the outcome, with phase two owed.
    result = await commit
    assert tx.status == S.COMMITTING and result.outcome.name == "TX_OK"
