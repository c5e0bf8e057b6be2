"""``xatm bench``: coordinator throughput and latency, each scenario beside its baseline.

A real coordinator process (fresh data dir for every run) and one cheap participant process
per branch (``bench_participant``: the Participant service over an in-memory RM) are driven by
``concurrency`` asyncio workers in this process, each looping Begin -> Enlist (one branch per
participant, straight through the Coordinator API) -> Commit over grpc.aio.

Speed on a shared machine is noisy, so a number means something only next to its baseline
measured the same way at the same time: every round runs each configuration once, in an
order rotated from round to round, and the report gives per-configuration medians and the
variant/baseline throughput ratio. WAL counters come from the coordinator's own /metrics,
CPU times from /proc.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families

from xatm.coordinator.tools.procs import Proc, coordinator_proc, free_port
from xatm.participant.api.v1 import coordinator_pb2, coordinator_pb2_grpc
from xatm.participant.xa import CHANNEL_OPTIONS, TxOutcome, XaCode

__all__ = ["CONFIGS", "SCENARIOS", "add_parser", "render_table"]

#: The slow disk of the slow-disk scenario: every WAL fsync waits 5 ms more.
SLOW_DISK = "wal.before_fsync=sleep(5)"
#: Deadline of one initiator call: far above any healthy latency, so only a stuck run hits it.
CALL_TIMEOUT = 30.0


@dataclass(frozen=True)
class Config:
    """One way of running the coordinator; a scenario compares two of them."""

    name: str
    description: str
    one_phase: bool = False
    slow_disk: bool = False


CONFIGS = {
    c.name: c
    for c in (
        Config("normal", "two-phase commit, normal disk"),
        Config("slow-disk", f"two-phase commit, XATM_FAILPOINTS={SLOW_DISK}", slow_disk=True),
        Config("one-phase", "one branch: one-phase commit, no prepare, no forced write", one_phase=True),
    )
}

#: scenario -> (baseline config, variant config, what the comparison shows)
SCENARIOS: dict[str, tuple[str, str, str]] = {
    "slow-disk": (
        "normal",
        "slow-disk",
        "group commit: one fsync serves all decisions waiting, so a slow fsync costs latency, not throughput",
    ),
    "one-phase": ("normal", "one-phase", "one branch skips prepare and the forced decision write"),
}

#: Per-run numbers whose medians the report gives.
_MEDIANS = (
    "tps",
    "p50_ms",
    "p99_ms",
    "fsyncs_per_commit",
    "decision_writes_per_commit",
    "coordinator_cpu_ms_per_commit",
    "coordinator_cores",
    "harness_cores",
)


@dataclass
class Run:
    """One configuration measured once over the window after warm-up."""

    config: str
    round: int
    branches: int
    seconds: float
    committed: int
    failed: int
    tps: float
    p50_ms: float
    p99_ms: float
    fsyncs_per_commit: float
    decision_writes_per_commit: float
    #: CPU the coordinator burnt per committed transaction: much steadier than tx/s on a shared
    #: machine, since other work delays the coordinator but does not add to its CPU time.
    coordinator_cpu_ms_per_commit: float
    #: Cores kept busy by the coordinator, and by the harness (initiators plus participants).
    coordinator_cores: float
    harness_cores: float
    first_error: str = ""


@dataclass
class _Window:
    """The measured interval in ``time.perf_counter`` time; workers keep running around it."""

    start: float = float("inf")
    end: float = float("inf")
    stopping: bool = False
    latencies: list[float] = field(default_factory=list)
    failed: int = 0
    first_error: str = ""

    def fail(self, what: str) -> None:
        self.failed += 1
        self.first_error = self.first_error or what


def _percentile(sorted_values: list[float], q: float) -> float:
    """Nearest rank, no interpolation: p99 is a latency that really occurred."""
    if not sorted_values:
        return 0.0
    rank = min(max(1, math.ceil(q * len(sorted_values))), len(sorted_values))
    return sorted_values[rank - 1]


def _pid(proc: Proc) -> int:
    assert proc.popen is not None, f"{proc.name} was never started"
    return proc.popen.pid


def _cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, from /proc/PID/stat (utime and stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _scrape(http: str) -> dict[str, float]:
    """The coordinator counters the report needs, from its Prometheus endpoint."""
    with urllib.request.urlopen(f"http://{http}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    wanted = {
        ("xatm_wal_fsync_duration_seconds_count", ()): "fsyncs",
        ("xatm_transactions_completed_total", (("outcome", "committed"),)): "committed",
        ("xatm_wal_records_total", (("type", "decision"),)): "decisions",
    }
    found = dict.fromkeys(wanted.values(), 0.0)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = wanted.get((sample.name, tuple(sorted(sample.labels.items()))))
            if key:
                found[key] = sample.value
    return found


async def _worker(stub: coordinator_pb2_grpc.CoordinatorStub, endpoints: list[str], window: _Window) -> None:
    """Transactions back to back; only commits that complete inside the window count."""
    while not window.stopping:
        try:
            begun = await stub.Begin(coordinator_pb2.BeginRequest(), timeout=CALL_TIMEOUT)
            refused = ""
            for i, endpoint in enumerate(endpoints):
                request = coordinator_pb2.EnlistRequest(
                    gtrid=begun.gtrid, bqual=f"b{i}", rm_id=f"bench-{i}", endpoint=endpoint
                )
                reply = await stub.Enlist(request, timeout=CALL_TIMEOUT)
                if reply.code != XaCode.XA_OK:
                    refused = f"enlist answered {XaCode(reply.code).name} {reply.reason}"
                    break
            if refused:
                window.fail(refused)
                continue
            started = time.perf_counter()
            done = await stub.Commit(
                coordinator_pb2.CompletionRequest(gtrid=begun.gtrid), timeout=CALL_TIMEOUT
            )
            ended = time.perf_counter()
        except grpc.aio.AioRpcError as err:
            window.fail(f"{err.code().name}: {err.details()}")
            continue
        if done.outcome != TxOutcome.TX_OK:
            window.fail(f"commit answered {TxOutcome(done.outcome).name}")
        elif window.start <= ended <= window.end:
            window.latencies.append(ended - started)


async def _measure(
    coordinator: Proc, participants: list[Proc], config: Config, round_no: int, args: argparse.Namespace
) -> Run:
    """Load the coordinator, then read counters and CPU times at both ends of the window."""
    window = _Window()
    coordinator_pid = _pid(coordinator)
    harness = [os.getpid(), *map(_pid, participants)]

    def snapshot() -> tuple[dict[str, float], float, float]:
        counters = _scrape(coordinator.http)
        return counters, _cpu_seconds(coordinator_pid), sum(map(_cpu_seconds, harness))

    endpoints = [p.address for p in participants]
    async with grpc.aio.insecure_channel(coordinator.address, options=CHANNEL_OPTIONS) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        workers = [asyncio.create_task(_worker(stub, endpoints, window)) for _ in range(args.concurrency)]
        try:
            await asyncio.sleep(args.warmup)
            before, coordinator_cpu0, harness_cpu0 = await asyncio.to_thread(snapshot)
            window.start = time.perf_counter()
            await asyncio.sleep(args.seconds)
            window.end = time.perf_counter()
            after, coordinator_cpu1, harness_cpu1 = await asyncio.to_thread(snapshot)
            window.stopping = True
            await asyncio.wait_for(asyncio.gather(*workers), CALL_TIMEOUT)
        finally:
            for task in workers:
                task.cancel()

    elapsed = window.end - window.start
    latencies = sorted(window.latencies)
    committed = len(latencies)
    server_commits = after["committed"] - before["committed"]

    def per_commit(key: str) -> float:
        return round((after[key] - before[key]) / server_commits, 4) if server_commits else 0.0

    coordinator_cpu = coordinator_cpu1 - coordinator_cpu0
    return Run(
        config=config.name,
        round=round_no,
        branches=len(participants),
        seconds=round(elapsed, 3),
        committed=committed,
        failed=window.failed,
        tps=round(committed / elapsed, 1),
        p50_ms=round(_percentile(latencies, 0.50) * 1000, 2),
        p99_ms=round(_percentile(latencies, 0.99) * 1000, 2),
        fsyncs_per_commit=per_commit("fsyncs"),
        decision_writes_per_commit=per_commit("decisions"),
        coordinator_cpu_ms_per_commit=round(coordinator_cpu * 1000 / max(committed, 1), 3),
        coordinator_cores=round(coordinator_cpu / elapsed, 2),
        harness_cores=round((harness_cpu1 - harness_cpu0) / elapsed, 2),
        first_error=window.first_error,
    )


def _participant_proc(index: int, log_dir: Path) -> Proc:
    address = f"127.0.0.1:{free_port()}"
    argv = ["-m", "xatm.coordinator.tools.bench_participant", "--listen", address]
    argv += ["--rm-id", f"bench-{index}"]
    log = log_dir / f"participant-{index}.log"
    return Proc(f"participant-{index}", argv, address, log, {"XATM_FAILPOINTS": ""})


async def _run_config(
    root: Path, config: Config, round_no: int, participants: list[Proc], args: argparse.Namespace
) -> Run:
    """A fresh coordinator (own data dir and log) for one measurement, stopped afterwards."""
    run_dir = root / f"round{round_no}-{config.name}"
    run_dir.mkdir(parents=True)
    # Explicitly empty for the others, so a failpoint armed in the caller's shell stays out.
    env = {"XATM_FAILPOINTS": SLOW_DISK if config.slow_disk else ""}
    coordinator = coordinator_proc(run_dir / "data", run_dir, env=env)
    await asyncio.to_thread(coordinator.start)
    try:
        branches = participants[:1] if config.one_phase else participants
        return await _measure(coordinator, branches, config, round_no, args)
    finally:
        died = not coordinator.alive
        await asyncio.to_thread(coordinator.stop)
        if died:  # whatever else went wrong, this is the error to report
            raise RuntimeError(
                f"the coordinator died during the {config.name} run; log:\n{coordinator.tail()}"
            )


def _machine() -> dict[str, Any]:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": model,
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "loadavg_start": round(os.getloadavg()[0], 2),
    }


def _progress(run: Run, rounds: int) -> str:
    line = (
        f"round {run.round}/{rounds} {run.config:<9} {run.tps:7.1f} tx/s  p50 {run.p50_ms:6.1f} ms  "
        f"p99 {run.p99_ms:6.1f} ms  fsync/tx {run.fsyncs_per_commit:.3f}  "
        f"coordinator {run.coordinator_cpu_ms_per_commit:.2f} CPU ms/tx  failed {run.failed}"
    )
    return line + (f" (first: {run.first_error})" if run.failed else "")


def _summary(runs: list[Run]) -> dict[str, Any]:
    summary: dict[str, Any] = {k: round(statistics.median(getattr(r, k) for r in runs), 4) for k in _MEDIANS}
    summary["tps_each_round"] = [r.tps for r in runs]
    summary["failed"] = sum(r.failed for r in runs)
    summary["branches"] = runs[0].branches
    return summary


def _compare(name: str, summaries: dict[str, dict[str, Any]]) -> dict[str, Any]:
    baseline, variant, shows = SCENARIOS[name]
    base, var = summaries[baseline], summaries[variant]
    pairs = zip(base["tps_each_round"], var["tps_each_round"], strict=True)
    return {
        "name": name,
        "shows": shows,
        "baseline": {"config": baseline, **base},
        "variant": {"config": variant, **var},
        "tps_ratio": round(var["tps"] / base["tps"], 3),
        # Same-round pairs: their spread shows how far the machine's noise moved the ratio.
        "tps_ratio_each_round": [round(v / b, 3) for b, v in pairs],
    }


async def _benchmark(root: Path, args: argparse.Namespace, say: Callable[[str], None]) -> dict[str, Any]:
    """Every round with every process's log and data under ``root``; the JSON report."""
    machine = _machine()
    scenarios = list(dict.fromkeys(args.scenarios))
    names = list(dict.fromkeys(n for s in scenarios for n in SCENARIOS[s][:2]))
    participants = [_participant_proc(i, root) for i in range(args.branches)]
    runs: list[Run] = []
    try:
        for proc in participants:
            await asyncio.to_thread(proc.start)
        for round_no in range(1, args.rounds + 1):
            shift = (round_no - 1) % len(names)
            for name in names[shift:] + names[:shift]:
                run = await _run_config(root, CONFIGS[name], round_no, participants, args)
                say(_progress(run, args.rounds))
                if run.committed == 0:
                    raise RuntimeError(f"the {name} run committed nothing ({run.first_error or 'no error'})")
                runs.append(run)
    finally:
        for proc in participants:
            proc.stop()
    machine["loadavg_end"] = round(os.getloadavg()[0], 2)

    summaries = {n: _summary([r for r in runs if r.config == n]) for n in names}
    compared = [_compare(name, summaries) for name in scenarios]
    passed = None
    if args.check_ratio is not None:
        passed = next(c["tps_ratio"] for c in compared if c["name"] == "slow-disk") >= args.check_ratio
    return {
        "machine": machine,
        "settings": {
            "concurrency": args.concurrency,
            "seconds": args.seconds,
            "warmup": args.warmup,
            "rounds": args.rounds,
            "branches": args.branches,
            "scenarios": scenarios,
        },
        "configs": {n: CONFIGS[n].description for n in names},
        "runs": [asdict(r) for r in runs],
        "scenarios": compared,
        "check": {"ratio_bound": args.check_ratio, "passed": passed},
    }


