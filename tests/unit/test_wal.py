"""The embedded write-ahead log in process: group commit, torn tails, damage, repair, tools.

Durability across a crash of its process is in tests/system/test_wal.py.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from tests.wal_support import SMALL, WalRecord, reopen, run, segments
from xatm.coordinator.txlog.file import FileWal, dump_text, iter_dump_lines, read_records, repair, scan
from xatm.coordinator.txlog.file.scan import LogScan, close_spans
from xatm.coordinator.txlog.interface import LogCorrupt, LogLocked, LogStopped
from xatm.participant import failpoints
from xatm.participant.api.v1 import xa_pb2
from xatm.participant.xa import new_gtrid


def rec(i: int, reason: str = "") -> WalRecord:
    record = WalRecord(gtrid=f"node1.{i:08d}")
    record.time.FromSeconds(1_700_000_000 + i)
    record.branch_result.bqual = f"b{i % 3}"
    record.branch_result.phase = xa_pb2.PHASE_PREPARE
    record.branch_result.code = xa_pb2.XA_RBROLLBACK if i % 2 else xa_pb2.XA_OK
    record.branch_result.reason = reason or f"reason {i}"
    return record


def one_of_each() -> list[WalRecord]:
    """A record for every body type, each with some content."""
    records = []
    for field in WalRecord.DESCRIPTOR.oneofs_by_name["body"].fields:
        record = WalRecord(gtrid=f"node1.{field.name}")
        record.time.FromMilliseconds(1_700_000_000_123)
        body = getattr(record, field.name)
        body.SetInParent()
        for sub in body.DESCRIPTOR.fields:
            if sub.type == sub.TYPE_STRING and not sub.is_repeated:
                setattr(body, sub.name, f"{field.name}-{sub.name}")
        records.append(record)
    return records


async def write(data_dir: Path, records: Sequence[WalRecord], *, segment_bytes: int = SMALL) -> None:
    wal = FileWal(data_dir, segment_bytes=segment_bytes, failpoint=failpoints.hit)
    await wal.open()
    for i, record in enumerate(records):
        await wal.append(record, force=i % 7 == 0)
    await wal.close()


def locations(data_dir: Path) -> list[tuple[Path, int]]:
    return [(path, offset) for path, offset, _ in read_records(data_dir)]


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))


def metric(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


# --- round trips ---


def test_every_record_type_round_trips_and_is_counted(tmp_path: Path) -> None:
    records = one_of_each()
    bodies = [r.WhichOneof("body") for r in records]
    assert set(bodies) == set(WalRecord.DESCRIPTOR.fields_by_name) - {"time", "gtrid"}
    before = {body: metric("xatm_wal_records_total", type=body) for body in bodies}
    run(write(tmp_path, records))
    assert reopen(tmp_path)[0] == records
    for body, value in before.items():
        assert metric("xatm_wal_records_total", type=body) == value + 1


def test_reopen_continues_the_log(tmp_path: Path) -> None:
    first, second = [rec(i) for i in range(5)], [rec(i) for i in range(5, 9)]
    run(write(tmp_path, first))
    records, wal = reopen(tmp_path)
    assert records == first and wal.torn_tail is None

    async def more() -> None:
        wal = FileWal(tmp_path)
        assert list(await wal.open()) == first
        for record in second:
            await wal.append(record)
        await wal.close()
        await wal.close()  # closing twice is harmless
        with pytest.raises(RuntimeError, match="closed"):
            await wal.append(rec(99))

    run(more())
    assert reopen(tmp_path)[0] == first + second


def test_empty_log_opens_empty(tmp_path: Path) -> None:
    assert reopen(tmp_path / "fresh")[0] == []
    assert reopen(tmp_path / "fresh")[0] == []
    assert len(segments(tmp_path / "fresh")) == 1


def test_oversized_record_is_refused_and_log_stays_usable(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr("xatm.coordinator.txlog.file.framing.MAX_PAYLOAD", 100)

    async def go() -> None:
        wal = FileWal(tmp_path)
        await wal.open()
        with pytest.raises(ValueError, match="exceeds"):
            await wal.append(rec(1, reason="x" * 200), force=True)
        await wal.append(rec(2), force=True)
        await wal.close()

    run(go())
    assert reopen(tmp_path)[0] == [rec(2)]


def test_segment_size_must_be_sane(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="segment_bytes"):
        FileWal(tmp_path, segment_bytes=100)


def test_rollover_across_many_segments(tmp_path: Path) -> None:
    records = [rec(i) for i in range(400)]
    run(write(tmp_path, records))
    files = segments(tmp_path)
    assert len(files) > 10
    largest_frame = max(len(r.SerializeToString()) for r in records) + 16 + 8
    assert all(path.stat().st_size < SMALL + largest_frame for path in files)
    assert reopen(tmp_path)[0] == records
    seen = locations(tmp_path)
    assert seen == sorted(seen)  # segment order, then offset order


# --- torn tails ---


def test_torn_tail_at_every_offset_of_the_last_record(tmp_path: Path) -> None:
    records = [rec(i) for i in range(6)]
    run(write(tmp_path, records))
    path, start = locations(tmp_path)[-1]
    intact = path.read_bytes()
    cuts_before = metric("xatm_wal_torn_tail_total")
    for cut in range(start + 1, len(intact)):
        path.write_bytes(intact[:cut])
        survivors, wal = reopen(tmp_path)
        assert survivors == records[:-1], cut
        assert wal.torn_tail is not None
        assert (wal.torn_tail.path, wal.torn_tail.offset, wal.torn_tail.nbytes) == (path, start, cut - start)
        assert path.stat().st_size == start
    assert metric("xatm_wal_torn_tail_total") == cuts_before + len(intact) - start - 1

    # the chain continues cleanly from the cut
    run(write(tmp_path, [rec(100)]))
    assert reopen(tmp_path)[0] == [*records[:-1], rec(100)]


@pytest.mark.parametrize("tail", [bytes(4096), bytes(3), b"\x17" * 13, os.urandom(200)])
def test_garbage_or_zeros_after_last_record_are_cut(tmp_path: Path, tail: bytes, caplog) -> None:
    records = [rec(i) for i in range(4)]
    run(write(tmp_path, records))
    last = segments(tmp_path)[-1]
    size = last.stat().st_size
    with last.open("ab") as file:
        file.write(tail)
    with caplog.at_level(logging.WARNING):
        survivors, wal = reopen(tmp_path)
    assert survivors == records
    assert wal.torn_tail is not None and (wal.torn_tail.offset, wal.torn_tail.nbytes) == (size, len(tail))
    assert f"{last} at offset {size}" in caplog.text
    assert last.stat().st_size == size


# --- damage ---


@pytest.mark.parametrize("where", [0, 5, 9, 14, 20], ids=["length", "magic", "crc", "header-crc", "payload"])
def test_flipped_byte_mid_log_is_corrupt(tmp_path: Path, where: int) -> None:
    run(write(tmp_path, [rec(i) for i in range(6)], segment_bytes=1 << 20))
    path, offset = locations(tmp_path)[2]
    flip(path, offset + where)
    damaged = path.read_bytes()
    with pytest.raises(LogCorrupt) as caught:
        reopen(tmp_path)
    assert (caught.value.path, caught.value.offset) == (str(path), offset)
    assert str(path) in str(caught.value) and f"offset {offset}" in str(caught.value)
    assert path.read_bytes() == damaged  # open() changes nothing on damage
    with pytest.raises(LogCorrupt):  # ... and released the lock: the second try fails the same way
        reopen(tmp_path)


def test_bad_final_record_of_an_earlier_segment_is_corrupt(tmp_path: Path) -> None:
    run(write(tmp_path, [rec(i) for i in range(60)]))
    first = segments(tmp_path)[0]
    path, offset = [loc for loc in locations(tmp_path) if loc[0] == first][-1]
    flip(path, first.stat().st_size - 1)
    with pytest.raises(LogCorrupt, match="not the last") as caught:
        reopen(tmp_path)
    assert (caught.value.path, caught.value.offset) == (str(first), offset)


def test_missing_segments_are_corrupt(tmp_path: Path) -> None:
    run(write(tmp_path, [rec(i) for i in range(60)]))
    files = segments(tmp_path)
    files[2].unlink()
    with pytest.raises(LogCorrupt, match="missing") as caught:
        reopen(tmp_path)
    assert caught.value.path == str(files[3])
    files[0].unlink()
    with pytest.raises(LogCorrupt, match="no base segment"):
        reopen(tmp_path)


def test_segment_from_another_log_breaks_the_chain(tmp_path: Path) -> None:
    run(write(tmp_path / "a", [rec(i) for i in range(60)]))
    run(write(tmp_path / "b", [rec(i + 1000) for i in range(60)]))
    victim = segments(tmp_path / "a")[2]
    shutil.copy(tmp_path / "b" / "wal" / victim.name, victim)
    with pytest.raises(LogCorrupt, match="chain"):
        reopen(tmp_path / "a")


# --- repair ---


def test_repair_cuts_at_the_damage_and_keeps_what_precedes(tmp_path: Path) -> None:
    records = [rec(i) for i in range(80)]
    run(write(tmp_path, records))
    where = locations(tmp_path)
    k = 37
    path, offset = where[k]
    flip(path, offset + 20)
    originals = {p.name: p.read_bytes() for p in segments(tmp_path) if p >= path}
    later = [p for p in segments(tmp_path) if p > path]
    assert later, "the damage should sit in a middle segment"

    report = repair(tmp_path)
    assert report.kept_records == k
    assert report.truncated == [(path, offset, len(originals[path.name]) - offset)]
    assert report.removed == later
    assert report.backup_dir is not None
    assert {p.name: p.read_bytes() for p in report.backup_dir.iterdir()} == originals
    assert path.name in str(report) and "removed" in str(report)

    survivors, _ = reopen(tmp_path)
    assert survivors == records[:k]
    run(write(tmp_path, [rec(500)]))
    assert reopen(tmp_path)[0] == [*records[:k], rec(500)]
    assert repair(tmp_path).problem is None  # nothing left to do


def test_repair_drops_a_segment_whose_header_is_bad(tmp_path: Path) -> None:
    records = [rec(i) for i in range(60)]
    run(write(tmp_path, records))
    victim = segments(tmp_path)[3]
    kept = sum(1 for p, _ in locations(tmp_path) if p < victim)
    flip(victim, 3)
    report = repair(tmp_path)
    assert report.truncated == [] and report.removed[0] == victim
    assert reopen(tmp_path)[0] == records[:kept]


def test_repair_refuses_a_locked_log(tmp_path: Path) -> None:
    async def go() -> None:
        wal = FileWal(tmp_path)
        await wal.open()
        try:
            with pytest.raises(LogLocked, match=f"pid {os.getpid()}"):
                repair(tmp_path)
        finally:
            await wal.close()

    run(go())


# --- random damage never escapes as anything but LogCorrupt or a cut tail ---


@functools.cache
def valid_log() -> tuple[dict[str, bytes], tuple[WalRecord, ...]]:
    records = tuple(rec(i) for i in range(40))
    with tempfile.TemporaryDirectory() as tmp:
        run(write(Path(tmp), records))
        return {p.name: p.read_bytes() for p in segments(Path(tmp))}, records


def materialise(root: Path, files: dict[str, bytes]) -> Path:
    (root / "wal").mkdir(parents=True)
    for name, data in files.items():
        (root / "wal" / name).write_bytes(data)
    return root


def read_all_or_corrupt(data_dir: Path) -> list[WalRecord] | None:
    try:
        return [record for _, _, record in read_records(data_dir)]
    except LogCorrupt:
        return None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(body=st.binary(max_size=3000), with_header=st.booleans())
def test_random_bytes_as_a_segment(body: bytes, with_header: bool) -> None:
    header = valid_log()[0]["0000000000000001.wal"][:32] if with_header else b""
    with tempfile.TemporaryDirectory() as tmp:
        root = materialise(Path(tmp), {"0000000000000001.wal": header + body})
        assert read_all_or_corrupt(root) in (None, [])


MUTATION = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 1 << 20), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 1 << 20), st.just(b"")),
    st.tuples(st.just("zero"), st.integers(0, 1 << 20), st.integers(1, 64)),
    st.tuples(st.just("insert"), st.integers(0, 1 << 20), st.binary(min_size=1, max_size=16)),
)


Mutation = tuple[int, tuple[str, int, Any]]  # (segment index, (kind, position, argument))


def mutate(files: dict[str, bytes], mutations: list[Mutation]) -> dict[str, bytes]:
    out = dict(files)
    names = sorted(out)
    for which, (kind, position, arg) in mutations:
        name = names[which % len(names)]
        data = bytearray(out[name])
        pos = position % (len(data) + 1)
        if kind == "flip" and pos < len(data):
            data[pos] ^= arg
        elif kind == "truncate":
            del data[pos:]
        elif kind == "zero":
            data[pos : pos + arg] = bytes(len(data[pos : pos + arg]))
        elif kind == "insert":
            data[pos:pos] = arg
        out[name] = bytes(data)
    return out


MUTATIONS = st.lists(st.tuples(st.integers(0, 10), MUTATION), min_size=1, max_size=3)


@settings(max_examples=300, deadline=None)
@given(mutations=MUTATIONS)
def test_mutated_log_reads_as_a_prefix_or_corrupt(mutations: list[Mutation]) -> None:
    files, records = valid_log()
    with tempfile.TemporaryDirectory() as tmp:
        root = materialise(Path(tmp), mutate(files, mutations))
        got = read_all_or_corrupt(root)
        assert got is None or got == list(records[: len(got)])


@settings(max_examples=100, deadline=None)
@given(mutations=MUTATIONS)
def test_mutated_log_opens_as_a_prefix_or_corrupt(mutations: list[Mutation]) -> None:
    files, records = valid_log()
    with tempfile.TemporaryDirectory() as tmp:
        root = materialise(Path(tmp), mutate(files, mutations))
        try:
            got, _ = reopen(root)
        except LogCorrupt:
            return
        assert got == list(records[: len(got)])
        assert [r for _, _, r in read_records(root)] == got  # what open() left is clean


def _verdict(root: Path) -> tuple[object, ...]:
    """What checking the log at ``root`` decides: the spans, damage, torn tail and tail."""
    check = LogScan(root / "wal")
    spans = check.verify()
    close_spans(spans)
    return ([(s.path.name, s.start, s.end) for s in spans], check.damage, check.torn_tail, check.tail)


@settings(max_examples=150, deadline=None)
@given(mutations=st.lists(st.tuples(st.integers(0, 10), MUTATION), max_size=3), chunk=st.integers(1, 200))
def test_checking_a_chunk_at_a_time_decides_what_checking_a_whole_segment_does(
    mutations: list[Mutation], chunk: int
) -> None:
    files, _ = valid_log()
    with tempfile.TemporaryDirectory() as tmp, pytest.MonkeyPatch.context() as patch:
        root = materialise(Path(tmp), mutate(files, mutations))
        whole = _verdict(root)  # the default chunk holds any of these segments whole
        patch.setattr(scan, "CHECK_CHUNK", chunk)  # below a frame, or across a few
        assert _verdict(root) == whole


# --- group commit and durability ---


def test_concurrent_forced_appends_share_fsyncs_and_wait_for_them(tmp_path: Path, monkeypatch) -> None:
    durable: dict[int, int] = {}  # inode -> bytes covered by a completed fsync
    real_fsync = os.fsync

    def tracking_fsync(fd: int) -> None:
        info = os.fstat(fd)
        real_fsync(fd)
        if stat.S_ISREG(info.st_mode):
            durable[info.st_ino] = max(durable.get(info.st_ino, 0), info.st_size)

    monkeypatch.setattr(os, "fsync", tracking_fsync)
    n = 32

    async def go() -> tuple[int, list[int]]:
        wal = FileWal(tmp_path)
        await wal.open()
        segment = segments(tmp_path)[0]
        before = wal.fsync_count
        early: list[int] = []

        async def forced(i: int) -> None:
            record = rec(i)
            await wal.append(record, force=True)
            end = segment.read_bytes().index(record.gtrid.encode()) + len(record.gtrid)
            if durable.get(segment.stat().st_ino, 0) < end:
                early.append(i)

        await asyncio.gather(*(forced(i) for i in range(n)))
        fsyncs = wal.fsync_count - before
        await wal.close()
        return fsyncs, early

    fsyncs, early = run(go())
    assert early == []
    assert 1 <= fsyncs <= n // 4
    assert sorted(reopen(tmp_path)[0], key=lambda r: r.gtrid) == [rec(i) for i in range(n)]


def test_unforced_records_ride_along_with_one_fsync(tmp_path: Path) -> None:
    async def go() -> int:
        wal = FileWal(tmp_path)
        await wal.open()
        before = wal.fsync_count
        for i in range(50):
            await wal.append(rec(i))
        await wal.append(rec(50), force=True)
        fsyncs = wal.fsync_count - before
        await wal.close()
        return fsyncs

    assert run(go()) == 1
    assert reopen(tmp_path)[0] == [rec(i) for i in range(51)]


def test_backlog_limit_makes_unforced_appends_wait_for_the_write(tmp_path: Path) -> None:
    async def go() -> None:
        wal = FileWal(tmp_path, max_queued=0)
        await wal.open()
        segment = segments(tmp_path)[0]
        for i in range(5):
            await wal.append(rec(i))
            assert rec(i).gtrid.encode() in segment.read_bytes()
        await wal.close()

    run(go())


def test_slow_disk_failpoint_runs_in_the_writer(tmp_path: Path, monkeypatch) -> None:
    sleeps: list[tuple[float, str]] = []
    real_sleep = time.sleep

    def recording_sleep(seconds: float) -> None:
        sleeps.append((seconds, threading.current_thread().name))
        real_sleep(seconds)

    monkeypatch.setattr(failpoints.time, "sleep", recording_sleep)
    failpoints.arm("wal.before_fsync=sleep(5)")
    try:
        run(write(tmp_path, [rec(i) for i in range(10)]))
    finally:
        failpoints.disarm()
    assert {seconds for seconds, _ in sleeps} == {0.005}
    threads = {thread for _, thread in sleeps}
    assert "xatm-wal-writer" in threads
    assert threading.main_thread().name not in threads  # the event loop never sleeps
    assert reopen(tmp_path)[0] == [rec(i) for i in range(10)]


def test_failed_fsync_stops_the_log(tmp_path: Path) -> None:
    async def go() -> None:
        wal = FileWal(tmp_path, failpoint=failpoints.hit)
        await wal.open()
        await wal.append(rec(0), force=True)
        failpoints.arm("wal.before_fsync=error(UNAVAILABLE)")
        try:
            with pytest.raises(LogStopped, match="failpoint"):
                await wal.append(rec(1), force=True)
            with pytest.raises(LogStopped, match="failpoint"):
                await wal.append(rec(2))
            assert wal.stopped is not None
            await wal.close()  # a stopped log is only released
        finally:
            failpoints.disarm()

    run(go())
    assert reopen(tmp_path)[0][:1] == [rec(0)]  # lock released; the acknowledged record survived


# --- checkpoint ---


def snapshot_of(i: int) -> WalRecord:
    record = WalRecord(gtrid=f"node1.{i:08d}")
    record.snapshot.gtrid = record.gtrid
    record.snapshot.status = xa_pb2.TRANSACTION_STATUS_COMMITTING
    record.snapshot.branches.add(bqual="b1", status=xa_pb2.BRANCH_STATUS_PREPARED)
    return record


def test_checkpoint_bounds_the_log(tmp_path: Path) -> None:
    history = [rec(i) for i in range(300)]
    snapshot = [snapshot_of(i) for i in (7, 8, 9)]
    later = [rec(1000), rec(1001)]
    run(write(tmp_path, history))
    before_files = segments(tmp_path)
    before_bytes = sum(p.stat().st_size for p in before_files)

    async def go() -> None:
        wal = FileWal(tmp_path, segment_bytes=SMALL)
        assert list(await wal.open()) == history
        for i in range(5):  # queued before the checkpoint: superseded by it
            await wal.append(rec(2000 + i))
        await wal.checkpoint(snapshot)
        for record in later:
            await wal.append(record, force=True)
        await wal.close()

    run(go())
    after_files = segments(tmp_path)
    assert len(after_files) == 1 and after_files[0] not in before_files
    assert sum(p.stat().st_size for p in after_files) < before_bytes / 10
    assert reopen(tmp_path)[0] == snapshot + later


def test_interrupted_checkpoint_is_finished_at_open(tmp_path: Path) -> None:
    run(write(tmp_path, [rec(i) for i in range(30)]))
    saved = {p.name: p.read_bytes() for p in segments(tmp_path)}

    async def go() -> None:
        wal = FileWal(tmp_path, segment_bytes=SMALL)
        await wal.open()
        await wal.checkpoint([snapshot_of(1)])
        await wal.append(rec(99), force=True)
        await wal.close()

    run(go())
    # as if the crash came after the checkpoint segment was durable, before old ones were deleted
    for name, data in saved.items():
        (tmp_path / "wal" / name).write_bytes(data)
    (tmp_path / "wal" / "0000000000000099.wal.tmp").write_bytes(b"half a segment")
    assert reopen(tmp_path)[0] == [snapshot_of(1), rec(99)]
    assert len(segments(tmp_path)) == 1
    assert not list((tmp_path / "wal").glob("*.tmp"))


# --- lock ---


def test_second_open_on_a_locked_directory_fails_clearly(tmp_path: Path) -> None:
    async def go() -> None:
        first = FileWal(tmp_path, node="node1")
        await first.open()
        second = FileWal(tmp_path)
        holder = rf"LOCK is held by another process \(pid {os.getpid()} .*node1\)"
        with pytest.raises(LogLocked, match=holder):
            await second.open()
        await first.append(rec(1))
        await first.close()
        assert list(await second.open()) == [rec(1)]
        await second.close()

    run(go())


# --- offline reader and dump ---


def test_reader_reports_torn_tail_without_cutting_it(tmp_path: Path, caplog) -> None:
    records = [rec(i) for i in range(4)]
    run(write(tmp_path, records))
    last = segments(tmp_path)[-1]
    with last.open("ab") as file:
        file.write(b"\x01" * 10)
    size = last.stat().st_size
    with caplog.at_level(logging.WARNING):
        got = list(read_records(tmp_path))
    assert [r for _, _, r in got] == records
    assert "torn tail" in caplog.text and str(last) in caplog.text
    assert last.stat().st_size == size
    assert read_records(tmp_path / "wal") is not None and len(list(read_records(tmp_path / "wal"))) == 4
    assert dump_text(tmp_path).splitlines()[-1].startswith(f"torn tail: {last.name} at offset {size - 10}")
    tail = json.loads(dump_text(tmp_path, "json").splitlines()[-1])["tornTail"]
    assert (tail["segment"], tail["offset"], tail["bytes"]) == (last.name, size - 10, 10)


def test_reader_stops_at_mid_log_damage(tmp_path: Path) -> None:
    records = [rec(i) for i in range(6)]
    run(write(tmp_path, records, segment_bytes=1 << 20))
    path, offset = locations(tmp_path)[3]
    flip(path, offset + 20)
    seen = []
    with pytest.raises(LogCorrupt) as caught:
        for _, _, record in read_records(tmp_path):
            seen.append(record)
    assert seen == records[:3] and caught.value.offset == offset
    lines = []
    with pytest.raises(LogCorrupt):
        lines.extend(iter_dump_lines(tmp_path))
    assert len(lines) == 4  # header + the three good records, printed before the error


def test_reader_needs_a_log(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="no write-ahead log"):
        list(read_records(tmp_path))


def test_dump_table_names_codes_and_phases(tmp_path: Path) -> None:
    records = [*one_of_each(), rec(1, reason="lock wait timeout"), rec(2)]
    run(write(tmp_path, records))
    lines = dump_text(tmp_path).splitlines()
    assert lines[0].split() == ["TIME", "GTRID", "TYPE", "SEG:OFFSET", "DETAIL"]
    assert len(lines) == len(records) + 1
    rolled_back = lines[-2]
    assert rolled_back.startswith("2023-11-14T22:13:21.000Z  node1.00000001")
    expected = ("branch_result", "phase=prepare", "bqual=b1", "code=XA_RBROLLBACK", 'reason="lock wait')
    assert all(part in rolled_back for part in expected)
    assert "code=XA_OK" in lines[-1]
    assert any(" decision " in line and line.endswith("commit=false") for line in lines)
    assert all(any(f" {r.WhichOneof('body')} " in line for line in lines) for r in records)


def test_dump_json_lines_are_protobuf_json_with_location(tmp_path: Path) -> None:
    records = [*one_of_each(), rec(1)]
    run(write(tmp_path, records))
    rows = [json.loads(line) for line in dump_text(tmp_path, output="json").splitlines()]
    assert [(row["segment"], row["offset"]) for row in rows] == [(p.name, o) for p, o in locations(tmp_path)]
    assert [row["gtrid"] for row in rows] == [r.gtrid for r in records]
    assert rows[-1]["branchResult"] | {"status": None} == {
        "bqual": "b1",
        "phase": "prepare",
        "code": "XA_RBROLLBACK",
        "reason": "reason 1",
        "status": None,
    }
    with pytest.raises(ValueError, match="output"):
        dump_text(tmp_path, output="yaml")  # type: ignore[arg-type]


def test_dump_table_columns_line_up_for_gtrids_of_a_default_node_id(tmp_path: Path) -> None:
    """Found by a newcomer: the GTRID column was narrower than the gtrids, so TYPE moved."""
    made = new_gtrid("n" + "a" * 8, "0" * 8)
    record = rec(1)
    record.gtrid = made
    run(write(tmp_path, [record]))
    header, line = dump_text(tmp_path).splitlines()
    assert line.index(" branch_result ") + 1 == header.index("TYPE"), (header, line)
