"""Start-up's compact replay against the full one: over generated logs (records of the engine's
writing now and of older versions, interleaved across transactions, with audit records, answers
for unknown transactions, late answers and forgotten heuristics) both rebuild the same
transactions, the completed ones read back from their compact bytes."""

from __future__ import annotations

import asyncio
import gc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xatm.coordinator import journal
from xatm.coordinator import protocol as sm
from xatm.coordinator.engine.registry import CLOSED, Registry
from xatm.coordinator.journal import (
    CorruptHistory,
    Replayed,
    expand,
    replay,
    replay_compact,
    served,
)
from xatm.coordinator.journal import RecordFactory as R
from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.kept import kept_record
from xatm.participant.api.v1 import admin_pb2
from xatm.participant.errors import Status
from xatm.participant.xa import BranchStatus as B
from xatm.participant.xa import Phase, XaCode
from xatm.participant.xa import TxStatus as S

BQUALS = [f"b{i}" for i in range(12)]  # more than the branches whose index is built anew each time
FAILURES = [XaCode.XAER_RMFAIL, XaCode.XA_RBROLLBACK, XaCode.XA_HEURCOM]


class _Clock:
    """Record times: increasing, with sub-microsecond fractions to show they survive exactly."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def tick(self) -> float:
        self.now += 0.123456789
        return self.now


def _answer(draw: st.DrawFn, tx: sm.Transaction, clock: _Clock, phase: Phase, status: B) -> wal_pb2.WalRecord:
    branch = tx.branches[draw(st.sampled_from(sorted(tx.branches)))]
    code = draw(st.sampled_from([XaCode.XA_OK, *FAILURES]))
    branch.status, branch.last_code, branch.last_phase = status, code, phase
    branch.last_reason = "" if code == XaCode.XA_OK else f"said {code.name}"
    branch.attempts = draw(st.integers(0, 3))
    return R.branch_result(tx, branch, phase, code, branch.last_reason, clock.tick())


@st.composite
def _one_transaction(draw: st.DrawFn, gtrid: str, clock: _Clock) -> list[wal_pb2.WalRecord]:
    """The records of one transaction, in the order the engine writes them."""
    tx = sm.Transaction(gtrid=gtrid, timeout_ms=draw(st.integers(1, 60_000)), begun_at=clock.tick())
    for bqual in draw(st.lists(st.sampled_from(BQUALS), min_size=1, max_size=10, unique=True)):
        tx.branches[bqual] = sm.Branch(bqual, f"rm-{bqual}", f"{bqual}.example:1")
    style = draw(st.sampled_from(["lean", "old", "checkpointed"]))
    records: list[wal_pb2.WalRecord] = []
    if style == "checkpointed":  # a checkpoint's snapshot of a transaction completed earlier
        tx.status = draw(st.sampled_from([*CLOSED, S.COMMITTING, S.HEURISTICALLY_COMPLETED]))
        tx.completed_at = clock.tick() if tx.status.is_final else None
        for _ in range(draw(st.integers(0, len(tx.branches)))):
            _answer(draw, tx, clock, Phase.COMMIT, B.COMMITTED)
        return [R.snapshot(tx, clock.tick())]
    if style == "old":  # begin, enlistments and status records, as older versions wrote
        records.append(wal_pb2.WalRecord(gtrid=gtrid, begin=wal_pb2.BeginRecord(timeout_ms=tx.timeout_ms)))
        records[-1].time.FromNanoseconds(int(tx.begun_at * 1e9))
        for b in tx.branches.values():
            enlist = wal_pb2.EnlistRecord(bqual=b.bqual, rm_id=b.rm_id, endpoint=b.endpoint)
            records.append(wal_pb2.WalRecord(gtrid=gtrid, enlist=enlist))
        tx.status = S.PREPARING
        records.append(R.status(tx, clock.tick()))
    else:
        tx.status = draw(st.sampled_from([S.PREPARING, S.ROLLINGBACK]))
        if tx.status == S.ROLLINGBACK:
            tx.rollback_code, tx.rollback_reason = XaCode.XA_RBROLLBACK, "timed out"
        records.append(R.snapshot(tx, clock.tick()))
    for _ in range(draw(st.integers(0, 3))):
        records.append(_answer(draw, tx, clock, Phase.PREPARE, B.PREPARED))
    if tx.status == S.PREPARING and draw(st.booleans()):
        if style == "old":
            records.append(wal_pb2.WalRecord(gtrid=gtrid, decision=wal_pb2.DecisionRecord(commit=True)))
        else:
            records.append(R.decision(tx, clock.tick()))
        tx.status = S.COMMITTING
    elif tx.status == S.PREPARING and draw(st.booleans()):
        tx.status, tx.rollback_code, tx.rollback_reason = S.ROLLINGBACK, XaCode.XA_RBROLLBACK, "no vote"
        records.append(R.status(tx, clock.tick()))
    if draw(st.booleans()):
        moved = tx.branches[draw(st.sampled_from(sorted(tx.branches)))]
        moved.endpoint = "moved.example:2"
        records.append(R.endpoint(tx, moved, clock.tick()))
    phase, done = (Phase.COMMIT, B.COMMITTED) if tx.status == S.COMMITTING else (Phase.ROLLBACK, B.ROLLEDBACK)
    for _ in range(draw(st.integers(0, 4))):
        records.append(_answer(draw, tx, clock, phase, done))
    if draw(st.booleans()):
        ending = S.COMMITTED if tx.status == S.COMMITTING else S.ROLLEDBACK
        tx.status = draw(st.sampled_from([ending, S.HEURISTICALLY_COMPLETED]))
        records.append(R.end(tx, clock.tick()))
        for _ in range(draw(st.integers(0, 2))):  # answers after the branch was closed
            bqual = draw(st.sampled_from(sorted(tx.branches)))
            records.append(R.late_result(tx, bqual, phase, XaCode.XA_OK, "late", clock.tick()))
        if tx.status == S.HEURISTICALLY_COMPLETED and draw(st.booleans()):
            records.append(R.forget(tx, clock.tick()))
    return records


def _checkpointed(records: list[wal_pb2.WalRecord]) -> list[wal_pb2.WalRecord]:
    """``records`` of one transaction with those up to its end record, when that completes it,
    replaced by the completed record a checkpoint writes for it (its kept records as they are)."""
    ends = [i for i, r in enumerate(records) if r.WhichOneof("body") == "end"]
    if not ends:
        return records
    done = records[: ends[0] + 1]
    gtrid = done[0].gtrid
    tx = replay(_copies(done))[gtrid]
    if tx.status not in CLOSED:
        return records
    kept = b"".join(kept_record(r.SerializeToString()) for r in done)
    where = served(tuple((b.rm_id, b.endpoint) for b in tx.branches.values()), {})
    completed = R.completed(gtrid, kept, int(tx.status), tx.begun_at, where, 1_800_000_000.0)
    return [wal_pb2.WalRecord.FromString(completed), *records[ends[0] + 1 :]]


@st.composite
def _logs(draw: st.DrawFn) -> list[wal_pb2.WalRecord]:
    """Several transactions' records interleaved (each one's in order), with audit records and
    answers about transactions the log does not know; some completed transactions come as a
    checkpoint keeps them (one completed record)."""
    clock = _Clock()
    scripts = [draw(_one_transaction(f"n1.{i:04d}", clock)) for i in range(draw(st.integers(1, 12)))]
    scripts = [_checkpointed(script) if draw(st.booleans()) else script for script in scripts]
    audit = wal_pb2.WalRecord(gtrid="n1.0000", audit=admin_pb2.AuditRecord(gtrid="n1.0000", action="x"))
    stranger = R.late_result(sm.Transaction("n9.none", 0), "b0", Phase.ROLLBACK, XaCode.XA_OK, "", 1.0)
    scripts += [[audit], [stranger]]
    log: list[wal_pb2.WalRecord] = []
    while scripts:
        script = scripts[draw(st.integers(0, len(scripts) - 1))]
        log.append(script.pop(0))
        if not script:
            scripts.remove(script)
    return log


def _copies(records: list[wal_pb2.WalRecord]) -> list[wal_pb2.WalRecord]:
    """Each replay gets records of its own (the compact one folds into the messages it reads)."""
    return [wal_pb2.WalRecord.FromString(r.SerializeToString()) for r in records]


@settings(max_examples=300, deadline=None)
@given(log=_logs(), keep=st.one_of(st.none(), st.integers(1, 6)))
def test_compact_replay_rebuilds_what_the_full_replay_does(
    log: list[wal_pb2.WalRecord], keep: int | None
) -> None:
    _agree(log, keep)


@settings(max_examples=150, deadline=None)
@given(log=_logs(), keep=st.one_of(st.none(), st.integers(1, 6)))
def test_compact_replay_agrees_when_long_transactions_are_folded_into_snapshots(
    log: list[wal_pb2.WalRecord], keep: int | None
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(journal, "_MAX_HELD", 2)  # a transaction's records past two: one snapshot
        _agree(log, keep)


@settings(max_examples=150, deadline=None)
@given(log=_logs(), keep=st.one_of(st.none(), st.integers(1, 6)))
def test_where_completed_transactions_were_served_stays_right_past_the_shared_bound(
    log: list[wal_pb2.WalRecord], keep: int | None
) -> None:
    """Endpoints that differ from transaction to transaction outgrow the table that shares what a
    completed transaction keeps of them: past its bound it starts afresh, and nothing kept changes."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(journal, "MAX_SHARED_PLACES", 2)
        _agree(log, keep)
        compact = replay_compact(_copies(log), keep=keep)
    for gtrid, (kept, _, _, where) in compact.history.items():
        places = [(p.rm_id, p.endpoint) for p in wal_pb2.CompletedRecord.FromString(where).served]
        assert places == [(b.rm_id, b.endpoint) for b in expand(gtrid, kept).branches.values()]


