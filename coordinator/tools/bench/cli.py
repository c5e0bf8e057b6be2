"""``xatm bench``: the command line, its presets (full and ``--quick``) and exit codes."""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import sys
from collections.abc import Callable
from typing import Any

import grpc

from xatm.coordinator.tools.bench.report import render_table
from xatm.coordinator.tools.bench.runs import SCENARIOS
from xatm.coordinator.tools.bench.suite import SECTIONS, Plan, benchmark
from xatm.coordinator.tools.procs import work_dir

__all__ = ["FULL", "QUICK", "add_parser"]

#: Defaults of the timing options: a full run (a few minutes) and ``--quick`` (under a minute).
FULL: dict[str, Any] = {
    "seconds": 5.0,
    "warmup": 1.0,
    "rounds": 3,
    # Every concurrency with every branch count.
    "scaling": tuple((c, b) for c in (1, 8, 32, 128) for b in (2, 4, 8)),
    "open_transactions": 10_000,
    "replay_records": 1_000_000,
}
QUICK: dict[str, Any] = {
    "seconds": 1.0,
    "warmup": 0.3,
    "rounds": 1,
    # Concurrency 1 and 32 at two branches; four branches at 32.
    "scaling": ((1, 2), (32, 2), (32, 4)),
    "open_transactions": 2_000,
    "replay_records": 100_000,
}


def _plan(args: argparse.Namespace) -> Plan:
    preset = QUICK if args.quick else FULL
    sections = args.only or [s for s in SECTIONS if s not in ("postgresql", "etcd")]
    sections += [s for s, wanted in (("postgresql", args.postgresql), ("etcd", args.etcd)) if wanted]

    def pick(name: str) -> Any:
        value = getattr(args, name)
        return preset[name] if value is None else value

    return Plan(
        sections=tuple(dict.fromkeys(sections)),
        scenarios=tuple(dict.fromkeys(args.scenarios)),
        concurrency=args.concurrency,
        branches=args.branches,
        seconds=pick("seconds"),
        warmup=pick("warmup"),
        rounds=pick("rounds"),
        scaling=preset["scaling"],
        open_transactions=pick("open_transactions"),
        replay_records=pick("replay_records"),
    )


def _main(args: argparse.Namespace) -> int:
    plan = _plan(args)
    if args.check_ratio is not None and ("slow-disk" not in plan.scenarios or "core" not in plan.sections):
        print("xatm bench: --check-ratio needs the slow-disk scenario", file=sys.stderr)
        return 2
    keep = args.data_dir is not None
    try:
        root = work_dir(args.data_dir, "xatm-bench-")
    except ValueError as err:
        print(f"xatm bench: {err}", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(benchmark(root, plan, lambda line: print(line, file=sys.stderr, flush=True)))
    except (RuntimeError, TimeoutError, OSError, grpc.RpcError) as err:
        print(f"xatm bench: {err}\nlogs are in {root}", file=sys.stderr)
        return 1
    passed = None
    if args.check_ratio is not None:
        passed = (
            next(c["tps_ratio"] for c in report["scenarios"] if c["name"] == "slow-disk") >= args.check_ratio
        )
    report["check"] = {"ratio_bound": args.check_ratio, "passed": passed}
    print(json.dumps(report, indent=2) if args.output == "json" else render_table(report))
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return 1 if passed is False else 0


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


#: Numeric options: flag, metavar, type, lowest, highest, default (None: the preset's), help.
_NUMBERS: tuple[tuple[str, str, Callable[[str], float], float, float, float | None, str], ...] = (
    ("--concurrency", "N", int, 1, 1024, 32, "concurrent initiators of the headline runs (32)"),
    ("--branches", "N", int, 2, 16, 2, "branches of a two-phase transaction in the headline runs (2)"),
    ("--seconds", "S", float, 0.1, 600, None, "measured seconds per run (5; --quick 1)"),
    ("--warmup", "S", float, 0, 60, None, "unmeasured seconds before each window (1; --quick 0.3)"),
    ("--rounds", "N", int, 1, 20, None, "runs of each headline configuration (3; --quick 1)"),
    ("--open-transactions", "N", int, 100, 1_000_000, None,
     "open transactions of the memory measurement (10000; --quick 2000)"),
    ("--replay-records", "N", int, 1_000, 100_000_000, None,
     "log records of the replay measurement (1000000; --quick 100000)"),
)  # fmt: skip


def add_parser(sub: Any) -> None:
    """Register ``bench`` on an argparse sub-parsers object (the ``xatm`` command's)."""
    p = sub.add_parser(
        "bench",
        help="measure the coordinator beside its baselines: gRPC ceiling, scenarios, scaling, footprint",
        description=(
            "Start a coordinator, in-memory participants and an echo gRPC server; drive them from "
            "concurrent initiators; report every figure beside its baseline measured in the same run. "
            "Progress goes to stderr, the report to stdout."
        ),
    )
    p.add_argument("--quick", action="store_true", help="short runs and a reduced scaling table (under 60 s)")
    for flag, metavar, kind, low, high, default, what in _NUMBERS:
        p.add_argument(flag, metavar=metavar, type=_bounded(kind, low, high), default=default, help=what)
    p.add_argument(
        "--scenarios",
        nargs="+",
        choices=list(SCENARIOS),
        default=list(SCENARIOS),
        metavar="SCENARIO",
        help=f"comparisons with the normal run: {', '.join(SCENARIOS)}",
    )
    p.add_argument(
        "--postgresql",
        action="store_true",
        help="also: the bank transfer through xatm beside direct 2PC on PostgreSQL",
    )
    p.add_argument(
        "--etcd", action="store_true", help="also: one and three coordinator replicas on etcd beside the WAL"
    )
    p.add_argument(
        "--only",
        nargs="+",
        choices=SECTIONS,
        default=None,
        metavar="SECTION",
        help=f"run only these sections: {', '.join(SECTIONS)}",
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
