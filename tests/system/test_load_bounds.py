"""Load on loopback: one huge transaction and dead participants beside normal traffic.

A real coordinator (checkpoints every second, a short history) and five cheap in-memory
participants. Normal two-branch traffic is measured alone first, then again while, at the same
time, one transaction of 2,000 branches over the five participants commits and 100 transactions
whose branches name an endpoint nobody listens on keep retrying phase two. The test asserts
outcomes and ratios, never absolute times:

- every normal transaction committed, in both phases;
- the coordinator's resident memory and its WAL directory, sampled every second, stay bounded:
  the last third of the samples does not exceed the first third's maximum by more than a
  generous factor, and the WAL is back under a bound once a checkpoint follows the load;
- /metrics shows the dead endpoint as unreachable with every dead branch waiting for it, and the
  coordinator log holds far fewer WARNING lines than phase-two retries (one warning per branch
  and then summaries, not one per retry).

The figures (RSS and WAL min/max, normal commits/s alone and under load) are printed for the
record: run with ``-s`` to see them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from xatm.coordinator.tools.bench import runs
from xatm.coordinator.tools.bench.load import Window, worker
from xatm.coordinator.tools.bench.runs import Participants, two_phase
from xatm.coordinator.tools.procs import Proc, coordinator_proc, free_port
from xatm.participant.api.v1 import coordinator_pb2, coordinator_pb2_grpc
from xatm.participant.xa import CHANNEL_OPTIONS, TxOutcome, XaCode

PARTICIPANTS = 5
HUGE_BRANCHES = 2_000
DEAD_TRANSACTIONS = 100
#: Normal traffic: concurrent initiators, each Begin -> two Enlists -> Commit back to back.
WORKERS = 4
ALONE_SECONDS = 5.0
LOADED_SECONDS = 20.0
RSS_FACTOR = 1.5
WAL_FACTOR = 3.0
#: Normal commits/s beside the load, as a share of the same traffic alone: generous on purpose
#: (a shared two-core machine), yet far above what a starved coordinator reaches.
MIN_TPS_RATIO = 0.2


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def _dir_bytes(path: Path) -> int:
    total = 0
    for entry in path.rglob("*"):
        try:
            if entry.is_file():
                total += entry.stat().st_size
        except FileNotFoundError:  # a segment removed by a checkpoint while we walk
            pass
    return total


def _metrics(http: str) -> dict[str, float]:
    """Every sample of the coordinator's /metrics, keyed by name and sorted labels."""
    with urllib.request.urlopen(f"http://{http}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}"] = sample.value
    return found


def _sum(metrics: dict[str, float], name: str) -> float:
    return sum(v for k, v in metrics.items() if k.startswith(name + "{"))


async def _normal_traffic(
    stub: coordinator_pb2_grpc.CoordinatorStub, endpoints: list[str], seconds: float
) -> Window:
    """``WORKERS`` initiators for ``seconds``; every transaction they start is counted."""
    window = Window(start=time.perf_counter())
    workers = [asyncio.create_task(worker(two_phase(stub, endpoints), window)) for _ in range(WORKERS)]
    await asyncio.sleep(seconds)
    window.end = time.perf_counter()
    window.stopping = True
    await asyncio.wait_for(asyncio.gather(*workers), 60)
    return window


async def _enlist(
    stub: coordinator_pb2_grpc.CoordinatorStub, gtrid: str, bqual: str, rm_id: str, endpoint: str
) -> None:
    request = coordinator_pb2.EnlistRequest(gtrid=gtrid, bqual=bqual, rm_id=rm_id, endpoint=endpoint)
    reply = await stub.Enlist(request, timeout=30)
    assert reply.code == XaCode.XA_OK, f"enlist {bqual} answered {XaCode(reply.code).name} {reply.reason}"


