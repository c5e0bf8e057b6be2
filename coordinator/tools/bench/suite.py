"""The whole benchmark, section by section, into one JSON report.

Sections (``--only`` picks some):

- ``core``: rounds of the echo ceiling, the normal coordinator and each scenario's variant, in
  an order rotated from round to round; medians per configuration; the headline figures
  (normal beside echo) and the scenario ratios.
- ``scaling``: one run per (concurrency, branches) cell, one echo run per concurrency.
- ``memory``: resident memory per open transaction.
- ``replay``: start-up replay rate, peak memory, worst latency with the history kept.
- ``postgresql`` and ``etcd``: only when asked for (``--postgresql``, ``--etcd``).

Speed on a shared machine is noisy, so every number is reported beside a baseline measured the
same way in the same run.
"""

from __future__ import annotations

import asyncio
import os
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from xatm.coordinator.tools.bench import footprint, postgresql, replicas
from xatm.coordinator.tools.bench.echo import EchoRun, echo_proc, measure_echo
from xatm.coordinator.tools.bench.measure import machine
from xatm.coordinator.tools.bench.runs import CONFIGS, SCENARIOS, Participants, Run, run_config

__all__ = ["SECTIONS", "Plan", "benchmark"]

SECTIONS = ("core", "scaling", "memory", "replay", "postgresql", "etcd")
#: Per-run medians a configuration's summary gives.
_MEDIANS = (
    "tps",
    "p50_ms",
    "p99_ms",
    "max_ms",
    "durable_writes_per_commit",
    "decision_writes_per_commit",
    "log_records_per_commit",
    "rpcs_per_commit",
    "coordinator_cpu_ms_per_commit",
    "coordinator_cores",
    "harness_cores",
)
_ECHO_MEDIANS = ("baseline_rps", "p50_ms", "p99_ms", "max_ms", "echo_cpu_ms_per_call", "echo_cores")


@dataclass(frozen=True)
class Plan:
    """What to run and how long: the command line's options after ``--quick`` filled the defaults."""

    sections: tuple[str, ...]
    scenarios: tuple[str, ...]
    concurrency: int
    branches: int
    seconds: float
    warmup: float
    rounds: int
    #: (concurrency, branches) cells of the scaling table.
    scaling: tuple[tuple[int, int], ...]
    open_transactions: int
    replay_records: int


def _median_counts(dicts: list[dict[str, float]]) -> dict[str, float]:
    keys = sorted({k for d in dicts for k in d})
    return {k: round(statistics.median(d.get(k, 0.0) for d in dicts), 3) for k in keys}


def _summary(runs: list[Run]) -> dict[str, Any]:
    summary: dict[str, Any] = {k: round(statistics.median(getattr(r, k) for r in runs), 4) for k in _MEDIANS}
    for key in ("log_records_by_type", "served_per_commit", "sent_per_commit"):
        summary[key] = _median_counts([getattr(r, key) for r in runs])
    summary["tps_each_round"] = [r.tps for r in runs]
    summary["failed"] = sum(r.failed for r in runs)
    summary["branches"] = runs[0].branches
    return summary


def _echo_summary(runs: list[EchoRun]) -> dict[str, Any]:
    summary: dict[str, Any] = {
        k: round(statistics.median(getattr(r, k) for r in runs), 4) for k in _ECHO_MEDIANS
    }
    summary["rps_each_round"] = [r.baseline_rps for r in runs]
    summary["failed"] = sum(r.failed for r in runs)
    return summary


def _ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b else 0.0


def _headline(normal: dict[str, Any], echo: dict[str, Any]) -> dict[str, Any]:
    """The coordinator's figures beside the gRPC ceiling measured in the same rounds.

    ``tx_per_echo`` is the median of the same-round ratios: the machine's load drifts between
    rounds, and a ratio of two runs taken side by side carries less of that drift than a ratio
    of medians taken at different moments.
    """
    pairs = zip(normal["tps_each_round"], echo["rps_each_round"], strict=True)
    each_round = [_ratio(tps, rps) for tps, rps in pairs]
    return {
        "tps": normal["tps"],
        "baseline_rps": echo["baseline_rps"],
        "tx_per_echo": round(statistics.median(each_round), 3),
        "tx_per_echo_each_round": each_round,
        "coordinator_cpu_ms_per_tx": normal["coordinator_cpu_ms_per_commit"],
        "echo_cpu_ms_per_call": echo["echo_cpu_ms_per_call"],
        "cpu_per_tx_per_echo_call": _ratio(
            normal["coordinator_cpu_ms_per_commit"], echo["echo_cpu_ms_per_call"]
        ),
        "p50_ms": normal["p50_ms"],
        "p99_ms": normal["p99_ms"],
        "max_ms": normal["max_ms"],
        "echo_p50_ms": echo["p50_ms"],
        "echo_p99_ms": echo["p99_ms"],
        "echo_max_ms": echo["max_ms"],
        "rpcs_per_tx": normal["rpcs_per_commit"],
        "served_per_tx": normal["served_per_commit"],
        "sent_per_tx": normal["sent_per_commit"],
        "log_records_per_tx": normal["log_records_per_commit"],
        "log_records_by_type": normal["log_records_by_type"],
        "fsyncs_per_tx": normal["durable_writes_per_commit"],
        "decision_writes_per_tx": normal["decision_writes_per_commit"],
    }


