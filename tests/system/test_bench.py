"""``xatm bench``: a short real run proves the harness works and reports sane numbers.

Speed itself is never asserted here (the benchmark's own report compares it with a baseline);
only what must hold at any speed: transactions commit, group commit batches decisions under a
slow disk, one-phase commits write no decision, and the report has its documented shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.bench_support import bench
from xatm.coordinator.tools import bench as bench_module
from xatm.coordinator.tools.bench import render_table

RUN_FIELDS = {
    "config",
    "round",
    "branches",
    "seconds",
    "committed",
    "failed",
    "tps",
    "p50_ms",
    "p99_ms",
    "fsyncs_per_commit",
    "decision_writes_per_commit",
    "coordinator_cpu_ms_per_commit",
    "coordinator_cores",
    "harness_cores",
    "first_error",
}
SUMMARY_FIELDS = {
    "config",
    "branches",
    "tps",
    "tps_each_round",
    "p50_ms",
    "p99_ms",
    "fsyncs_per_commit",
    "decision_writes_per_commit",
    "coordinator_cpu_ms_per_commit",
    "coordinator_cores",
    "harness_cores",
    "failed",
}


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data_dir = tmp_path_factory.mktemp("bench")
    code, out = bench(
        "--concurrency", "8", "--seconds", "1", "--warmup", "0.5", "--rounds", "1",
        "--output", "json", "--data-dir", str(data_dir),
    )  # fmt: skip
    assert code == 0, out
    return json.loads(out)


def test_every_run_commits_without_failures(report: dict[str, Any]) -> None:
    runs = {run["config"]: run for run in report["runs"]}
    assert set(runs) == {"normal", "slow-disk", "one-phase"}
    for run in runs.values():
        assert set(run) == RUN_FIELDS
        assert run["committed"] > 0 and run["tps"] > 0, run
        assert run["failed"] == 0, run
        assert 0 < run["p50_ms"] <= run["p99_ms"], run
        assert run["coordinator_cpu_ms_per_commit"] > 0, run
    assert runs["one-phase"]["branches"] == 1 and runs["normal"]["branches"] == 2


def test_slow_disk_decisions_share_fsyncs(report: dict[str, Any]) -> None:
    slow = next(run for run in report["runs"] if run["config"] == "slow-disk")
    assert 0 < slow["fsyncs_per_commit"] < 1, slow
    # One forced decision per two-phase commit (give or take those in flight at the window's ends).
    assert slow["decision_writes_per_commit"] == pytest.approx(1, abs=0.25)


def test_one_phase_writes_no_decision(report: dict[str, Any]) -> None:
    one = next(run for run in report["runs"] if run["config"] == "one-phase")
    assert one["decision_writes_per_commit"] == 0 and one["fsyncs_per_commit"] == 0, one


def test_report_has_documented_shape(report: dict[str, Any]) -> None:
    assert set(report) == {"machine", "settings", "configs", "runs", "scenarios", "check"}
    assert set(report["machine"]) == {
        "nproc",
        "cpu_model",
        "python",
        "platform",
        "loadavg_start",
        "loadavg_end",
    }
    assert report["machine"]["nproc"] >= 1
    assert report["settings"]["concurrency"] == 8 and report["settings"]["rounds"] == 1
    assert [s["name"] for s in report["scenarios"]] == ["slow-disk", "one-phase"]
    for scenario in report["scenarios"]:
        assert set(scenario) == {"name", "shows", "baseline", "variant", "tps_ratio", "tps_ratio_each_round"}
        assert set(scenario["baseline"]) == set(scenario["variant"]) == SUMMARY_FIELDS
        assert scenario["baseline"]["config"] == "normal"
        assert len(scenario["tps_ratio_each_round"]) == 1
        assert scenario["tps_ratio"] == pytest.approx(
            scenario["variant"]["tps"] / scenario["baseline"]["tps"], abs=0.001
        )
    assert report["check"] == {"ratio_bound": None, "passed": None}


def test_table_shows_each_config_and_ratio(report: dict[str, Any]) -> None:
    table = render_table(report)
    assert f"on {report['machine']['nproc']} CPUs" in table
    for name in ("normal", "slow-disk", "one-phase"):
        assert any(line.startswith(name) for line in table.splitlines())
    assert "slow-disk: slow-disk/normal throughput ratio" in table


def test_a_dying_coordinator_fails_the_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench_module, "SLOW_DISK", "coordinator.before_decision=crash")
    code, _ = bench(
        "--scenarios", "slow-disk", "--rounds", "1", "--seconds", "0.5", "--warmup", "0.2",
        "--concurrency", "2", "--data-dir", str(tmp_path),
    )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "the coordinator died during the slow-disk run" in err
    assert "failpoint coordinator.before_decision: crash" in err
    assert f"logs are in {tmp_path}" in err