async def _huge_transaction(stub: coordinator_pb2_grpc.CoordinatorStub, endpoints: list[str]) -> int:
    """2,000 branches over the participants, enlisted 50 at a time, then committed: its outcome."""
    begun = await stub.Begin(coordinator_pb2.BeginRequest(timeout_ms=300_000), timeout=30)
    for first in range(0, HUGE_BRANCHES, 50):
        await asyncio.gather(
            *(
                _enlist(
                    stub, begun.gtrid, f"h{i}", f"bench-{i % len(endpoints)}", endpoints[i % len(endpoints)]
                )
                for i in range(first, first + 50)
            )
        )
    done = await stub.Commit(coordinator_pb2.CompletionRequest(gtrid=begun.gtrid), timeout=120)
    return int(done.outcome)


async def _dead_transaction(stub: coordinator_pb2_grpc.CoordinatorStub, dead: str, index: int) -> None:
    """Two branches at an endpoint nobody listens on; half are committed, half rolled back.

    Either way the coordinator ends up retrying phase two at the dead endpoint: prepare fails,
    so a commit turns into a rollback that cannot reach the branches."""
    begun = await stub.Begin(coordinator_pb2.BeginRequest(), timeout=30)
    for b in range(2):
        await _enlist(stub, begun.gtrid, f"d{b}", "dead", dead)
    request = coordinator_pb2.CompletionRequest(gtrid=begun.gtrid)
    try:
        if index % 2:
            await stub.Commit(request, timeout=30)
        else:
            await stub.Rollback(request, timeout=30)
    except grpc.aio.AioRpcError:
        pass  # the answer does not matter: what the coordinator does afterwards does


