"""Every way the transaction log can stop or vanish, in process: the log and the engine say so
and lose nothing.

A segment or lock file deleted or replaced under a writer, a checkpoint failing part way, a log
missing at open, a decision write that fails. Each must end in a stopped log and UNAVAILABLE
answers, never in an outcome the log does not hold. The same on a real coordinator (a full
disk, a log deleted, kill -9) is in tests/system/test_log_stops.py.
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.wal_support import segments
from xatm.coordinator.engine.core import Engine
from xatm.coordinator.protocol import Transaction
from xatm.coordinator.settings import Settings
from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.file import FileWal, read_records, repair
from xatm.coordinator.txlog.interface import LogMissing, LogStopped
from xatm.participant import failpoints
from xatm.participant.errors import Status
from xatm.participant.xa import Phase, XaCode, Xid
from xatm.participant.xa import TxStatus as S


def rec(i: int) -> wal_pb2.WalRecord:
    return wal_pb2.WalRecord(gtrid=f"n1.{i:04x}", status=wal_pb2.StatusRecord(status=1))


# --- the log alone, in process ---


async def _open(data_dir: Path, n: int = 3, **kwargs: object) -> FileWal:
    wal = FileWal(data_dir, failpoint=failpoints.hit, **kwargs)  # type: ignore[arg-type]
    await wal.open()
    for i in range(n):
        await wal.append(rec(i), force=True)
    return wal


def _replace_segment(data_dir: Path) -> None:
    segment = segments(data_dir)[-1]
    copy = segment.with_name("copy")
    shutil.copy2(segment, copy)
    os.replace(copy, segment)


@pytest.mark.parametrize(
    ("vanish", "said"),
    [
        (lambda d: segments(d)[-1].unlink(), "was deleted"),
        (_replace_segment, "was replaced"),
        (lambda d: shutil.rmtree(d), "was deleted"),
        (lambda d: (d / "LOCK").unlink(), "LOCK was deleted"),
    ],
    ids=["segment-deleted", "segment-replaced", "data-dir-removed", "lock-deleted"],
)
def test_a_vanished_log_stops_it_even_while_idle(
    tmp_path: Path, vanish: Callable[[Path], object], said: str
) -> None:
    async def go() -> None:
        wal = await _open(tmp_path)
        vanish(tmp_path)
        stopped = await asyncio.wait_for(wal.watch(0.05), 30)  # nothing is written meanwhile
        assert isinstance(stopped, LogStopped) and said in stopped.reason
        assert stopped.status == Status.UNAVAILABLE
        with pytest.raises(LogStopped, match=said):
            await wal.append(rec(9), force=True)
        await wal.close()

    asyncio.run(go())


def test_a_segment_deleted_under_a_writer_fails_the_next_append(tmp_path: Path) -> None:
    async def go() -> None:
        wal = await _open(tmp_path)
        segments(tmp_path)[-1].unlink()
        with pytest.raises(LogStopped, match="was deleted"):
            await wal.append(rec(9), force=True)
        await wal.close()

    asyncio.run(go())


def test_a_segment_deleted_during_a_forced_write_acknowledges_nothing(tmp_path: Path) -> None:
    """Deleted after the batch's first look but before its fsync: the records went with the file."""

    async def go() -> None:
        wal = await _open(tmp_path)
        failpoints.arm("wal.before_fsync=1*sleep(400)")
        pending = asyncio.ensure_future(wal.append(rec(9), force=True))
        await asyncio.sleep(0.15)  # the writer has written the record and sleeps before its fsync
        segments(tmp_path)[-1].unlink()
        with pytest.raises(LogStopped, match="was deleted"):
            await pending
        await wal.close()

    asyncio.run(go())


def test_a_missing_log_refuses_to_open(tmp_path: Path) -> None:
    async def go() -> None:
        with pytest.raises(LogMissing, match="has held a log"):  # the data dir says a log existed
            await FileWal(tmp_path, must_exist=True).open()
        assert not (tmp_path / "wal").exists(), "a refused start changes nothing"
        wal = await _open(tmp_path, segment_bytes=1024)
        for i in range(3, 200):
            await wal.append(rec(i))
        await wal.close()
        files = segments(tmp_path)
        assert len(files) >= 3
        files[1].unlink()
        with pytest.raises(LogMissing, match="are missing"):
            await FileWal(tmp_path).open()
        files[0].unlink()
        with pytest.raises(LogMissing, match="beginning of the log is missing"):
            await FileWal(tmp_path).open()
        for segment in files[2:]:
            segment.unlink()
        with pytest.raises(LogMissing, match="has held a log"):
            await FileWal(tmp_path, must_exist=True).open()

    asyncio.run(go())


