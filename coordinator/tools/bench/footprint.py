"""The coordinator's footprint: memory per open transaction, start-up replay, a long history.

- ``open_memory``: a warmed-up coordinator's resident memory before and after ``count``
  transactions are begun and enlisted (never completed); the growth divided by ``count``. These
  use the eager Begin and Enlist: a lean transaction exists at the coordinator only from its
  Commit, so it is never held open there while its work runs.
- ``replay``: a log of ``records`` records of completed two-phase transactions (the records a
  real coordinator wrote for one lean transaction, copied under fresh gtrids with the current
  time) is replayed by a coordinator starting on it. Replay time is its start-up time on that log minus its
  start-up time on an empty one (wall and CPU time); peak memory is the kernel's high-water
  mark (``VmHWM``). The same coordinator, with every replayed transaction kept in its history,
  then runs under load across a checkpoint: the worst commit latency shows whether a
  checkpoint stalls commits.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import grpc

from xatm.coordinator.tools.bench.load import Failed
from xatm.coordinator.tools.bench.measure import cpu_seconds, memory_kib
from xatm.coordinator.tools.bench.runs import (
    Participants,
    lean_two_phase,
    learn_node,
    measure_run,
    open_transaction,
    pid,
    two_phase,
)
from xatm.coordinator.tools.procs import Proc, coordinator_proc
from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.file import FileWal, read_records
from xatm.participant.api.v1 import coordinator_pb2_grpc
from xatm.participant.xa import CHANNEL_OPTIONS

__all__ = ["open_memory", "replay"]

#: Open transactions must outlive the measurement: the largest timeout a coordinator accepts.
OPEN_TIMEOUT_MS = 600_000
#: Transactions completed before the first memory reading, so one-off allocations are done.
WARM_TRANSACTIONS = 100


async def _start(proc: Proc) -> tuple[float, float]:
    """Start and wait until healthy: the seconds that took (monotonic) and the CPU seconds it used."""
    started = time.monotonic()
    await asyncio.to_thread(proc.start, wait=120.0)
    return time.monotonic() - started, cpu_seconds(pid(proc))


async def _complete(address: str, endpoints: list[str], count: int, *, eager: bool) -> None:
    """``count`` two-phase transactions one after the other, eager or lean."""
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        one = two_phase(stub, endpoints) if eager else lean_two_phase(stub, endpoints, await learn_node(stub))
        for _ in range(count):
            await one()


async def _open_many(address: str, endpoints: list[str], count: int, concurrency: int) -> None:
    """Begin ``count`` transactions and enlist one branch per endpoint in each; never complete them."""
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        left = iter(range(count))

        async def opener() -> None:
            for _ in left:
                try:
                    await open_transaction(stub, endpoints, OPEN_TIMEOUT_MS)
                except grpc.aio.AioRpcError as err:
                    raise Failed(f"opening transactions: {err.code().name}: {err.details()}") from None

        await asyncio.gather(*(opener() for _ in range(concurrency)))


async def open_memory(
    root: Path, participants: Participants, *, count: int, branches: int, concurrency: int
) -> dict[str, Any]:
    """Resident memory a coordinator adds per open transaction (``count`` of them, ``branches`` each).

    Raises ``Failed`` when a transaction cannot be opened, ``RuntimeError`` when the coordinator
    does not start.
    """
    run_dir = root / "open-memory"
    run_dir.mkdir()
    coordinator = coordinator_proc(run_dir / "data", run_dir, env={"XATM_FAILPOINTS": ""})
    await _start(coordinator)
    endpoints = participants.endpoints(branches)
    try:
        # Eager, as the transactions then held open: the same code paths are warm.
        await _complete(coordinator.address, endpoints, WARM_TRANSACTIONS, eager=True)
        before = memory_kib(pid(coordinator))
        await _open_many(coordinator.address, endpoints, count, concurrency)
        after = memory_kib(pid(coordinator))
    finally:
        # Killed, not stopped: the open transactions are of no further use.
        await asyncio.to_thread(coordinator.kill)
    return {
        "open_transactions": count,
        "branches": branches,
        "rss_before_kib": before,
        "rss_after_kib": after,
        "kib_per_open_transaction": round((after - before) / count, 3),
    }


def _template(data_dir: Path) -> tuple[list[wal_pb2.WalRecord], int]:
    """The records of the completed transaction with the most records in a coordinator's log,
    and how many records the log holds."""
    by_gtrid: defaultdict[str, list[wal_pb2.WalRecord]] = defaultdict(list)
    count = 0
    for _, _, record in read_records(data_dir):
        count += 1
        if record.gtrid:
            by_gtrid[record.gtrid].append(record)
    completed = [rs for rs in by_gtrid.values() if any(r.WhichOneof("body") == "end" for r in rs)]
    if not completed:
        raise RuntimeError(f"no completed transaction in the log of {data_dir}")
    return max(completed, key=len), count


async def _write_history(data_dir: Path, template: list[wal_pb2.WalRecord], transactions: int) -> None:
    """Append ``transactions`` copies of ``template`` under fresh gtrids, stamped now."""
    wal = FileWal(data_dir, must_exist=True)
    await wal.open()
    try:
        gtrid = template[0].gtrid
        for n in range(transactions):
            fresh = f"{gtrid[: 64 - 9]}-{n:08x}"
            for record in template:
                copy = wal_pb2.WalRecord()
                copy.CopyFrom(record)
                copy.gtrid = fresh
                copy.time.GetCurrentTime()
                await wal.append(copy)
    finally:
        await wal.close()


async def replay(
    root: Path,
    participants: Participants,
    *,
    records: int,
    concurrency: int,
    warmup: float,
    seconds: float,
) -> dict[str, Any]:
    """Start-up replay of about ``records`` records, then a loaded window across a checkpoint.

    Raises ``RuntimeError`` when a coordinator does not start or its log holds no template.
    """
    run_dir = root / "replay"
    run_dir.mkdir()
    data_dir = run_dir / "data"
    endpoints = participants.endpoints(2)
    empty = coordinator_proc(data_dir, run_dir, env={"XATM_FAILPOINTS": ""})
    empty_start, empty_cpu = await _start(empty)
    try:
        await _complete(empty.address, endpoints, 3, eager=False)
    finally:
        await asyncio.to_thread(empty.stop)
    template, already = _template(data_dir)
    transactions = max(1, records // len(template))
    await _write_history(data_dir, template, transactions)
    written = already + transactions * len(template)
    # A checkpoint within the window: the worst latency shows whether it stalls commits.
    checkpoint = max(1.0, (warmup + seconds) / 2)
    env = {"XATM_FAILPOINTS": "", "XATM_CHECKPOINT_INTERVAL": f"{checkpoint:g}"}
    full = coordinator_proc(data_dir, run_dir, env=env)
    full.log_path = run_dir / "coordinator-replay.log"
    full_start, full_cpu = await _start(full)
    try:
        peak = memory_kib(pid(full), "VmHWM")
        loaded = await measure_run(
            [full],
            participants,
            config="history",
            round_no=1,
            concurrency=concurrency,
            branches=2,
            warmup=warmup,
            seconds=seconds,
        )
    finally:
        await asyncio.to_thread(full.stop)
        # The generated log is large (about 100 bytes a record) and says nothing a person needs.
        shutil.rmtree(data_dir, ignore_errors=True)
    replay_seconds = max(full_start - empty_start, 1e-3)
    replay_cpu = max(full_cpu - empty_cpu, 1e-3)
    return {
        "records": written,
        "transactions": transactions,
        "records_per_transaction": len(template),
        "start_empty_s": round(empty_start, 3),
        "start_replay_s": round(full_start, 3),
        "replay_s": round(replay_seconds, 3),
        "records_per_s": round(written / replay_seconds),
        # CPU time is much steadier than wall time on a machine shared with other work.
        "replay_cpu_s": round(replay_cpu, 3),
        "records_per_cpu_s": round(written / replay_cpu),
        "peak_rss_mib": round(peak / 1024, 1),
        "history": {
            "transactions_kept": transactions,
            "checkpoint_interval_s": checkpoint,
            "tps": loaded.tps,
            "p99_ms": loaded.p99_ms,
            "max_ms": loaded.max_ms,
            "failed": loaded.failed,
        },
    }