async def _sample(coordinator: Proc, wal: Path, stop: asyncio.Event) -> list[tuple[int, int]]:
    """(RSS KiB, WAL bytes) once a second until ``stop``."""
    pid = runs.pid(coordinator)
    samples: list[tuple[int, int]] = []
    while not stop.is_set():
        samples.append((_rss_kib(pid), await asyncio.to_thread(_dir_bytes, wal)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    return samples


@dataclass
class _Result:
    alone: Window
    loaded: Window
    huge: int
    #: (coordinator RSS KiB, WAL directory bytes), one a second during the load
    samples: list[tuple[int, int]]
    #: WAL directory bytes once checkpoints followed the load
    after_wal: int


async def _scenario(coordinator: Proc, endpoints: list[str], wal: Path) -> _Result:
    dead = f"127.0.0.1:{free_port()}"
    async with grpc.aio.insecure_channel(coordinator.address, options=CHANNEL_OPTIONS) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        alone = await _normal_traffic(stub, endpoints[:2], ALONE_SECONDS)

        stop = asyncio.Event()
        sampler = asyncio.create_task(_sample(coordinator, wal, stop))
        huge = asyncio.create_task(_huge_transaction(stub, endpoints))
        deads = asyncio.gather(*(_dead_transaction(stub, dead, i) for i in range(DEAD_TRANSACTIONS)))
        loaded = await _normal_traffic(stub, endpoints[:2], LOADED_SECONDS)
        huge_outcome = await huge
        await deads
        # A checkpoint (every second) after the load: the WAL shrinks back.
        await asyncio.sleep(3)
        stop.set()
        samples = await sampler
        after_wal = await asyncio.to_thread(_dir_bytes, wal)
    return _Result(alone, loaded, huge_outcome, samples, after_wal)


def test_huge_transaction_and_dead_participants_leave_normal_traffic_and_resources_bounded(
    tmp_path: Path,
) -> None:
    participants = Participants.create(PARTICIPANTS, tmp_path)
    extra = [
        "--checkpoint-interval", "1",
        "--history-retention", "2",
        "--max-history", "500",
        "--max-branches", str(HUGE_BRANCHES),
        "--retry-max", "0.5",
        "--call-timeout", "1",
        "--commit-wait", "2",
        "--unreachable-summary-interval", "5",
    ]  # fmt: skip
    data = tmp_path / "data"
    data.mkdir()
    coordinator = coordinator_proc(data, tmp_path, env={"XATM_FAILPOINTS": ""}, extra=extra)
    try:
        participants.start()
        coordinator.start()
        result = asyncio.run(_scenario(coordinator, participants.endpoints(PARTICIPANTS), data))
        metrics = _metrics(coordinator.http)
        assert coordinator.alive, coordinator.tail()
    finally:
        coordinator.stop()
        participants.stop()

    alone, loaded = result.alone, result.loaded
    for name, window in (("alone", alone), ("under load", loaded)):
        assert window.failed == 0, (
            f"normal traffic {name}: {window.failed} failed, first: {window.first_error}"
        )
        assert window.latencies, f"normal traffic {name} committed nothing"
    assert result.huge == TxOutcome.TX_OK, f"the huge transaction answered {TxOutcome(result.huge).name}"

    samples = result.samples
    assert len(samples) >= 9, samples
    third = len(samples) // 3
    rss = [s[0] for s in samples]
    wal = [s[1] for s in samples]
    after_wal = result.after_wal

    unreachable = _sum(metrics, "xatm_unreachable_participants")
    waiting = _sum(metrics, "xatm_unreachable_branches")
    retries = _sum(metrics, "xatm_retries_total")
    log_text = coordinator.log_path.read_text(errors="replace")
    warnings = [line for line in log_text.splitlines() if "WARNING" in line]
    per_branch = collections.Counter(
        line.split(": ", 1)[1].split(":", 1)[0] for line in warnings if "will retry" in line
    )
    dead_branches = 2 * DEAD_TRANSACTIONS

    alone_tps = len(alone.latencies) / (alone.end - alone.start)
    loaded_tps = len(loaded.latencies) / (loaded.end - loaded.start)
    mib, kib = 1024, 1024
    print(
        f"\nload figures: {len(samples)} samples; "
        f"coordinator RSS {min(rss) / mib:.1f}-{max(rss) / mib:.1f} MiB "
        f"(first third max {max(rss[:third]) / 1024:.1f}, last third max {max(rss[-third:]) / 1024:.1f}); "
        f"WAL {min(wal) / kib:.0f}-{max(wal) / kib:.0f} KiB "
        f"(first third max {max(wal[:third]) / kib:.0f}, "
        f"last third max {max(wal[-third:]) / 1024:.0f}, after the load {after_wal / 1024:.0f}); "
        f"normal commits/s alone {alone_tps:.1f}, beside the load {loaded_tps:.1f} "
        f"(ratio {loaded_tps / alone_tps:.2f}); {len(loaded.latencies)} normal commits under load, 0 failed; "
        f"unreachable participants {unreachable:g} with {waiting:g} branches waiting; "
        f"phase-two retries {retries:g}; "
        f"WARNING lines {len(warnings)} ({len(per_branch)} branches warned) for {dead_branches} dead branches"
    )

    assert max(rss[-third:]) <= RSS_FACTOR * max(rss[:third]), f"RSS grew: {rss}"
    assert max(wal[-third:]) <= WAL_FACTOR * max(wal[:third]), f"WAL grew: {wal}"
    assert after_wal <= max(wal[:third]), f"the WAL did not shrink back after a checkpoint: {after_wal} {wal}"
    assert unreachable >= 1, "the dead endpoint is not shown as unreachable"
    # Every dead branch is still owed its rollback, and counted under the dead endpoint's name.
    assert waiting == dead_branches, f"{waiting:g} branches shown waiting for {dead_branches} dead ones"
    assert loaded_tps >= MIN_TPS_RATIO * alone_tps, (
        f"normal traffic starved: {loaded_tps:.1f} vs {alone_tps:.1f}/s"
    )
    assert retries >= 1 and per_branch, "the dead branches were never retried"
    twice = {branch: n for branch, n in per_branch.items() if n > 1}
    assert not twice, f"a WARNING per retry, not per branch: {twice}"
    assert len(warnings) <= dead_branches + 20, (
        f"{len(warnings)} WARNING lines for {dead_branches} dead branches"
    )