def test_newest_segments_deleted_while_stopped_refuse_to_open_until_repaired(tmp_path: Path) -> None:
    async def go() -> tuple[list[wal_pb2.WalRecord], list[wal_pb2.WalRecord]]:
        wal = await _open(tmp_path, n=200, segment_bytes=1024)
        await wal.close()
        files = segments(tmp_path)
        kept = [record for path, _, record in read_records(tmp_path) if path in files[:-2]]
        for segment in files[-2:]:
            segment.unlink()
        with pytest.raises(LogMissing, match=f"the log had reached segment {len(files)}"):
            await FileWal(tmp_path).open()
        report = repair(tmp_path)  # the operator accepts the loss
        assert f"the log now ends at segment {len(files) - 2}" in str(report)
        wal = FileWal(tmp_path)
        records = list(await wal.open())
        await wal.close()
        return records, kept

    records, kept = asyncio.run(go())
    assert records == kept


@pytest.mark.parametrize("failing", [1, 2, 3, 4])
def test_a_checkpoint_failing_midway_keeps_every_decision(tmp_path: Path, monkeypatch, failing: int) -> None:
    """Whichever fsync of the checkpoint fails, the log stops and still holds every record."""
    real_fsync = os.fsync
    calls = 0

    def fsync(fd: int) -> None:
        nonlocal calls
        calls += 1
        if calls == failing:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    async def go() -> None:
        nonlocal calls
        wal = await _open(tmp_path, n=5)
        await wal.append(rec(5))  # unforced: the checkpoint syncs it first
        monkeypatch.setattr(os, "fsync", fsync)
        with pytest.raises(LogStopped, match=r"Input/output error \(EIO\)"):
            await wal.checkpoint([rec(i) for i in range(6)])
        monkeypatch.setattr(os, "fsync", real_fsync)
        with pytest.raises(LogStopped, match="EIO"):
            await wal.append(rec(9))
        await wal.close()

    asyncio.run(go())
    wal = FileWal(tmp_path)
    records = list(asyncio.run(wal.open()))
    asyncio.run(wal.close())
    assert {r.gtrid for r in records} >= {rec(i).gtrid for i in range(5)}


class _YesPeers:
    """Participants that vote yes to everything."""

    async def call(
        self, endpoint: str, phase: Phase, xid: Xid, *, timeout: float, savepoint_id: str = ""
    ) -> tuple[XaCode, str]:
        return XaCode.XA_OK, ""

    async def recover(self, endpoint: str, format_id: int, *, timeout: float) -> tuple[list[Xid], str]:
        return [], ""

    async def close(self) -> None:
        pass


async def _two_branches(settings: Settings, peers: _YesPeers) -> tuple[Engine, Transaction]:
    """A started engine on a FileWal in ``settings.data_dir`` and a transaction with branches b1, b2."""
    engine = Engine(settings, FileWal(settings.data_dir, failpoint=failpoints.hit), "n1", peers=peers)  # type: ignore[arg-type]
    await engine.start()
    tx = await engine.begin()
    for bqual in ("b1", "b2"):
        await engine.enlist(tx.gtrid, bqual, "rm", "fake:1")
    return engine, tx


def test_a_failed_decision_write_answers_unavailable_not_an_outcome(tmp_path: Path) -> None:
    async def go() -> None:
        settings = Settings(data_dir=tmp_path, node_id="n1", commit_wait=30.0, call_timeout=30.0)
        engine, tx = await _two_branches(settings, _YesPeers())
        try:
            failpoints.arm("wal.before_fsync=error(DATA_LOSS)")  # the decision's fsync
            with pytest.raises(LogStopped, match="transaction log stopped") as err:
                await asyncio.wait_for(engine.commit(tx.gtrid), 20)
            assert err.value.status == Status.UNAVAILABLE
            assert tx.decision is None and tx.status == S.PREPARED  # claims nothing
            with pytest.raises(LogStopped):
                await engine.begin()
            with pytest.raises(LogStopped):
                engine.query_outcome(Xid(tx.gtrid, "b1"))
        finally:
            failpoints.disarm()
            await engine.stop()

    asyncio.run(go())


class _CommitFailsPeers(_YesPeers):
    """Vote yes; every commit of branch b2 fails, so its phase-two driver keeps retrying."""

    async def call(
        self, endpoint: str, phase: Phase, xid: Xid, *, timeout: float, savepoint_id: str = ""
    ) -> tuple[XaCode, str]:
        if phase == Phase.COMMIT and xid.bqual == "b2":
            return XaCode.XAER_RMFAIL, "down"
        return XaCode.XA_OK, ""


def test_phase_two_drivers_end_when_the_log_stops(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        settings = Settings(
            data_dir=tmp_path, node_id="n1", commit_wait=0.1, retry_initial=0.01, retry_max=0.05
        )
        engine, tx = await _two_branches(settings, _CommitFailsPeers())
        try:
            await engine.commit(tx.gtrid)
            assert tx.status == S.COMMITTING and engine._drivers  # b2 is being retried
            segments(tmp_path)[-1].unlink()  # its next answer cannot be recorded
            for _ in range(1000):
                if not engine._drivers:
                    break
                await asyncio.sleep(0.01)
            assert not engine._drivers, "a driver kept retrying on a stopped log"
        finally:
            await engine.stop()

    asyncio.run(go())
    assert sum("transaction log stopped" in r.getMessage() for r in caplog.records) == 0
