"""The console's branch answers built at start-up, as the replay reads the log, against those
built record by record as the records were appended: over generated logs (several
transactions interleaved, old and new record kinds, answers for unknown transactions, late
answers, forgotten heuristics, checkpointed snapshots) every gtrid shows the same answers, with
the transaction bound, the per-transaction batching and the bytes read from the file WAL in play.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings

from tests.unit.test_replay_compact import _copies, _logs
from xatm.coordinator import journal
from xatm.coordinator.journal import RecordFactory as R
from xatm.coordinator.journal import replay, replay_compact
from xatm.coordinator.protocol import Branch, Transaction
from xatm.coordinator.server.console import history
from xatm.coordinator.server.console.history import Answer, BranchHistory
from xatm.coordinator.tools.measure_log import RECORDS_PER_TRANSACTION, write_log
from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.file import FileWal, read_records
from xatm.coordinator.txlog.interface import TxLog
from xatm.coordinator.txlog.kept import kept_record, kept_records
from xatm.coordinator.txlog.memory import LogStore, MemoryLog
from xatm.participant.xa import BranchStatus, Phase, XaCode

Shown = dict[str, dict[str, list[Answer]]]


async def _appended(log: list[wal_pb2.WalRecord]) -> tuple[Shown, LogStore]:
    """What a history indexing each record as it is appended shows, and the store it wrote."""
    store = LogStore()
    live = BranchHistory(MemoryLog(store))
    await live.open()
    for record in _copies(log):
        await live.append(record)
    await live.close()
    return _shown(live, log), store


async def _replayed(inner: TxLog, log: list[wal_pb2.WalRecord], *, compact: bool) -> Shown:
    """What a history shows after a start-up replay of ``inner`` (the compact fold, or another
    reader of the records)."""
    reopened = BranchHistory(inner)
    records = await reopened.open()
    if compact:
        replay_compact(records, keep=4)
    else:
        replay(records)
    await reopened.close()
    return _shown(reopened, log)


def _shown(log: BranchHistory, records: list[wal_pb2.WalRecord]) -> Shown:
    return {gtrid: log.answers(gtrid) for gtrid in sorted({r.gtrid for r in records} | {"n9.never"})}


async def _file_log(path: Path, log: list[wal_pb2.WalRecord]) -> FileWal:
    """A file WAL holding ``log``, ready to be opened again."""
    wal = FileWal(path)
    await wal.open()
    for record in _copies(log):
        await wal.append(record)
    await wal.close()
    return FileWal(path, must_exist=True)


def _check(log: list[wal_pb2.WalRecord]) -> None:
    async def run() -> None:
        appended, store = await _appended(log)
        assert appended == await _replayed(MemoryLog(store), log, compact=True)
        assert appended == await _replayed(MemoryLog(store), log, compact=False)
        with tempfile.TemporaryDirectory() as tmp:
            assert appended == await _replayed(await _file_log(Path(tmp), log), log, compact=True)

    asyncio.run(run())


@settings(max_examples=150, deadline=None)
@given(log=_logs())
def test_replayed_answers_are_those_indexed_as_appended(log: list[wal_pb2.WalRecord]) -> None:
    _check(log)


@settings(max_examples=150, deadline=None)
@given(log=_logs())
def test_replayed_answers_agree_with_few_transactions_kept_and_few_records_held(
    log: list[wal_pb2.WalRecord],
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(history, "MAX_TRANSACTIONS", 3)  # the least recently answered are dropped
        patch.setattr(journal, "_MAX_HELD", 2)  # a transaction's records folded into a snapshot
        _check(log)


def test_a_committed_transaction_shows_its_votes_and_commit_answers_after_a_restart(tmp_path: Path) -> None:
    # The records a lean two-branch commit writes, on the file WAL (as the benchmark replays).
    write_log(tmp_path, RECORDS_PER_TRANSACTION)
    log = [record for _, _, record in read_records(tmp_path)]
    assert [r.WhichOneof("body") for r in log] == [
        "snapshot",
        "decision",
        "branch_result",
        "branch_result",
        "end",
    ]
    shown = asyncio.run(_replayed(FileWal(tmp_path, must_exist=True), log, compact=True))[log[0].gtrid]
    decided, (first, second) = (
        log[1].time.ToNanoseconds() / 1e9,
        (r.time.ToNanoseconds() / 1e9 for r in log[2:4]),
    )
    assert {
        bqual: [(a.time, a.phase, a.code, a.status, a.snapshot) for a in got] for bqual, got in shown.items()
    } == {
        "a": [
            (decided, Phase.PREPARE, XaCode.XA_OK, BranchStatus.PREPARED, False),
            (first, Phase.COMMIT, XaCode.XA_OK, BranchStatus.COMMITTED, False),
        ],
        "b": [
            (decided, Phase.PREPARE, XaCode.XA_OK, BranchStatus.PREPARED, False),
            (second, Phase.COMMIT, XaCode.XA_OK, BranchStatus.COMMITTED, False),
        ],
    }


@pytest.mark.parametrize(
    "record",
    [
        wal_pb2.WalRecord(
            gtrid="n1.x", branch_result=wal_pb2.BranchResultRecord(bqual="b", reason="no time")
        ),
        wal_pb2.WalRecord(gtrid="n1." + "x" * 200, branch_result=wal_pb2.BranchResultRecord(bqual="b")),
        wal_pb2.WalRecord(branch_result=wal_pb2.BranchResultRecord(bqual="b", reason="no gtrid")),
        R.branch_result(
            Transaction("n1.y", 0), Branch("b", "rm", "e:1"), Phase.COMMIT, XaCode.XA_OK, "", 5.5
        ),
    ],
)
def test_a_kept_record_reads_back_as_the_record_without_its_gtrid(record: wal_pb2.WalRecord) -> None:
    (read,) = kept_records(kept_record(record.SerializeToString()))
    if len(record.gtrid) >= 128:  # a length of more than one byte: kept whole, as it is rare
        assert read == record
        return
    expected = wal_pb2.WalRecord()
    expected.CopyFrom(record)
    expected.ClearField("gtrid")
    assert read == expected


def test_both_histories_share_a_replayed_gtrid_string_and_its_records_bytes(tmp_path: Path) -> None:
    # The engine's history and the console's branch history keep the same gtrid object (one
    # string, not two), without ``sys.intern``, whose strings some Python 3.12 releases never free.
    write_log(tmp_path, 3 * RECORDS_PER_TRANSACTION)

    async def reopen() -> tuple[dict[str, tuple[bytes, int, float, bytes]], BranchHistory]:
        reopened = BranchHistory(FileWal(tmp_path, must_exist=True))
        replayed = replay_compact(await reopened.open())
        await reopened.close()
        return dict(replayed.history), reopened

    kept, branch_history = asyncio.run(reopen())
    assert len(kept) == 3
    for gtrid in kept:
        indexed = next(key for key in branch_history._answers if key == gtrid)
        assert indexed is gtrid
        assert sys.intern("".join(gtrid)) is not gtrid
        # And one bytes object for the records both keep of a completed transaction.
        assert branch_history._answers[gtrid] is kept[gtrid][0]