def test_the_table_of_where_transactions_were_served_is_bounded() -> None:
    shared: dict[journal.Places, journal.Served] = {}
    for port in range(journal.MAX_SHARED_PLACES * 3):
        journal.served((("rm-a", f"127.0.0.1:{port}"),), shared)
        assert len(shared) <= journal.MAX_SHARED_PLACES
    one = (("rm-a", "127.0.0.1:1"),)
    assert journal.served(one, {}) == journal.served(one, shared)


def _agree(log: list[wal_pb2.WalRecord], keep: int | None) -> None:
    full_audit: list[wal_pb2.WalRecord] = []
    compact_audit: list[wal_pb2.WalRecord] = []
    full = replay(_copies(log), keep=keep, audit=full_audit)
    compact = replay_compact(_copies(log), keep=keep, audit=compact_audit)
    assert compact_audit == full_audit
    assert list(compact.live) == [gtrid for gtrid, tx in full.items() if tx.status not in CLOSED]
    assert compact.live == {gtrid: tx for gtrid, tx in full.items() if tx.status not in CLOSED}
    completed = {gtrid: tx for gtrid, tx in full.items() if tx.status in CLOSED}
    assert {gtrid: expand(gtrid, kept[0]) for gtrid, kept in compact.history.items()} == completed
    assert {gtrid: kept[1:3] for gtrid, kept in compact.history.items()} == {
        gtrid: (tx.status, tx.begun_at) for gtrid, tx in completed.items()
    }


