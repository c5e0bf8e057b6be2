"""Every branch's prepare vote is in the log whatever the path, with fewer records on the way to
a commit: a yes vote read while the transaction prepares travels in the commit decision; should
the transaction roll back instead (a no vote, its timeout, an operator), the yes votes are written
before the status record of the turn. Replaying the log rebuilds the same branch codes."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from tests.component.conftest import NODE, Rig, endpoint, until, with_settings
from tests.component.fakes import Answer, FakePeers
from xatm.coordinator.engine.core import Engine, Result
from xatm.coordinator.journal import expand, replay, replay_compact
from xatm.coordinator.protocol import Transaction
from xatm.coordinator.server.console.history import Answer as LoggedAnswer
from xatm.coordinator.server.console.history import BranchHistory
from xatm.coordinator.settings import Settings
from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.memory import LogStore, MemoryLog
from xatm.participant.xa import BranchStatus as B
from xatm.participant.xa import Phase, TxOutcome, XaCode
from xatm.participant.xa import TxStatus as S

#: What the views show of a branch: status, last phase, last code, last reason.
View = tuple[B, Phase | None, XaCode | None, str]


def views(tx: Transaction) -> dict[str, View]:
    return {b.bqual: (b.status, b.last_phase, b.last_code, b.last_reason) for b in tx.branches.values()}


def replayed(rig: Rig, gtrid: str) -> list[dict[str, View]]:
    """``gtrid``'s branch views as both replays of every record appended so far rebuild them."""
    full = replay(rig.log.appended)[gtrid]
    # Copies: replay_compact folds later records into the messages it is given.
    compact = replay_compact([wal_pb2.WalRecord.FromString(r.SerializeToString()) for r in rig.log.appended])
    folded = compact.live[gtrid] if gtrid in compact.live else expand(gtrid, compact.history[gtrid][0])
    return [views(full), views(folded)]


def votes(rig: Rig, gtrid: str, *bquals: str) -> dict[str, list[XaCode]]:
    """Each branch's prepare answers in the log (branch results and those a decision carries)."""
    return {
        bqual: [XaCode(a.code) for a in rig.answers(gtrid, bqual) if a.phase == int(Phase.PREPARE)]
        for bqual in bquals
    }


def position(rig: Rig, gtrid: str, bqual: str, phase: Phase) -> int:
    """Where branch ``bqual``'s answer to ``phase`` is among ``gtrid``'s records."""
    return next(
        i
        for i, r in enumerate(rig.records(gtrid))
        if r.WhichOneof("body") == "branch_result"
        and (r.branch_result.bqual, r.branch_result.phase) == (bqual, int(phase))
    )


def turn(rig: Rig, gtrid: str) -> int:
    """Where the status record of the turn to Rollingback is among ``gtrid``'s records."""
    (at,) = [i for i, r in enumerate(rig.records(gtrid)) if r.WhichOneof("body") == "status"]
    assert S(rig.records(gtrid)[at].status.status) == S.ROLLINGBACK
    return at


async def same_after_restart(rig: Rig, tx: Transaction) -> None:
    """A clean restart replays the log into the same branch codes as ``tx`` shows now."""
    before = views(tx)
    engine = await rig.restart(crash=False)
    assert views(engine.get(tx.gtrid)) == before


async def test_a_two_branch_commit_logs_five_records_the_decision_carrying_both_votes(rig: Rig) -> None:
    engine = await rig.start()
    rig.peers.answer(endpoint("a"), Phase.PREPARE, Answer(XaCode.XA_OK, "ready a"))
    rig.peers.answer(endpoint("b"), Phase.PREPARE, Answer(XaCode.XA_OK, "ready b"))
    go = asyncio.Event()
    rig.peers.answer(endpoint("b"), Phase.COMMIT, Answer(until=go))
    tx = await rig.tx("a", "b")
    commit = asyncio.ensure_future(engine.commit(tx.gtrid))
    await until("a committed, b's commit still out", lambda: tx.branches["a"].status == B.COMMITTED)
    # No vote record of its own: the decision carries both, with their reasons.
    assert rig.kinds(tx.gtrid) == ["snapshot", "decision", "branch_result"]
    (decision,) = rig.records(tx.gtrid, "decision")
    carried = {
        b.bqual: (B(b.status), Phase(b.last_phase), XaCode(b.last_code), b.last_reason)
        for b in decision.decision.transaction.branches
    }
    assert carried == {
        "a": (B.PREPARED, Phase.PREPARE, XaCode.XA_OK, "ready a"),
        "b": (B.PREPARED, Phase.PREPARE, XaCode.XA_OK, "ready b"),
    }
    # b's view still shows its vote, and so does the log replayed now.
    assert views(tx)["b"] == (B.PREPARED, Phase.PREPARE, XaCode.XA_OK, "ready b")
    assert replayed(rig, tx.gtrid) == [views(tx)] * 2
    go.set()
    assert (await commit).outcome == TxOutcome.TX_OK
    await until("committed", lambda: tx.status == S.COMMITTED)
    assert rig.kinds(tx.gtrid) == ["snapshot", "decision", "branch_result", "branch_result", "end"]
    assert votes(rig, tx.gtrid, "a", "b") == {"a": [XaCode.XA_OK], "b": [XaCode.XA_OK]}
    assert replayed(rig, tx.gtrid) == [views(tx)] * 2
    await same_after_restart(rig, tx)