def render_table(report: dict[str, Any]) -> str:
    """The report as a person reads it, built from the JSON document so the two never disagree."""
    m, s = report["machine"], report["settings"]
    lines = [
        f"xatm bench on {m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}, {m['platform']}",
        f"load average {m['loadavg_start']} before, {m['loadavg_end']} after "
        "(load before the start is other work sharing the machine)",
        f"concurrency {s['concurrency']}, {s['seconds']:g} s measured per run "
        f"after {s['warmup']:g} s warm-up, {s['rounds']} round(s) with the configurations rotated; "
        "medians over rounds",
        "",
        f"{'config':<10} {'branches':>8} {'tx/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'fsync/tx':>8} "
        f"{'forced/tx':>9} {'CPU ms/tx':>9} {'coord cores':>11} {'harness cores':>13} {'failed':>6}  "
        "tx/s each round",
    ]
    rows: dict[str, dict[str, Any]] = {}
    for scenario in report["scenarios"]:
        for side in ("baseline", "variant"):
            rows.setdefault(scenario[side]["config"], scenario[side])
    for name, r in rows.items():
        lines.append(
            f"{name:<10} {r['branches']:>8} {r['tps']:>7.1f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} "
            f"{r['fsyncs_per_commit']:>8.3f} {r['decision_writes_per_commit']:>9.3f} "
            f"{r['coordinator_cpu_ms_per_commit']:>9.2f} {r['coordinator_cores']:>11.2f} "
            f"{r['harness_cores']:>13.2f} {r['failed']:>6}  "
            + " ".join(f"{t:.0f}" for t in r["tps_each_round"])
        )
    lines.append("")
    lines += [f"{name:<10} {description}" for name, description in report["configs"].items()]
    lines.append("")
    check = report["check"]
    for c in report["scenarios"]:
        base, var = c["baseline"], c["variant"]
        verdict = ""
        if c["name"] == "slow-disk" and check["ratio_bound"] is not None:
            verdict = f" (bound {check['ratio_bound']:g}: {'ok' if check['passed'] else 'BELOW'})"
        lines += [
            f"{c['name']}: {var['config']}/{base['config']} throughput ratio {c['tps_ratio']:.3f}{verdict}; "
            f"p50 {base['p50_ms']:.1f} -> {var['p50_ms']:.1f} ms, "
            f"fsync/tx {base['fsyncs_per_commit']:.3f} -> {var['fsyncs_per_commit']:.3f}, "
            f"forced/tx {base['decision_writes_per_commit']:.3f} -> {var['decision_writes_per_commit']:.3f}",
            f"   ratio each round {' '.join(f'{r:.2f}' for r in c['tps_ratio_each_round'])}; {c['shows']}",
        ]
    return "\n".join(lines)