def _checkpoint(compact: Replayed, now: float) -> list[wal_pb2.WalRecord]:
    """The records a checkpoint writes for what ``compact`` rebuilt (as the engine writes them)."""
    records = [
        wal_pb2.WalRecord.FromString(R.completed(gtrid, kept, status, begun_at, where, now))
        for gtrid, (kept, status, begun_at, where) in compact.history.items()
    ]
    return records + [R.snapshot(tx, now) for tx in compact.live.values()]


@settings(max_examples=200, deadline=None)
@given(log=_logs(), keep=st.one_of(st.none(), st.integers(1, 6)))
def test_a_checkpoint_of_the_compact_history_replays_to_the_same_transactions(
    log: list[wal_pb2.WalRecord], keep: int | None
) -> None:
    compact = replay_compact(_copies(log), keep=keep)
    checkpoint = _checkpoint(compact, 1_800_000_000.0)
    again = replay_compact(_copies(checkpoint))
    assert again.live == compact.live
    assert list(again.history) == list(compact.history)
    assert {gtrid: expand(gtrid, kept[0]) for gtrid, kept in again.history.items()} == {
        gtrid: expand(gtrid, kept[0]) for gtrid, kept in compact.history.items()
    }
    assert {gtrid: kept[1:] for gtrid, kept in again.history.items()} == {
        gtrid: kept[1:] for gtrid, kept in compact.history.items()
    }
    # Where each resource manager was last served, as the completed transactions kept say.
    served_at: dict[str, str] = {}
    for gtrid, kept in compact.history.items():
        served_at.update((b.rm_id, b.endpoint) for b in expand(gtrid, kept[0]).branches.values())
    assert {rm: at for rm, at in again.endpoints.items() if rm in served_at} == served_at
    assert replay(_copies(checkpoint)) == {
        **{gtrid: expand(gtrid, kept[0]) for gtrid, kept in compact.history.items()},
        **compact.live,
    }


def _committed(gtrid: str, begun_at: float) -> sm.Transaction:
    tx = sm.Transaction(gtrid=gtrid, timeout_ms=1000, status=S.PREPARING, begun_at=begun_at)
    tx.branches["a"] = sm.Branch("a", "rm-a", "a.example:1")
    return tx