async def test_a_read_only_vote_travels_in_the_decision_too(rig: Rig) -> None:
    engine = await rig.start()
    rig.peers.answer(endpoint("b"), Phase.PREPARE, XaCode.XA_RDONLY)
    tx = await rig.tx("a", "b")
    assert (await engine.commit(tx.gtrid)).outcome == TxOutcome.TX_OK
    await until("committed", lambda: tx.status == S.COMMITTED)
    assert rig.kinds(tx.gtrid) == ["snapshot", "decision", "branch_result", "end"]  # b owes no commit
    assert votes(rig, tx.gtrid, "a", "b") == {"a": [XaCode.XA_OK], "b": [XaCode.XA_RDONLY]}
    assert views(tx)["b"] == (B.COMMITTED, Phase.PREPARE, XaCode.XA_RDONLY, "")
    assert replayed(rig, tx.gtrid) == [views(tx)] * 2
    await same_after_restart(rig, tx)


async def test_a_no_vote_writes_the_yes_votes_before_the_rollback(rig: Rig) -> None:
    engine = await rig.start()
    go = asyncio.Event()
    rig.peers.answer(endpoint("a"), Phase.ROLLBACK, Answer(until=go))
    # b votes no after a voted yes: a's vote is held until the turn.
    rig.peers.answer(endpoint("b"), Phase.PREPARE, Answer(XaCode.XA_RBDEADLOCK, "deadlock", delay=0.05))
    tx = await rig.tx("a", "b", "c")
    commit = asyncio.ensure_future(engine.commit(tx.gtrid))
    await until("rolling back", lambda: tx.status == S.ROLLINGBACK and rig.peers.sent(Phase.ROLLBACK, "a"))
    assert votes(rig, tx.gtrid, "a", "b", "c") == {
        "a": [XaCode.XA_OK],
        "b": [XaCode.XA_RBDEADLOCK],
        "c": [XaCode.XA_OK],
    }
    assert max(position(rig, tx.gtrid, q, Phase.PREPARE) for q in "abc") < turn(rig, tx.gtrid)
    assert rig.records(tx.gtrid, "decision") == []
    assert replayed(rig, tx.gtrid) == [views(tx)] * 2  # a's view: its yes vote, rollback still out
    go.set()
    assert (await commit).outcome == TxOutcome.TX_ROLLBACK
    await until("rolled back", lambda: tx.status == S.ROLLEDBACK)
    assert replayed(rig, tx.gtrid) == [views(tx)] * 2
    await same_after_restart(rig, tx)


async def rolled_back_while_preparing(
    rig: Rig, roll_back: Callable[[Transaction], Awaitable[None]]
) -> tuple[Transaction, asyncio.Event, asyncio.Future[Result]]:
    """A commit of a and b where a voted yes and b's vote is still out when ``roll_back`` turns
    it to rollback; returns the transaction, the event releasing b's vote (a yes) and the commit."""
    engine = rig.engine
    assert engine is not None
    held = asyncio.Event()
    rig.peers.answer(endpoint("b"), Phase.PREPARE, Answer(XaCode.XA_OK, "late yes", until=held))
    tx = await rig.tx("a", "b")
    commit = asyncio.ensure_future(engine.commit(tx.gtrid))
    await until("a voted", lambda: tx.branches["a"].last_code == XaCode.XA_OK)
    assert tx.status == S.PREPARING and rig.kinds(tx.gtrid) == ["snapshot"]  # a's vote held back
    await roll_back(tx)
    await until("a's vote written", lambda: votes(rig, tx.gtrid, "a")["a"] == [XaCode.XA_OK])
    assert position(rig, tx.gtrid, "a", Phase.PREPARE) < turn(rig, tx.gtrid)
    return tx, held, commit


async def check_late_vote(
    rig: Rig, tx: Transaction, held: asyncio.Event, commit: asyncio.Future[Result]
) -> None:
    """b's yes vote, read after the turn, is written as it comes and rolled back."""
    held.set()
    assert (await commit).outcome == TxOutcome.TX_ROLLBACK
    await until("rolled back", lambda: tx.status == S.ROLLEDBACK)
    assert votes(rig, tx.gtrid, "a", "b") == {"a": [XaCode.XA_OK], "b": [XaCode.XA_OK]}
    assert turn(rig, tx.gtrid) < position(rig, tx.gtrid, "b", Phase.PREPARE)
    assert {c.xid.bqual for c in rig.peers.sent(Phase.ROLLBACK)} == {"a", "b"}
    assert replayed(rig, tx.gtrid) == [views(tx)] * 2
    await same_after_restart(rig, tx)


