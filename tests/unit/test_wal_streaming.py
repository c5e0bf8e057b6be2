"""The file WAL without stalls: replay read as it is consumed, checkpoints written beside the log
while appends go on, appends of one loop pass handed to the writer together."""

from __future__ import annotations

import asyncio
import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.wal_support import SMALL, WalRecord, reopen, run, segments
from xatm.coordinator.journal import RecordFactory as R
from xatm.coordinator.journal import replay
from xatm.coordinator.protocol import Branch, Transaction
from xatm.coordinator.txlog.file import FileWal, scan
from xatm.coordinator.txlog.file.framing import SEGMENT_HEADER_SIZE
from xatm.coordinator.txlog.interface import Encoded, LogCorrupt
from xatm.participant.xa import BranchStatus, TxStatus


def rec(name: str) -> WalRecord:
    return WalRecord(gtrid=f"n1.{name}")


def test_open_hands_out_records_as_they_are_read_and_the_log_works_meanwhile(tmp_path: Path) -> None:
    async def go() -> None:
        wal = FileWal(tmp_path, segment_bytes=SMALL)
        await wal.open()
        for i in range(100):
            await wal.append(rec(f"old.{i}"), force=i == 99)
        await wal.close()
        again = FileWal(tmp_path, segment_bytes=SMALL)
        records = await again.open()
        assert not isinstance(records, list)
        await again.append(rec("new"), force=True)  # usable before the old records are read
        assert [r.gtrid for r in records] == [f"n1.old.{i}" for i in range(100)]
        await again.close()

    run(go())
    assert [r.gtrid for r in reopen(tmp_path)[0]][-2:] == ["n1.old.99", "n1.new"]


def test_records_are_read_in_chunks_whatever_their_sizes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scan, "READ_CHUNK", 40)  # far below a frame: every one crosses a chunk
    records = [WalRecord(gtrid=f"n1.{i}", audit={"action": "x" * (i * 7 % 300)}) for i in range(200)]

    async def go() -> list[WalRecord]:
        wal = FileWal(tmp_path, segment_bytes=4096)
        await wal.open()
        for record in records:
            await wal.append(record)
        await wal.close()
        again = FileWal(tmp_path, segment_bytes=4096)
        read = list(await again.open())
        await again.close()
        return read

    assert run(go()) == records


def test_a_record_that_does_not_parse_stops_the_replay_with_log_corrupt(tmp_path: Path) -> None:
    async def go() -> None:
        wal = FileWal(tmp_path)
        await wal.open()
        await wal.append(rec("good"))
        # A payload whose checksum holds but which is not a WalRecord: field 1 as a truncated varint.
        await wal.checkpoint([Encoded("n1.bad", "snapshot", b"\x08")])
        await wal.close()
        records = await FileWal(tmp_path).open()
        with pytest.raises(LogCorrupt, match="does not parse"):
            list(records)

    run(go())


def _completed(index: int) -> list[WalRecord]:
    tx = Transaction(gtrid=f"n1.{index:06d}", timeout_ms=1000)
    tx.branches["b"] = Branch("b", "rm", "127.0.0.1:1")
    tx.status = TxStatus.PREPARING
    records = [R.snapshot(tx, 1.0), R.decision(tx, 1.0)]
    tx.status = TxStatus.COMMITTED
    tx.branches["b"].status = BranchStatus.COMMITTED
    return [*records, R.end(tx, 2.0)]


def test_replay_keeps_only_the_newest_completed_history() -> None:
    def records() -> Iterator[WalRecord]:
        yield R.snapshot(Transaction(gtrid="n1.open", timeout_ms=1000, status=TxStatus.PREPARING), 1.0)
        for index in range(1000):
            yield from _completed(index)

    txs = replay(records(), keep=10)
    assert list(txs) == ["n1.open"] + [f"n1.{i:06d}" for i in range(990, 1000)]
    assert txs["n1.open"].status == TxStatus.PREPARING  # unfinished transactions are never dropped


def test_replay_collects_audit_records_in_a_bounded_sequence() -> None:
    audit = WalRecord(gtrid="n1.x")
    audit.audit.action = "force_rollback"
    kept: deque[WalRecord] = deque(maxlen=2)
    replay([audit, audit, rec("y"), audit], audit=kept)
    assert list(kept) == [audit, audit]


class HeldSnapshot:
    """A snapshot whose records come only once ``release`` is set (from another thread)."""

    def __init__(self, records: list[WalRecord]) -> None:
        self.records = records
        self.release = threading.Event()
        self.released_in_time: bool | None = None
        self.thread: str | None = None

    def __iter__(self) -> Iterator[WalRecord]:
        self.thread = threading.current_thread().name
        # Bounded so that a log which consumed the snapshot on its event loop fails the test
        # instead of hanging it: the append below could then never run.
        self.released_in_time = self.release.wait(30)
        yield from self.records