def test_completed_history_is_kept_as_bytes_the_collector_does_not_track() -> None:
    records = []
    for i in range(3):
        tx = _committed(f"n1.{i}", 100.0 + i)
        records.append(R.snapshot(tx, 101.0 + i))
        tx.status, tx.completed_at = S.COMMITTED, 102.0 + i
        records.append(R.end(tx, 102.0 + i))
    open_one = _committed("n1.open", 50.0)
    records.append(R.snapshot(open_one, 51.0))
    rebuilt = replay_compact(records)
    registry = Registry()

    async def load() -> None:
        registry.load(list(rebuilt.live.values()), rebuilt.history, rebuilt.endpoints)

    asyncio.run(load())
    gc.collect()
    assert [tx.gtrid for tx in registry.live()] == ["n1.open"]
    assert list(registry.history()) == ["n1.0", "n1.1", "n1.2"]
    assert not any(gc.is_tracked(kept) for kept in registry._history.values())
    assert registry.count(S.COMMITTED) == 3 and len(registry) == 4
    assert registry.get("n1.1").completed_at == 103.0
    assert [tx.gtrid for tx in registry.transactions([S.COMMITTED], begun_after=101.0)] == ["n1.1", "n1.2"]
    assert registry.rm_endpoints == {"rm-a": "a.example:1"}


def test_answers_about_a_completed_transaction_with_many_branches_are_all_folded_in() -> None:
    tx = sm.Transaction(gtrid="n1.wide", timeout_ms=1000, status=S.COMMITTED, begun_at=10.0)
    for bqual in BQUALS:  # enough branches that they are looked up through an index
        tx.branches[bqual] = sm.Branch(bqual, f"rm-{bqual}", f"{bqual}.example:1", B.COMMITTED)
    tx.completed_at = 11.0
    records = [R.snapshot(tx, 11.0)]
    for bqual in ("b1", "b2"):  # each read back from the history, folded in, kept again
        branch = tx.branches[bqual]
        branch.status, branch.last_code, branch.last_phase = (
            B.HEURISTICALLY_COMPLETED,
            XaCode.XA_HEURCOM,
            Phase.COMMIT,
        )
        records.append(R.branch_result(tx, branch, Phase.COMMIT, XaCode.XA_HEURCOM, "heuristic", 12.0))
    compact = replay_compact(_copies(records))
    assert expand("n1.wide", compact.history["n1.wide"][0]) == replay(_copies(records))["n1.wide"]
    assert {
        b.bqual: b.status for b in expand("n1.wide", compact.history["n1.wide"][0]).branches.values()
    } == {bqual: B.HEURISTICALLY_COMPLETED if bqual in ("b1", "b2") else B.COMMITTED for bqual in BQUALS}


def test_a_value_this_version_does_not_know_is_told_in_one_line_when_the_transaction_is_read() -> None:
    # Written by a later version: an XA code this one has no member for. Start-up does not read
    # a completed transaction's records, so it starts; reading the transaction says what is wrong.
    tx = _committed("n1.later", 10.0)
    records = [R.snapshot(tx, 10.5)]
    answer = R.branch_result(tx, tx.branches["a"], Phase.COMMIT, XaCode.XA_OK, "", 11.0)
    answer.branch_result.code = 999  # type: ignore[assignment]  # unknown to this version
    answer.branch_result.status = B.COMMITTED  # type: ignore[assignment]
    tx.status, tx.completed_at = S.COMMITTED, 11.5
    records += [answer, R.end(tx, 11.5)]
    rebuilt = replay_compact(_copies(records))
    assert list(rebuilt.history) == ["n1.later"]
    registry = Registry()

    async def load() -> None:
        registry.load(list(rebuilt.live.values()), rebuilt.history, rebuilt.endpoints)

    asyncio.run(load())
    assert registry.count(S.COMMITTED) == 1
    with pytest.raises(CorruptHistory) as caught:
        registry.get("n1.later")
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith("transaction n1.later: its logged records cannot be read: ")
    assert "999" in message
    assert caught.value.status == Status.DATA_LOSS


def test_a_record_that_happens_to_hold_its_gtrid_as_the_gtrid_field_reads_is_kept_whole() -> None:
    # The gtrid is cut out of a completed transaction's records at once, where they hold it as
    # field 2; a reason quoting those very bytes must not be cut too.
    tx = _committed("n1.quoted", 10.0)
    field = b"\x12" + bytes((len(tx.gtrid),)) + tx.gtrid.encode()
    records = [R.snapshot(tx, 10.5)]
    branch = tx.branches["a"]
    branch.status = B.COMMITTED
    quoting = R.branch_result(tx, branch, Phase.COMMIT, XaCode.XA_OK, field.decode(), 11.0)
    tx.status, tx.completed_at = S.COMMITTED, 11.5
    records += [quoting, R.end(tx, 11.5)]
    compact = replay_compact(_copies(records))
    kept = compact.history["n1.quoted"][0]
    assert expand("n1.quoted", kept) == replay(_copies(records))["n1.quoted"]
    assert expand("n1.quoted", kept).branches["a"].last_reason == field.decode()