def _main(args: argparse.Namespace) -> int:
    if args.check_ratio is not None and "slow-disk" not in args.scenarios:
        print("xatm bench: --check-ratio needs the slow-disk scenario", file=sys.stderr)
        return 2
    keep = args.data_dir is not None
    root = Path(args.data_dir) if keep else Path(tempfile.mkdtemp(prefix="xatm-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    if keep and any(root.iterdir()):
        print(f"xatm bench: --data-dir {root} is not empty", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(_benchmark(root, args, lambda line: print(line, file=sys.stderr, flush=True)))
    except (RuntimeError, TimeoutError, OSError, grpc.RpcError) as err:
        print(f"xatm bench: {err}\nlogs are in {root}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2) if args.output == "json" else render_table(report))
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if report["check"]["passed"] is False else 0


def _bounded(kind: Callable[[str], float], low: float, high: float) -> Callable[[str], Any]:
    """An argparse type: a number of ``kind`` within [low, high], else a usage error."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be between {low:g} and {high:g}, got {text}")
        return value

    return parse


def add_parser(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="measure coordinator throughput and latency, each scenario beside its baseline",
        description=(
            "Start a coordinator and in-memory participants, drive Begin/Enlist/Commit from concurrent "
            "initiators, and compare each scenario with its baseline measured in the same run."
        ),
    )
    p.add_argument(
        "--concurrency",
        metavar="N",
        type=_bounded(int, 1, 1024),
        default=32,
        help="concurrent initiators (32)",
    )
    p.add_argument(
        "--seconds",
        metavar="S",
        type=_bounded(float, 0.1, 600),
        default=5.0,
        help="measured seconds per run (5)",
    )
    p.add_argument(
        "--warmup",
        metavar="S",
        type=_bounded(float, 0, 60),
        default=1.0,
        help="unmeasured seconds before (1)",
    )
    p.add_argument(
        "--rounds", metavar="N", type=_bounded(int, 1, 20), default=3, help="runs of each configuration (3)"
    )
    p.add_argument(
        "--branches",
        metavar="N",
        type=_bounded(int, 2, 16),
        default=2,
        help="branches of a two-phase transaction (2)",
    )
    p.add_argument(
        "--scenarios",
        nargs="+",
        choices=list(SCENARIOS),
        default=list(SCENARIOS),
        metavar="SCENARIO",
        help=f"comparisons to run: {', '.join(SCENARIOS)} (all)",
    )
    p.add_argument("--output", choices=("table", "json"), default="table", help="report format (table)")
    p.add_argument(
        "--data-dir",
        metavar="DIR",
        default=None,
        help="keep logs and WALs here; must be empty (default: a temporary dir)",
    )
    p.add_argument(
        "--check-ratio",
        type=_bounded(float, 0, 10),
        default=None,
        metavar="BOUND",
        help="exit 1 if the slow-disk throughput ratio is below BOUND, e.g. 0.8",
    )
    p.set_defaults(func=_main)