def _compare(name: str, summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    baseline, variant, shows = SCENARIOS[name]
    base, var = summaries[baseline], summaries[variant]
    pairs = zip(base["tps_each_round"], var["tps_each_round"], strict=True)
    return {
        "name": name,
        "shows": shows,
        "baseline": {"config": baseline, **base},
        "variant": {"config": variant, **var},
        "tps_ratio": _ratio(var["tps"], base["tps"]),
        # Same-round pairs: their spread shows how far the machine's noise moved the ratio.
        "tps_ratio_each_round": [_ratio(v, b) for b, v in pairs],
    }


class _Bench:
    """One benchmark run: its directory, participants, echo server and progress lines."""

    def __init__(self, root: Path, plan: Plan, say: Callable[[str], None]):
        self.root, self.plan, self.say = root, plan, say
        scaled = [b for _, b in plan.scaling] if "scaling" in plan.sections else []
        branches = max((plan.branches, *scaled))
        self.participants = Participants.create(branches, root)
        self.echo = echo_proc(root)
        self.runs: list[Run] = []
        self.echo_runs: list[EchoRun] = []

    async def coordinator(
        self, name: str, round_no: int, concurrency: int, branches: int, label: str = ""
    ) -> Run:
        run = await run_config(
            self.root,
            CONFIGS[name],
            round_no,
            self.participants,
            concurrency=concurrency,
            branches=branches,
            warmup=self.plan.warmup,
            seconds=self.plan.seconds,
            label=label,
        )
        self.say(
            f"{run.config:<16} c={run.concurrency:<3} b={run.branches} {run.tps:7.1f} tx/s  "
            f"p50 {run.p50_ms:6.1f}  p99 {run.p99_ms:6.1f}  max {run.max_ms:6.1f} ms  "
            f"{run.coordinator_cpu_ms_per_commit:.2f} CPU ms/tx  "
            f"{run.rpcs_per_commit:.1f} RPC/tx  {run.log_records_per_commit:.1f} rec/tx  failed {run.failed}"
            + (f" (first: {run.first_error})" if run.failed else "")
        )
        if run.committed == 0:
            raise RuntimeError(f"the {run.config} run committed nothing ({run.first_error or 'no error'})")
        self.runs.append(run)
        return run

    async def ceiling(self, round_no: int, concurrency: int) -> EchoRun:
        run = await measure_echo(
            self.echo,
            round_no=round_no,
            concurrency=concurrency,
            warmup=self.plan.warmup,
            seconds=self.plan.seconds,
        )
        self.say(
            f"{'echo':<16} c={concurrency:<3}     {run.baseline_rps:7.1f} calls/s  p50 {run.p50_ms:6.1f}  "
            f"p99 {run.p99_ms:6.1f}  max {run.max_ms:6.1f} ms  {run.echo_cpu_ms_per_call:.3f} CPU ms/call"
        )
        if run.calls == 0:
            raise RuntimeError(f"the echo server answered nothing ({run.first_error or 'no error'})")
        self.echo_runs.append(run)
        return run

    async def core(self) -> dict[str, Any]:
        plan = self.plan
        names = ["echo", *dict.fromkeys(n for s in plan.scenarios for n in SCENARIOS[s][:2])]
        if "normal" not in names:
            names.append("normal")
        for round_no in range(1, plan.rounds + 1):
            shift = (round_no - 1) % len(names)
            for name in names[shift:] + names[:shift]:
                if name == "echo":
                    await self.ceiling(round_no, plan.concurrency)
                else:
                    await self.coordinator(name, round_no, plan.concurrency, plan.branches)
        summaries = {n: _summary([r for r in self.runs if r.config == n]) for n in names if n != "echo"}
        echo = _echo_summary([r for r in self.echo_runs if r.concurrency == plan.concurrency])
        return {
            "headline": _headline(summaries["normal"], echo),
            "echo": echo,
            "configs": summaries,
            "scenarios": [_compare(name, summaries) for name in plan.scenarios],
        }

    async def scaling(self) -> list[dict[str, Any]]:
        """One run per cell; a cell the core rounds measured already (their first round) is reused."""
        cells = []
        for concurrency, branches in self.plan.scaling:
            echoes = [r for r in self.echo_runs if r.concurrency == concurrency]
            echo = echoes[0] if echoes else await self.ceiling(0, concurrency)
            done = [
                r
                for r in self.runs
                if r.config == "normal" and (r.concurrency, r.branches) == (concurrency, branches)
            ]
            label = f"scale-c{concurrency}-b{branches}"
            run = done[0] if done else await self.coordinator("normal", 0, concurrency, branches, label)
            cells.append(
                {
                    "concurrency": concurrency,
                    "branches": branches,
                    "tps": run.tps,
                    "p50_ms": run.p50_ms,
                    "p99_ms": run.p99_ms,
                    "max_ms": run.max_ms,
                    "coordinator_cpu_ms_per_tx": run.coordinator_cpu_ms_per_commit,
                    "rpcs_per_tx": run.rpcs_per_commit,
                    "log_records_per_tx": run.log_records_per_commit,
                    "baseline_rps": echo.baseline_rps,
                    "tx_per_echo": _ratio(run.tps, echo.baseline_rps),
                    "failed": run.failed,
                }
            )
        return cells

    async def memory(self) -> dict[str, Any]:
        plan = self.plan
        memory = await footprint.open_memory(
            self.root,
            self.participants,
            count=plan.open_transactions,
            branches=plan.branches,
            concurrency=plan.concurrency,
        )
        self.say(f"memory: {memory['kib_per_open_transaction']:.2f} KiB per open transaction")
        return memory

    async def replay(self) -> dict[str, Any]:
        plan = self.plan
        # At least 2 s, so the checkpoint the measurement needs falls inside the window.
        r = await footprint.replay(
            self.root,
            self.participants,
            records=plan.replay_records,
            concurrency=plan.concurrency,
            warmup=plan.warmup,
            seconds=max(plan.seconds, 2.0),
        )
        self.say(
            f"replay: {r['records']} records in {r['replay_s']:.2f} s = {r['records_per_s']} records/s, "
            f"peak {r['peak_rss_mib']} MiB; max latency with history {r['history']['max_ms']} ms"
        )
        return r

    async def postgresql(self) -> dict[str, Any]:
        plan = self.plan
        pg = await postgresql.compare_postgresql(
            self.root, rounds=plan.rounds, warmup=plan.warmup, seconds=plan.seconds
        )
        self.say(f"postgresql: xatm/direct {pg['ratio']}")
        return pg

    async def etcd(self) -> dict[str, Any]:
        plan = self.plan
        etcd = await replicas.compare_replicas(
            self.root,
            self.participants,
            rounds=plan.rounds,
            concurrency=plan.concurrency,
            warmup=plan.warmup,
            seconds=plan.seconds,
        )
        for name, c in etcd["configs"].items():
            self.say(f"{name}: {c['tps']} tx/s p99 {c['p99_ms']} ms, x{c['tps_ratio_to_wal']} of wal")
        return etcd

    async def run(self) -> dict[str, Any]:
        sections = self.plan.sections
        report: dict[str, Any] = dict.fromkeys(
            ("headline", "echo", "configs", "scenarios", "scaling", "memory", "replay", "postgresql", "etcd")
        )
        try:
            if set(sections) - {"postgresql"}:
                await asyncio.to_thread(self.participants.start)
            if {"core", "scaling"} & set(sections):
                await asyncio.to_thread(self.echo.start)
            # In SECTIONS order: the scaling table reuses what the core rounds measured.
            for section in sorted(sections, key=SECTIONS.index):
                if section == "core":
                    report.update(await self.core())
                else:
                    report[section] = await getattr(self, section)()
        finally:
            self.participants.stop()
            self.echo.stop()
        report["runs"] = [asdict(r) for r in self.runs]
        report["echo_runs"] = [asdict(r) for r in self.echo_runs]
        return report


async def benchmark(root: Path, plan: Plan, say: Callable[[str], None]) -> dict[str, Any]:
    """Every section of ``plan`` with every process's log and data under ``root``; the JSON report.

    Raises ``RuntimeError``/``OSError``/``TimeoutError`` when the harness fails (a process does not
    start or dies, a run commits nothing).
    """
    about = machine()
    report = await _Bench(root, plan, say).run()
    about["loadavg_end"] = round(os.getloadavg()[0], 2)
    return {"machine": about, "settings": asdict(plan), **report}
