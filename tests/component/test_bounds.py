"""Every resource bounded: one huge transaction, one dead participant or a metrics scrape must
never cost the other transactions.

Latency is compared as a ratio against the same work on an idle engine, never as a time.
"""

from __future__ import annotations

import asyncio
import logging
import statistics
import threading
import time

import pytest
from prometheus_client import REGISTRY, generate_latest

from tests.component.conftest import Rig, endpoint, rm_of, until, with_settings
from tests.component.fakes import UNREACHABLE_REASON, Answer
from xatm.participant.errors import SURFACES, ResourceExhaustedError, Status
from xatm.participant.xa import Phase, TxOutcome, XaCode
from xatm.participant.xa import TxStatus as S

# ----------------------------------------------------------------- one huge transaction


@with_settings(max_branches=3)
async def test_enlist_refuses_a_branch_past_max_branches(rig: Rig) -> None:
    engine = await rig.start()
    tx = await rig.tx("a", "b", "c")
    with pytest.raises(ResourceExhaustedError) as err:
        await engine.enlist(tx.gtrid, "d", rm_of("d"), endpoint("d"))
    assert err.value.status == Status.RESOURCE_EXHAUSTED
    assert (
        SURFACES[Status.RESOURCE_EXHAUSTED].http == 429 and SURFACES[Status.RESOURCE_EXHAUSTED].exit_code == 6
    )
    assert "max_branches is 3" in err.value.message
    assert set(tx.branches) == {"a", "b", "c"} and not rig.answers(tx.gtrid, "d")
    # A bqual already enlisted is still answered as a duplicate, and the transaction commits.
    assert await engine.enlist(tx.gtrid, "a", rm_of("a"), endpoint("a")) == XaCode.XAER_DUPID
    result = await engine.commit(tx.gtrid)
    assert result.outcome == TxOutcome.TX_OK and tx.status == S.COMMITTED


HUGE = 10_000
PARTICIPANTS = [f"p{i}.test:1" for i in range(10)]
#: Each participant takes this long per call (seconds), so calls overlap as real ones do.
CALL_TIME = 0.002


async def _two_branch_commit(rig: Rig) -> float:
    """Begin, enlist two branches at the busiest participants, commit; the seconds it took."""
    assert rig.engine is not None
    started = time.perf_counter()
    tx = await rig.engine.begin()
    for i, bqual in enumerate(("x", "y")):
        await rig.engine.enlist(tx.gtrid, bqual, f"rm-p{i}", PARTICIPANTS[i])
    result = await rig.engine.commit(tx.gtrid)
    assert result.outcome == TxOutcome.TX_OK
    return time.perf_counter() - started


@with_settings(max_branches=HUGE, commit_wait=120.0, call_timeout=60.0, default_timeout=120.0)
async def test_an_unrelated_commit_keeps_its_latency_during_a_huge_transaction(rig: Rig) -> None:
    engine = await rig.start()
    for where in PARTICIPANTS:
        for phase in (Phase.PREPARE, Phase.COMMIT):
            rig.peers.answer(where, phase, Answer(delay=CALL_TIME))
    alone = statistics.median([await _two_branch_commit(rig) for _ in range(5)])

    huge = await engine.begin()
    for i in range(HUGE):
        where = PARTICIPANTS[i % len(PARTICIPANTS)]
        await engine.enlist(huge.gtrid, f"b{i}", f"rm-{where}", where)
    big = asyncio.ensure_future(engine.commit(huge.gtrid))
    await asyncio.sleep(CALL_TIME)  # the huge commit has started its fan-out
    during = [await _two_branch_commit(rig) for _ in range(5)]
    ratio = statistics.median(during) / alone
    print(
        f"two-branch commit alone {alone * 1000:.1f} ms, during a {HUGE}-branch commit "
        f"{statistics.median(during) * 1000:.1f} ms (ratio {ratio:.1f})"
    )
    assert ratio < 10, f"an unrelated commit took {ratio:.1f} times as long during the huge one"
    assert not big.done(), "the huge transaction ended before the unrelated commits were measured"
    assert (await big).outcome == TxOutcome.TX_OK and huge.status == S.COMMITTED


# ----------------------------------------------------------------- participants gone for good

DEAD = endpoint("b")