@with_settings(call_timeout=5.0)
async def test_a_timeout_while_preparing_writes_the_yes_votes_before_the_rollback(rig: Rig) -> None:
    engine = await rig.start()

    async def time_out(tx: Transaction) -> None:
        engine._on_timeout(tx.gtrid)  # what the deadline timer calls when the timeout passes

    tx, held, commit = await rolled_back_while_preparing(rig, time_out)
    assert tx.rollback_code == XaCode.XA_RBTIMEOUT
    assert replayed(rig, tx.gtrid) == [views(tx)] * 2
    await check_late_vote(rig, tx, held, commit)


@with_settings(commit_wait=0.1)
async def test_an_operator_rollback_while_preparing_writes_the_yes_votes_first(rig: Rig) -> None:
    engine = await rig.start()
    answers: list[Result] = []

    async def operator(tx: Transaction) -> None:
        answers.append(await engine.rollback(tx.gtrid, "stuck, rolled back by hand", code=XaCode.XA_RBOTHER))

    tx, held, commit = await rolled_back_while_preparing(rig, operator)
    assert tx.rollback_code == XaCode.XA_RBOTHER and answers
    assert replayed(rig, tx.gtrid) == [views(tx)] * 2
    await check_late_vote(rig, tx, held, commit)


async def test_a_clean_stop_while_preparing_writes_the_votes_held(rig: Rig) -> None:
    engine = await rig.start()
    rig.peers.answer(endpoint("b"), Phase.PREPARE, Answer(until=asyncio.Event()))
    tx = await rig.tx("a", "b")
    commit = asyncio.ensure_future(engine.commit(tx.gtrid))
    await until("a voted", lambda: tx.branches["a"].last_code == XaCode.XA_OK)
    engine = await rig.restart(crash=False)
    commit.cancel()  # the stopped engine's caller, abandoned
    # a's yes vote, read before the stop, is in the log; presumed abort rolls the transaction back.
    durable = [r.branch_result for r in rig.durable(tx.gtrid, "branch_result")]
    prepared = [(r.bqual, XaCode(r.code)) for r in durable if r.phase == int(Phase.PREPARE)]
    assert prepared == [("a", XaCode.XA_OK)]
    await until("rolled back", lambda: engine.get(tx.gtrid).status == S.ROLLEDBACK)


def history(
    answers: dict[str, list[LoggedAnswer]],
) -> dict[str, list[tuple[Phase | None, XaCode, str, bool]]]:
    """Each branch's answers in the console's history: phase, code, reason, from a snapshot."""
    return {q: [(a.phase, a.code, a.reason, a.snapshot) for a in got] for q, got in answers.items()}


async def test_the_branch_history_shows_each_vote_held_then_carried_by_the_decision(
    settings: Settings,
) -> None:
    store, peers = LogStore(), FakePeers()
    go = asyncio.Event()
    peers.answer(endpoint("b"), Phase.PREPARE, Answer(XaCode.XA_OK, "ready b", until=go))

    log = BranchHistory(MemoryLog(store))
    engine = Engine(settings, log, NODE, peers=peers)
    await engine.start()
    try:
        tx = await engine.begin(0)
        for bqual in ("a", "b"):
            await engine.enlist(tx.gtrid, bqual, f"rm-{bqual}", endpoint(bqual))
        commit = asyncio.ensure_future(engine.commit(tx.gtrid))
        await until("a voted", lambda: tx.branches["a"].last_code == XaCode.XA_OK)
        # Not in the log yet: what the console adds to the logged answers while it prepares.
        assert log.answers(tx.gtrid) == {}
        assert [(b.bqual, code, b.status) for b, code, _, _ in engine.decisions.held(tx.gtrid)] == [
            ("a", XaCode.XA_OK, B.PREPARED)
        ]
        go.set()
        assert (await commit).outcome == TxOutcome.TX_OK
        await until("committed", lambda: tx.status == S.COMMITTED)
        assert engine.decisions.held(tx.gtrid) == []
        logged = history(log.answers(tx.gtrid))
    finally:
        await engine.stop()
    assert logged == {
        "a": [(Phase.PREPARE, XaCode.XA_OK, "", False), (Phase.COMMIT, XaCode.XA_OK, "", False)],
        "b": [(Phase.PREPARE, XaCode.XA_OK, "ready b", False), (Phase.COMMIT, XaCode.XA_OK, "", False)],
    }
    reopened = BranchHistory(MemoryLog(store))
    engine = Engine(settings, reopened, NODE, peers=peers)
    await engine.start()  # the votes come back from the decision record as the log is replayed
    try:
        assert history(reopened.answers(tx.gtrid)) == logged
    finally:
        await engine.stop()
