"""``xatm bench --etcd``: coordinator replicas on etcd beside the embedded WAL, in the same run.

A throwaway three-member etcd cluster on loopback (``etcdcluster``, the ``etcd`` binary from
PATH) holds the log of one replica, then of three replicas sharing the load (each transaction
begun, enlisted and committed on one replica, the replicas taken in turn); a coordinator on its
embedded WAL is the baseline. Every run starts fresh coordinators with node ids of their own,
and rounds rotate the order of the three configurations.
"""

from __future__ import annotations

import asyncio
import importlib.util
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any

from xatm.coordinator.tools.bench.runs import Participants, Run, measure_run
from xatm.coordinator.tools.procs import Proc, coordinator_proc

__all__ = ["ETCD_CONFIGS", "compare_replicas"]

#: name -> (store, replicas)
ETCD_CONFIGS: dict[str, tuple[str, int]] = {"wal": ("file", 1), "etcd-1": ("etcd", 1), "etcd-3": ("etcd", 3)}


async def _one(
    root: Path, url: str, name: str, round_no: int, participants: Participants, settings: dict[str, Any]
) -> Run:
    store, replicas = ETCD_CONFIGS[name]
    procs: list[Proc] = []
    for i in range(replicas):
        run_dir = root / f"etcd-round{round_no}-{name}-r{i}"
        run_dir.mkdir(parents=True)
        extra = (
            ["--store", url, "--node-id", f"b{round_no}{name.replace('-', '')}r{i}"]
            if store == "etcd"
            else []
        )
        procs.append(coordinator_proc(run_dir / "data", run_dir, env={"XATM_FAILPOINTS": ""}, extra=extra))
    try:
        for proc in procs:
            await asyncio.to_thread(proc.start, wait=60.0)
        return await measure_run(procs, participants, config=name, round_no=round_no, store=store, **settings)
    finally:
        dead = [p for p in procs if p.popen is not None and not p.alive]
        for proc in procs:
            await asyncio.to_thread(proc.stop)
        if dead:
            raise RuntimeError(f"{dead[0].name} of {name} died during the run; log:\n{dead[0].tail()}")


async def compare_replicas(
    root: Path,
    participants: Participants,
    *,
    rounds: int,
    concurrency: int,
    warmup: float,
    seconds: float,
) -> dict[str, Any]:
    """Each configuration ``rounds`` times; the report section ``etcd`` (medians, ratios to ``wal``).

    Raises ``RuntimeError`` when etcd, its client library or a coordinator is missing or dies.
    """
    from xatm.coordinator.tools.etcdcluster import EtcdCluster

    if importlib.util.find_spec("aetcd") is None:
        raise RuntimeError("--etcd needs the etcd client library: pip install 'xatm[etcd]'")
    settings = {"concurrency": concurrency, "branches": 2, "warmup": warmup, "seconds": seconds}
    names = list(ETCD_CONFIGS)
    runs: list[Run] = []
    cluster = await asyncio.to_thread(EtcdCluster, 3)
    try:
        for round_no in range(1, rounds + 1):
            shift = (round_no - 1) % len(names)
            for name in names[shift:] + names[:shift]:
                runs.append(await _one(root, cluster.url, name, round_no, participants, settings))
    finally:
        await asyncio.to_thread(cluster.destroy)

    def summary(name: str) -> dict[str, Any]:
        mine = [r for r in runs if r.config == name]
        store, replicas = ETCD_CONFIGS[name]
        medians = {
            k: statistics.median(getattr(r, k) for r in mine)
            for k in (
                "tps",
                "p50_ms",
                "p99_ms",
                "max_ms",
                "coordinator_cpu_ms_per_commit",
                "durable_writes_per_commit",
            )
        }
        return {"store": store, "replicas": replicas, **medians, "tps_each_round": [r.tps for r in mine],
                "failed": sum(r.failed for r in mine)}  # fmt: skip

    summaries = {name: summary(name) for name in names}
    wal_tps = summaries["wal"]["tps"]
    for name in names:
        summaries[name]["tps_ratio_to_wal"] = round(summaries[name]["tps"] / wal_tps, 3) if wal_tps else 0.0
    return {"concurrency": concurrency, "configs": summaries, "runs": [asdict(r) for r in runs]}