@with_settings(commit_wait=0.2, unreachable_summary_interval=0.3)
async def test_a_dead_participant_costs_one_warning_per_branch_and_one_backoff(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    engine = await rig.start()
    rig.peers.answer(DEAD, Phase.COMMIT, Answer(XaCode.XAER_RMFAIL, UNREACHABLE_REASON))
    txs = [await rig.tx("a", "b") for _ in range(40)]
    caplog.set_level(logging.WARNING, logger="xatm.coordinator")
    results = await asyncio.gather(*(engine.commit(tx.gtrid) for tx in txs))
    assert {r.tx.status for r in results} == {S.COMMITTING}

    before = len(rig.peers.sent(Phase.COMMIT, "b"))
    await asyncio.sleep(1.0)
    calls = len(rig.peers.sent(Phase.COMMIT, "b")) - before
    print(f"40 branches at a dead participant: {calls} calls in one second")
    # One probe per endpoint backoff (at most retry_max = 0.05 s apart, jitter aside), not one
    # per branch: 40 branches retrying each on its own would send hundreds.
    assert calls <= 40, f"{calls} calls to a dead participant in one second"
    assert _gauge("xatm_in_doubt_branches") == 40
    assert _gauge("xatm_unreachable_participants") == 1

    # A branch warns after its first failed answer (some never got a turn yet: they wait for
    # the endpoint's probe), never again however often it is retried.
    retries = [r.getMessage().split(":")[0] for r in caplog.records if "will retry" in r.getMessage()]
    assert retries and len(retries) == len(set(retries)) <= 40, "one WARNING per branch, not per retry"
    summaries = [r for r in caplog.records if "participant(s) that do not answer" in r.getMessage()]
    assert summaries and "40 branches wait for 1 participant(s)" in summaries[-1].getMessage()
    assert DEAD in summaries[-1].getMessage()

    rig.peers.answer(DEAD, Phase.COMMIT, XaCode.XA_OK)  # back
    await until("every transaction committed", lambda: all(tx.status == S.COMMITTED for tx in txs))
    assert _gauge("xatm_in_doubt_branches") == 0
    assert _gauge("xatm_unreachable_participants") == 0


def _gauge(name: str) -> float:
    value = REGISTRY.get_sample_value(name)
    assert value is not None, name
    return value


# ----------------------------------------------------------------- scrapes from another thread


async def test_scrapes_from_another_thread_never_fail_while_the_loop_changes_the_table(rig: Rig) -> None:
    engine = await rig.start()
    for _ in range(3000):
        await rig.tx("a")
    failures: list[BaseException] = []
    stop = threading.Event()

    def scrape() -> None:
        while not stop.is_set():
            try:
                generate_latest()
            except BaseException as exc:  # what a scrape would answer 500 for
                failures.append(exc)
            time.sleep(0.001)  # hand the loop the interpreter between scrapes

    scraper = threading.Thread(target=scrape, daemon=True)
    scraper.start()
    try:
        for i in range(100):  # begins, commits and history drops, while the scrapes run
            tx = await rig.tx("a", "b")
            await engine.commit(tx.gtrid)
            if i % 20 == 0:
                await engine.checkpoint()
    finally:
        stop.set()
        await asyncio.to_thread(scraper.join)
    assert not failures, f"{len(failures)} scrapes failed: {failures[0]!r}"


@with_settings(default_timeout=1.0, max_history=5, commit_wait=0.1)
async def test_the_gauges_match_the_table_after_every_kind_of_change(rig: Rig) -> None:
    engine = await rig.start()
    committed = [await rig.tx("a", "b") for _ in range(3)]
    for tx in committed:
        await engine.commit(tx.gtrid)
    created = [await rig.tx("a") for _ in range(4)]
    marked = await rig.tx("a")
    await engine.mark_rollback_only(marked.gtrid, "test")
    rig.peers.answer(endpoint("h"), Phase.COMMIT, XaCode.XA_HEURMIX)
    heuristic = await rig.tx("a", "h")
    await engine.commit(heuristic.gtrid)
    rig.peers.answer(endpoint("d"), Phase.COMMIT, Answer(XaCode.XAER_RMFAIL, UNREACHABLE_REASON))
    stuck = await rig.tx("a", "d")
    assert (await engine.commit(stuck.gtrid)).tx.status == S.COMMITTING

    def table(status: S, overdue: bool | None = None) -> int:
        now = time.monotonic()
        return sum(
            1
            for tx in engine.transactions([status])
            if overdue is None or (tx.deadline_mono < now) == overdue
        )

    def check() -> None:
        for status in S:
            if status not in (S.COMMITTED, S.ROLLEDBACK):
                sample = REGISTRY.get_sample_value("xatm_transactions_active", {"status": status.label})
                assert sample == table(status), status
            if not status.is_final:
                sample = REGISTRY.get_sample_value("xatm_transactions_overdue", {"status": status.label})
                assert sample == table(status, overdue=True), status

    check()
    await asyncio.sleep(1.1)  # past the timeout: Created ones roll back, the Committing one is overdue
    await until("timeouts rolled back", lambda: all(tx.status == S.ROLLEDBACK for tx in created))
    check()
    assert REGISTRY.get_sample_value("xatm_transactions_overdue", {"status": "Committing"}) == 1
    rig.peers.answer(endpoint("d"), Phase.COMMIT, XaCode.XA_OK)
    await until("the overdue one committed", lambda: stuck.status == S.COMMITTED)
    await engine.forget(heuristic.gtrid)
    await engine.checkpoint()  # drops history past max_history
    check()
    assert engine.known(committed[0].gtrid) is None


@with_settings(call_timeout=30.0, commit_wait=0.1)
async def test_a_branch_closed_by_the_operator_leaves_the_in_doubt_count_while_its_call_is_out(
    rig: Rig,
) -> None:
    engine = await rig.start()
    rig.peers.answer(DEAD, Phase.COMMIT, Answer(XaCode.XAER_RMFAIL, UNREACHABLE_REASON), Answer(delay=30))
    tx = await rig.tx("a", "b")
    await engine.commit(tx.gtrid)
    await until("the retry is out", lambda: len(rig.peers.sent(Phase.COMMIT, "b")) == 2)
    assert _gauge("xatm_in_doubt_branches") == 1
    await engine.resolve_branch(tx.gtrid, "b", True, "the resource manager is gone for good")
    assert _gauge("xatm_in_doubt_branches") == 0