def test_appends_go_on_while_a_checkpoint_is_written_and_follow_it(tmp_path: Path) -> None:
    async def go() -> HeldSnapshot:
        wal = FileWal(tmp_path, segment_bytes=SMALL)
        await wal.open()
        for i in range(20):
            await wal.append(rec(f"before.{i}"))
        snapshot = HeldSnapshot([rec("snap.a"), rec("snap.b")])
        checkpoint = asyncio.ensure_future(wal.checkpoint(snapshot))
        await asyncio.sleep(0)
        for i in range(30):  # durable while the snapshot is still being produced
            await wal.append(rec(f"during.{i}"), force=i % 10 == 9)
        snapshot.release.set()
        await checkpoint
        await wal.append(rec("after"), force=True)
        await wal.close()
        return snapshot

    snapshot = run(go())
    assert snapshot.released_in_time is True
    assert snapshot.thread != threading.main_thread().name
    gtrids = [r.gtrid for r in reopen(tmp_path)[0]]
    assert gtrids == ["n1.snap.a", "n1.snap.b"] + [f"n1.during.{i}" for i in range(30)] + ["n1.after"]
    assert not list((tmp_path / "wal").glob("*.tmp"))


def test_a_failing_snapshot_leaves_the_log_as_it_was(tmp_path: Path) -> None:
    def broken() -> Iterator[WalRecord]:
        yield rec("snap")
        raise RuntimeError("snapshot producer failed")

    async def go() -> None:
        wal = FileWal(tmp_path)
        await wal.open()
        await wal.append(rec("kept"))
        with pytest.raises(RuntimeError, match="producer failed"):
            await wal.checkpoint(broken())
        await wal.append(rec("later"), force=True)
        await wal.close()

    run(go())
    assert [r.gtrid for r in reopen(tmp_path)[0]] == ["n1.kept", "n1.later"]
    assert not list((tmp_path / "wal").glob("*.tmp"))


def test_a_cancelled_checkpoint_is_given_up_cleanly(tmp_path: Path) -> None:
    async def go() -> None:
        wal = FileWal(tmp_path)
        await wal.open()
        await wal.append(rec("kept"))
        snapshot = HeldSnapshot([rec("snap")])
        checkpoint = asyncio.ensure_future(wal.checkpoint(snapshot))
        await asyncio.sleep(0.05)
        checkpoint.cancel()
        await asyncio.gather(checkpoint, return_exceptions=True)
        snapshot.release.set()
        await wal.append(rec("later"), force=True)
        await wal.checkpoint([rec("second")])  # the next checkpoint still works
        await wal.append(rec("last"), force=True)
        await wal.close()

    run(go())
    assert [r.gtrid for r in reopen(tmp_path)[0]] == ["n1.second", "n1.last"]
    assert not list((tmp_path / "wal").glob("*.tmp"))


def test_appends_of_one_loop_pass_reach_the_writer_as_one_batch(tmp_path: Path) -> None:
    async def go() -> list[int]:
        wal = FileWal(tmp_path)
        await wal.open()
        batches: list[int] = []
        real = wal._process

        def counted(writer, batch):  # type: ignore[no-untyped-def]
            batches.append(len(batch))
            return real(writer, batch)

        wal._process = counted  # type: ignore[method-assign]
        await asyncio.gather(*(wal.append(rec(f"r.{i}"), force=True) for i in range(50)))
        await wal.close()
        return batches

    batches = run(go())
    assert batches[0] == 50  # every append of the pass, handed over together
    assert [r.gtrid for r in reopen(tmp_path)[0]] == [f"n1.r.{i}" for i in range(50)]


@pytest.mark.timeout(30)  # without the check, reading would go round the same bytes for ever
def test_a_segment_changed_after_the_check_stops_the_replay_with_log_corrupt(tmp_path: Path) -> None:
    async def go() -> None:
        wal = FileWal(tmp_path)
        await wal.open()
        for i in range(3):
            await wal.append(rec(str(i)), force=i == 2)
        await wal.close()
        again = FileWal(tmp_path)
        records = await again.open()
        # After the check: the first frame now claims a payload running past the checked bytes.
        with segments(tmp_path)[-1].open("r+b") as f:
            f.seek(SEGMENT_HEADER_SIZE)
            f.write((1 << 20).to_bytes(4, "little"))
        try:
            with pytest.raises(LogCorrupt, match="changed while it was being read"):
                list(records)
        finally:
            await again.close()

    run(go())
