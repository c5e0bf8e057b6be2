"""The transaction-log contract, held by both backends alike: the file WAL and the memory log.

What only the memory log has (crash, hold, stop controls for tests) is checked at the end.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import pytest

from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.file import FileWal
from xatm.coordinator.txlog.interface import LogLocked, LogStopped, TxLog
from xatm.coordinator.txlog.memory import LogStore, MemoryLog
from xatm.participant import failpoints

#: Makes a log on one storage: each call opens a new log object on the same storage.
Opener = Callable[[], TxLog]


def rec(i: int) -> wal_pb2.WalRecord:
    return wal_pb2.WalRecord(gtrid=f"n1.{i:04x}", forget=wal_pb2.ForgetRecord())


@pytest.fixture(params=["file", "memory"])
def opener(request: pytest.FixtureRequest, tmp_path: Path) -> Opener:
    if request.param == "file":
        return lambda: FileWal(tmp_path, failpoint=failpoints.hit)
    store = LogStore()
    return lambda: MemoryLog(store)


def _break_next_force(log: TxLog) -> None:
    """Make the next forced write fail as a failed fsync does."""
    if isinstance(log, MemoryLog):
        log.stop_at(lambda record: True, "fsync failed")
    else:
        failpoints.arm("wal.before_fsync=error(DATA_LOSS)")


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


def test_records_come_back_in_order_after_a_close(opener: Opener) -> None:
    async def scenario() -> None:
        log = opener()
        assert list(await log.open()) == []
        for i in range(6):
            await log.append(rec(i), force=i % 3 == 2)
        await log.close()
        await log.close()  # closing twice is harmless
        with pytest.raises(RuntimeError, match="closed"):
            await log.append(rec(99))
        again = opener()
        assert list(await again.open()) == [rec(i) for i in range(6)]
        await again.close()

    run(scenario)


def test_a_checkpoint_replaces_what_was_logged(opener: Opener) -> None:
    async def scenario() -> None:
        log = opener()
        await log.open()
        for i in range(4):
            await log.append(rec(i))
        await log.checkpoint([rec(10), rec(11)])
        await log.append(rec(12), force=True)
        await log.close()
        again = opener()
        assert list(await again.open()) == [rec(10), rec(11), rec(12)]
        await again.close()

    run(scenario)


def test_a_second_open_on_the_same_storage_is_refused_until_closed(opener: Opener) -> None:
    async def scenario() -> None:
        first, second = opener(), opener()
        await first.open()
        with pytest.raises(LogLocked, match="held by another"):
            await second.open()
        await first.append(rec(1))
        await first.close()
        assert list(await second.open()) == [rec(1)]
        await second.close()

    run(scenario)


def test_a_stopped_log_refuses_everything_and_says_why(opener: Opener) -> None:
    async def scenario() -> None:
        log = opener()
        await log.open()
        await log.append(rec(0), force=True)
        assert log.stopped is None
        _break_next_force(log)
        with pytest.raises(LogStopped) as err:
            await log.append(rec(1), force=True)
        assert "transaction log stopped" in err.value.message
        assert await asyncio.wait_for(log.watch(0.05), 5) is log.stopped is not None
        for later in (log.append(rec(2)), log.checkpoint([rec(3)])):
            with pytest.raises(LogStopped):
                await later
        await log.close()  # only releases
        failpoints.disarm()
        again = opener()
        assert next(iter(await again.open())) == rec(0)
        await again.close()

    run(scenario)


# --- what only the memory log does ---


def test_a_crash_keeps_only_what_was_durable() -> None:
    async def scenario() -> None:
        log = MemoryLog()
        await log.open()
        await log.append(rec(0))
        await log.append(rec(1), force=True)  # rec(0) rides along
        await log.append(rec(2))
        log.crash()
        with pytest.raises(LogStopped, match="crashed"):
            await log.append(rec(3))
        assert [r.gtrid for r in log.appended] == [rec(i).gtrid for i in range(3)]
        assert list(await MemoryLog(log.store).open()) == [rec(0), rec(1)]

    run(scenario)


def test_held_durability_waits_for_release_and_a_stop_loses_it() -> None:
    async def scenario() -> None:
        log = MemoryLog()
        await log.open()
        log.hold()
        forced = asyncio.ensure_future(log.append(rec(0), force=True))
        checkpoint = asyncio.ensure_future(log.checkpoint([rec(5)]))
        await asyncio.sleep(0.01)
        assert not forced.done() and not checkpoint.done() and log.store.records == []
        log.release()
        await forced
        await checkpoint
        assert log.store.records == [rec(5)]
        log.hold()
        waiting = asyncio.ensure_future(log.append(rec(6), force=True))
        await asyncio.sleep(0)
        log.stop("disk full")
        with pytest.raises(LogStopped, match="disk full"):
            await waiting
        assert log.store.records == [rec(5)]

    run(scenario)


def test_close_makes_held_records_durable_and_lets_their_appends_return() -> None:
    async def scenario() -> None:
        log = MemoryLog()
        await log.open()
        log.hold()
        forced = asyncio.ensure_future(log.append(rec(0), force=True))
        await asyncio.sleep(0)
        await log.close()
        await asyncio.wait_for(forced, 5)
        assert log.store.records == [rec(0)]

    run(scenario)


@pytest.mark.parametrize("durable", [False, True])
def test_stop_at_stops_exactly_at_the_matching_record(durable: bool) -> None:
    async def scenario() -> None:
        log = MemoryLog()
        await log.open()
        log.stop_at(lambda record: record.gtrid == rec(2).gtrid, "EIO", durable=durable)
        await log.append(rec(0))
        await log.append(rec(1))
        with pytest.raises(LogStopped, match="EIO"):
            await log.append(rec(2), force=True)
        assert log.store.records == [rec(0), rec(1), *([rec(2)] if durable else [])]

    run(scenario)
