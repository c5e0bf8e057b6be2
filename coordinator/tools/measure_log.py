"""Measurements of the coordinator's log and memory costs, each in a fresh process.

Three figures, each measured in a child process (``python -m xatm.coordinator.tools.measure_log``)
so that what the parent already allocated does not count:

- ``measure_replay(records)``: start-up replay of a log of ``records`` records (completed
  two-branch transactions, as the engine writes them): records per second and the peak resident
  memory of the process (``ru_maxrss``) from before the log is opened to the end of start-up.
- ``measure_open_transactions(count)``: resident memory per open transaction, as the growth of
  the process's RSS over ``count`` begun transactions of two enlisted branches each, divided
  by ``count``.
- ``measure_checkpoint_stall(kept)``: the worst commit latency while a checkpoint rewrites the
  log of an engine keeping ``kept`` completed transactions (participants answer at once, in
  process, so the figure is the coordinator's own).

Each returns a small frozen dataclass; ``asdict()`` gives the JSON the benchmark prints. Every
run writes its log under a temporary directory (or ``workdir``) and removes it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from xatm.coordinator.engine.peers import Peers
from xatm.coordinator.journal import RecordFactory as R
from xatm.coordinator.protocol import Branch, Transaction
from xatm.coordinator.txlog._proto import wal_pb2
from xatm.participant.xa import BranchStatus, Phase, TxStatus, XaCode, Xid

__all__ = [
    "CheckpointStall",
    "OpenTransactionMemory",
    "ReplayFigures",
    "measure_checkpoint_stall",
    "measure_open_transactions",
    "measure_replay",
    "write_log",
]

NODE = "m1"
#: Records the engine writes for one committed two-branch transaction (the snapshot taken when
#: preparing starts, the decision carrying both yes votes, two commit answers, the end).
RECORDS_PER_TRANSACTION = 5


@dataclass(frozen=True)
class ReplayFigures:
    """Start-up over a log of ``records`` records: ``seconds`` from open to a started engine,
    ``records_per_second``, the same per second of the process's CPU time (``cpu_seconds``; on
    a machine others share, the steadier figure), ``peak_rss_bytes`` of the whole process
    (interpreter included) and ``base_rss_bytes``, its RSS before the log was opened;
    ``transactions`` kept after replay."""

    records: int
    seconds: float
    records_per_second: float
    cpu_seconds: float
    records_per_cpu_second: float
    peak_rss_bytes: int
    base_rss_bytes: int
    transactions: int


@dataclass(frozen=True)
class OpenTransactionMemory:
    """``bytes_per_transaction`` = RSS growth over ``count`` open two-branch transactions ÷ ``count``."""

    count: int
    bytes_per_transaction: float


@dataclass(frozen=True)
class CheckpointStall:
    """Commits (begin, two enlistments, commit) run by ``concurrency`` callers while checkpoints
    rewrite the log of an engine keeping ``kept`` completed transactions.

    ``max_latency_ms`` is the worst commit overlapping a checkpoint, ``outside_max_latency_ms``
    the worst of the others (what the machine gives without checkpoints), ``p99_latency_ms``
    over all commits, ``checkpoint_seconds`` the longest checkpoint, ``commits`` how many
    completed.
    """

    kept: int
    concurrency: int
    checkpoints: int
    checkpoint_seconds: float
    commits: int
    max_latency_ms: float
    outside_max_latency_ms: float
    p99_latency_ms: float


# ----------------------------------------------------------------- writing a log


def _transaction_records(index: int, now: float) -> Iterator[wal_pb2.WalRecord]:
    """The records a two-branch commit writes under presumed abort: the snapshot taken when
    preparing starts, the decision carrying both yes votes, both commit results and the end."""
    tx = Transaction(gtrid=f"{NODE}.{index:012x}", timeout_ms=60_000, begun_at=now)
    for bqual in ("a", "b"):
        tx.branches[bqual] = Branch(bqual, f"rm-{bqual}", f"127.0.0.1:{7000 + ord(bqual)}")
    tx.status = TxStatus.PREPARING
    yield R.snapshot(tx, now)
    for branch in tx.branches.values():
        branch.status, branch.last_phase, branch.last_code = (
            BranchStatus.PREPARED,
            Phase.PREPARE,
            XaCode.XA_OK,
        )
    tx.status = TxStatus.COMMITTING
    yield R.decision(tx, now)
    tx.status = TxStatus.COMMITTED
    for branch in tx.branches.values():
        branch.status = BranchStatus.COMMITTED
        yield R.branch_result(tx, branch, Phase.COMMIT, XaCode.XA_OK, "", now)
    yield R.end(tx, now)


def _snapshot_records(count: int, now: float) -> Iterator[wal_pb2.WalRecord]:
    for index in range(count):
        tx = Transaction(
            gtrid=f"{NODE}.{index:012x}", timeout_ms=60_000, status=TxStatus.COMMITTED, begun_at=now
        )
        tx.completed_at = now
        for bqual in ("a", "b"):
            branch = Branch(bqual, f"rm-{bqual}", f"127.0.0.1:{7000 + ord(bqual)}", BranchStatus.COMMITTED)
            branch.last_phase, branch.last_code = Phase.COMMIT, XaCode.XA_OK
            tx.branches[bqual] = branch
        yield R.snapshot(tx, now)


def write_log(data_dir: Path, records: int = 0, *, snapshots: int = 0) -> int:
    """Write a log into ``data_dir`` (a coordinator's data dir): ``snapshots`` checkpointed
    completed transactions, then completed two-branch transactions until ``records`` records.
    Returns the number of records written. Runs synchronously, bypassing the event loop."""
    from xatm.coordinator.txlog.file.filewal import DEFAULT_SEGMENT_BYTES
    from xatm.coordinator.txlog.file.framing import SEGMENT_HEADER_SIZE, SegmentHeader, encode_segment_header
    from xatm.coordinator.txlog.file.scan import Tail
    from xatm.coordinator.txlog.file.segment import create_segment
    from xatm.coordinator.txlog.file.writer import SegmentWriter

    wal_dir = Path(data_dir) / "wal"
    wal_dir.mkdir(parents=True)
    header = encode_segment_header(SegmentHeader(seq=1, seed=0, base=True))
    tail = Tail(1, create_segment(wal_dir, 1, header), SEGMENT_HEADER_SIZE, 0)
    writer = SegmentWriter(wal_dir, tail, DEFAULT_SEGMENT_BYTES)
    now = time.time()
    written = 0
    batch: list[bytes] = []

    def flush() -> None:
        writer.write(batch)
        batch.clear()

    for record in _snapshot_records(snapshots, now):
        batch.append(record.SerializeToString())
        if len(batch) >= 10_000:
            flush()
    written += snapshots
    index = snapshots
    while written < records:
        for record in _transaction_records(index, now):
            batch.append(record.SerializeToString())
        written += RECORDS_PER_TRANSACTION
        index += 1
        if len(batch) >= 10_000:
            flush()
    flush()
    writer.sync()
    writer.close()
    return written


# ----------------------------------------------------------------- the child process


def _rss_bytes() -> int:
    """Resident set size now (not the peak), from /proc."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _engine(data_dir: Path, **settings: Any) -> Any:
    """An engine on the file WAL in ``data_dir``, under the console's branch history as the
    coordinator runs it."""
    from xatm.coordinator.engine.core import Engine
    from xatm.coordinator.server.console.history import BranchHistory
    from xatm.coordinator.settings import Settings
    from xatm.coordinator.txlog.file import FileWal

    base = {"checkpoint_interval": 3600.0, "recovery_interval": 3600.0}
    log = BranchHistory(FileWal(data_dir))
    return Engine(Settings(**{**base, **settings}), log, NODE, peers=_InstantPeers())


class _InstantPeers(Peers):
    """Participants that answer every call XA_OK at once, in this process."""

    async def call(
        self, endpoint: str, phase: Phase, xid: Xid, *, timeout: float, savepoint_id: str = ""
    ) -> tuple[XaCode, str]:
        await asyncio.sleep(0)
        return XaCode.XA_OK, ""

    async def recover(self, endpoint: str, format_id: int, *, timeout: float) -> tuple[list[Xid], str]:
        return [], "rm"


async def _child_replay(data_dir: Path, records: int) -> dict[str, Any]:
    engine = _engine(data_dir)
    gc.collect()
    base = _rss_bytes()
    started, cpu = time.perf_counter(), time.process_time()
    await engine.start()
    elapsed, cpu = time.perf_counter() - started, time.process_time() - cpu
    kept = len(engine.registry)
    await engine.stop()
    return asdict(
        ReplayFigures(
            records=records,
            seconds=round(elapsed, 3),
            records_per_second=round(records / elapsed),
            cpu_seconds=round(cpu, 3),
            records_per_cpu_second=round(records / cpu),
            peak_rss_bytes=_peak_rss_bytes(),
            base_rss_bytes=base,
            transactions=kept,
        )
    )


async def _child_open(data_dir: Path, count: int) -> dict[str, Any]:
    engine = _engine(data_dir, max_open_transactions=max(count, 1) * 2)
    await engine.start()
    keep: list[Any] = []
    # One to warm every lazily built structure up, so it is not counted against the rest.
    await _open_one(engine, keep)
    gc.collect()
    before = _rss_bytes()
    for _ in range(count):
        await _open_one(engine, keep)
    await _drained(engine)
    gc.collect()
    after = _rss_bytes()
    await engine.stop()
    return asdict(
        OpenTransactionMemory(count=count, bytes_per_transaction=round((after - before) / count, 1))
    )


async def _drained(engine: Any) -> None:
    """Until the log's writer has taken every record appended so far (a forced record waits for
    all before it): records queued for the disk are not the transactions' own memory."""
    tx = Transaction(gtrid=f"{NODE}.drain", timeout_ms=0)
    await engine.log.append(R.forget(tx, time.time()), force=True)


async def _open_one(engine: Any, keep: list[Any]) -> None:
    tx = await engine.begin(60_000)
    for bqual in ("a", "b"):
        await engine.enlist(tx.gtrid, bqual, f"rm-{bqual}", f"127.0.0.1:{7000 + ord(bqual)}")
    keep.append(tx.gtrid)


async def _child_stall(data_dir: Path, kept: int, concurrency: int, checkpoints: int) -> dict[str, Any]:
    engine = _engine(data_dir, max_history=kept + 1_000_000)
    await engine.start()
    latencies: list[tuple[float, float]] = []  # (start, end) on perf_counter
    windows: list[tuple[float, float]] = []
    running = True

    async def committer() -> None:
        while running:
            started = time.perf_counter()
            tx = await engine.begin(60_000)
            for bqual in ("a", "b"):
                await engine.enlist(tx.gtrid, bqual, f"rm-{bqual}", f"127.0.0.1:{7000 + ord(bqual)}")
            await engine.commit(tx.gtrid)
            latencies.append((started, time.perf_counter()))

    workers = [asyncio.get_running_loop().create_task(committer()) for _ in range(concurrency)]
    await asyncio.sleep(1.0)
    for _ in range(checkpoints):
        started = time.perf_counter()
        await engine.checkpoint()
        windows.append((started, time.perf_counter()))
        await asyncio.sleep(1.0)
    running = False
    await asyncio.gather(*workers)
    await engine.stop()
    overlapping: list[float] = []
    outside: list[float] = []
    for start, end in latencies:
        during = any(start < w1 and end > w0 for w0, w1 in windows)
        (overlapping if during else outside).append(end - start)
    everything = sorted(end - start for start, end in latencies)
    return asdict(
        CheckpointStall(
            kept=kept,
            concurrency=concurrency,
            checkpoints=checkpoints,
            checkpoint_seconds=round(max(w1 - w0 for w0, w1 in windows), 3),
            commits=len(everything),
            max_latency_ms=round(1000 * max(overlapping, default=0.0), 1),
            outside_max_latency_ms=round(1000 * max(outside, default=0.0), 1),
            p99_latency_ms=round(1000 * everything[int(0.99 * (len(everything) - 1))], 1)
            if everything
            else 0.0,
        )
    )


# ----------------------------------------------------------------- the parent's functions


def _run_child(*args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "xatm.coordinator.tools.measure_log", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"measuring {args[0]} failed: {done.stderr.strip().splitlines()[-1:]}")
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def measure_replay(records: int = 1_000_000, *, workdir: Path | None = None) -> ReplayFigures:
    """Write a log of about ``records`` records, then start an engine on it in a child process."""
    with tempfile.TemporaryDirectory(prefix="xatm-replay-", dir=workdir) as tmp:
        written = write_log(Path(tmp), records)
        return ReplayFigures(**_run_child("replay", tmp, str(written)))


def measure_open_transactions(count: int = 10_000, *, workdir: Path | None = None) -> OpenTransactionMemory:
    """Begin ``count`` two-branch transactions in a child engine; RSS growth per transaction."""
    with tempfile.TemporaryDirectory(prefix="xatm-open-", dir=workdir) as tmp:
        return OpenTransactionMemory(**_run_child("open", tmp, str(count)))


def measure_checkpoint_stall(
    kept: int = 100_000, *, concurrency: int = 32, checkpoints: int = 2, workdir: Path | None = None
) -> CheckpointStall:
    """Commit continuously in a child engine keeping ``kept`` completed transactions while it
    takes ``checkpoints`` checkpoints one second apart; the worst latency of commits overlapping
    a checkpoint."""
    with tempfile.TemporaryDirectory(prefix="xatm-stall-", dir=workdir) as tmp:
        write_log(Path(tmp), snapshots=kept)
        return CheckpointStall(**_run_child("stall", tmp, str(kept), str(concurrency), str(checkpoints)))


def _child_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="measure_log", description=__doc__)
    sub = parser.add_subparsers(dest="what", required=True)
    replay = sub.add_parser("replay")
    replay.add_argument("data_dir", type=Path)
    replay.add_argument("records", type=int)
    opened = sub.add_parser("open")
    opened.add_argument("data_dir", type=Path)
    opened.add_argument("count", type=int)
    stall = sub.add_parser("stall")
    stall.add_argument("data_dir", type=Path)
    stall.add_argument("kept", type=int)
    stall.add_argument("concurrency", type=int)
    stall.add_argument("checkpoints", type=int)
    args = parser.parse_args(argv)
    if args.what == "replay":
        result = asyncio.run(_child_replay(args.data_dir, args.records))
    elif args.what == "open":
        result = asyncio.run(_child_open(args.data_dir, args.count))
    else:
        result = asyncio.run(_child_stall(args.data_dir, args.kept, args.concurrency, args.checkpoints))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_child_main(sys.argv[1:]))
