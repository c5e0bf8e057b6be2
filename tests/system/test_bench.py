"""``xatm bench --quick --output json``: a real run carries every field, with sane values.

Speed itself is never asserted here (the report sets each figure beside its baseline measured in
the same run); only what must hold at any speed: every run commits without failures, the
counters add up to the protocol's messages and log records (the lean protocol by default, the
eager one in the same round), group commit batches decisions, one-phase commits write no
decision, and the report has its documented shape.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.bench_support import bench
from xatm.coordinator.tools.bench import runs
from xatm.coordinator.tools.bench.cli import QUICK
from xatm.coordinator.tools.bench.report import render_table

RUN_FIELDS = {
    "config", "round", "concurrency", "branches", "store", "replicas", "seconds", "committed", "failed",
    "tps", "p50_ms", "p99_ms", "max_ms", "durable_writes_per_commit", "decision_writes_per_commit",
    "log_records_per_commit", "log_records_by_type", "served_per_commit", "sent_per_commit",
    "rpcs_per_commit", "coordinator_cpu_ms_per_commit", "coordinator_cores", "harness_cores", "first_error",
}  # fmt: skip
SUMMARY_FIELDS = {
    "branches", "tps", "tps_each_round", "p50_ms", "p99_ms", "max_ms", "durable_writes_per_commit",
    "decision_writes_per_commit", "log_records_per_commit", "log_records_by_type", "served_per_commit",
    "sent_per_commit", "rpcs_per_commit", "coordinator_cpu_ms_per_commit", "coordinator_cores",
    "harness_cores", "failed",
}  # fmt: skip
HEADLINE_FIELDS = {
    "tps", "baseline_rps", "tx_per_echo", "tx_per_echo_each_round", "coordinator_cpu_ms_per_tx",
    "echo_cpu_ms_per_call",
    "cpu_per_tx_per_echo_call", "p50_ms", "p99_ms", "max_ms", "echo_p50_ms", "echo_p99_ms", "echo_max_ms",
    "rpcs_per_tx", "served_per_tx", "sent_per_tx", "log_records_per_tx", "log_records_by_type",
    "fsyncs_per_tx", "decision_writes_per_tx",
}  # fmt: skip
SCALING_FIELDS = {
    "concurrency", "branches", "tps", "p50_ms", "p99_ms", "max_ms", "coordinator_cpu_ms_per_tx",
    "rpcs_per_tx", "log_records_per_tx", "baseline_rps", "tx_per_echo", "failed",
}  # fmt: skip


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    data_dir = tmp_path_factory.mktemp("bench")
    code, out = bench("--quick", "--output", "json", "--data-dir", str(data_dir))
    assert code == 0, out
    return json.loads(out)


def _positive(*values: Any) -> None:
    for value in values:
        assert isinstance(value, int | float) and value > 0, values


def test_report_has_every_section(report: dict[str, Any]) -> None:
    assert set(report) == {
        "machine", "settings", "headline", "echo", "configs", "scenarios", "scaling", "memory", "replay",
        "postgresql", "etcd", "runs", "echo_runs", "check",
    }  # fmt: skip
    assert set(report["machine"]) == {
        "nproc",
        "cpu_model",
        "python",
        "platform",
        "loadavg_start",
        "loadavg_end",
    }
    assert report["settings"]["sections"] == ["core", "scaling", "memory", "replay"]
    assert report["settings"]["seconds"] == QUICK["seconds"] and report["settings"]["rounds"] == 1
    # Not asked for: present and null, so a consumer can tell "not run" from "missing".
    assert report["postgresql"] is None and report["etcd"] is None
    assert report["check"] == {"ratio_bound": None, "passed": None}


def test_every_run_commits_without_failures(report: dict[str, Any]) -> None:
    assert report["runs"], "no coordinator runs"
    for run in report["runs"]:
        assert set(run) == RUN_FIELDS
        assert run["failed"] == 0, run
        _positive(run["committed"], run["tps"], run["p50_ms"], run["coordinator_cpu_ms_per_commit"])
        assert run["p50_ms"] <= run["p99_ms"] <= run["max_ms"], run
        assert (run["store"], run["replicas"]) == ("file", 1)
    for echo in report["echo_runs"]:
        assert echo["failed"] == 0 and echo["calls"] > 0, echo
        _positive(echo["baseline_rps"], echo["echo_cpu_ms_per_call"])


def test_headline_sets_the_coordinator_beside_the_echo_ceiling(report: dict[str, Any]) -> None:
    h = report["headline"]
    assert set(h) == HEADLINE_FIELDS
    _positive(h["tps"], h["baseline_rps"], h["coordinator_cpu_ms_per_tx"], h["echo_cpu_ms_per_call"])
    # One round: the same-round ratio is the ratio of the two runs.
    assert h["tx_per_echo_each_round"] == [h["tx_per_echo"]]
    assert h["tx_per_echo"] == pytest.approx(h["tps"] / h["baseline_rps"], abs=0.001)
    assert h["cpu_per_tx_per_echo_call"] == pytest.approx(
        h["coordinator_cpu_ms_per_tx"] / h["echo_cpu_ms_per_call"], rel=0.01
    )
    assert (
        h["p50_ms"] <= h["p99_ms"] <= h["max_ms"] and h["echo_p50_ms"] <= h["echo_p99_ms"] <= h["echo_max_ms"]
    )


def test_messages_and_records_per_transaction_add_up(report: dict[str, Any]) -> None:
    """The lean protocol: the Commit is the only call served per transaction (the one Begin that
    told the node id came before the window); every branch receives a prepare-phase and a
    commit-phase message (maybe batched, so at most one each); one decision is forced; a
    two-branch transaction leaves five records (its snapshot, the decision carrying the prepare
    votes, two commit answers, its end)."""
    h = report["headline"]
    served, sent = h["served_per_tx"], h["sent_per_tx"]
    assert set(served) == {"Commit"} and served["Commit"] == pytest.approx(1, abs=0.15), served
    assert h["log_records_per_tx"] == pytest.approx(5, abs=0.5), h["log_records_by_type"]
    assert 0 < sum(sent.values()) <= 2 * 2 + 0.3, sent
    assert h["rpcs_per_tx"] == pytest.approx(sum(served.values()) + sum(sent.values()), abs=0.01)
    assert h["decision_writes_per_tx"] == pytest.approx(1, abs=0.15)
    assert h["log_records_per_tx"] == pytest.approx(sum(h["log_records_by_type"].values()), abs=0.05)
    assert h["log_records_by_type"]["decision"] == pytest.approx(1, abs=0.15)
    assert 0 < h["fsyncs_per_tx"] <= 1.2


def test_eager_configuration_pays_begin_and_an_enlist_per_branch(report: dict[str, Any]) -> None:
    """The same round, the older protocol: Begin, one Enlist per branch and Commit served."""
    lean, eager = report["configs"]["normal"], report["configs"]["eager"]
    assert eager["branches"] == lean["branches"] == 2
    served = eager["served_per_commit"]
    assert set(served) == {"Begin", "Enlist", "Commit"}, served
    # Per commit over a short window: the transactions in flight at its ends (begun inside, not yet
    # committed) move these by up to concurrency ÷ commits.
    assert served["Begin"] == pytest.approx(1, abs=0.3) and served["Enlist"] == pytest.approx(2, abs=0.6)
    # Begin and an Enlist per branch more (what batching sends depends on the timing, so only served).
    assert sum(served.values()) - sum(lean["served_per_commit"].values()) == pytest.approx(3, abs=0.9)
    assert eager["decision_writes_per_commit"] == pytest.approx(1, abs=0.15)
    eager_scenario = next(s for s in report["scenarios"] if s["name"] == "eager")
    assert (eager_scenario["baseline"]["config"], eager_scenario["variant"]["config"]) == ("normal", "eager")


def test_slow_disk_decisions_share_fsyncs_and_one_phase_writes_no_decision(report: dict[str, Any]) -> None:
    configs = report["configs"]
    assert set(configs) == {"normal", "eager", "slow-disk", "one-phase"}
    for summary in configs.values():
        assert set(summary) == SUMMARY_FIELDS
    assert 0 < configs["slow-disk"]["durable_writes_per_commit"] < 1, configs["slow-disk"]
    one = configs["one-phase"]
    assert (
        one["branches"] == 1
        and one["decision_writes_per_commit"] == 0
        and one["durable_writes_per_commit"] == 0
    )
    assert [s["name"] for s in report["scenarios"]] == ["eager", "slow-disk", "one-phase"]
    for scenario in report["scenarios"]:
        assert scenario["tps_ratio"] == pytest.approx(
            scenario["variant"]["tps"] / scenario["baseline"]["tps"], abs=0.001
        )


def test_scaling_table_covers_the_quick_grid(report: dict[str, Any]) -> None:
    cells = {(c["concurrency"], c["branches"]): c for c in report["scaling"]}
    assert list(cells) == [tuple(cell) for cell in QUICK["scaling"]]
    for cell in cells.values():
        assert set(cell) == SCALING_FIELDS and cell["failed"] == 0, cell
        _positive(cell["tps"], cell["baseline_rps"], cell["tx_per_echo"])
    # More branches, more messages: each branch adds its prepare and commit messages.
    assert cells[(32, 4)]["rpcs_per_tx"] > cells[(32, 2)]["rpcs_per_tx"]


def test_footprint_figures(report: dict[str, Any]) -> None:
    memory = report["memory"]
    assert memory["open_transactions"] == QUICK["open_transactions"] and memory["branches"] == 2
    assert memory["rss_after_kib"] > memory["rss_before_kib"], memory
    _positive(memory["kib_per_open_transaction"])
    replay = report["replay"]
    assert replay["records"] >= QUICK["replay_records"], replay
    assert replay["transactions"] * replay["records_per_transaction"] <= replay["records"]
    _positive(replay["replay_s"], replay["records_per_s"], replay["peak_rss_mib"])
    _positive(replay["replay_cpu_s"], replay["records_per_cpu_s"])
    history = replay["history"]
    assert history["transactions_kept"] == replay["transactions"] and history["failed"] == 0, history
    _positive(history["tps"], history["max_ms"])


def test_table_shows_each_figure_beside_its_baseline(report: dict[str, Any]) -> None:
    table = render_table(report)
    assert f"on {report['machine']['nproc']} CPUs" in table
    assert f"tx_per_echo {report['headline']['tx_per_echo']:.3f}" in table
    assert "slow-disk: slow-disk/normal throughput ratio" in table
    assert "eager: eager/normal throughput ratio" in table
    assert "Scaling" in table and "KiB per open transaction" in table and "records/s" in table
    assert "PostgreSQL" not in table and "etcd" not in table


def test_a_dying_coordinator_fails_the_run(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(runs, "SLOW_DISK", "coordinator.before_decision=crash")
    code, _ = bench(
        "--only", "core", "--scenarios", "slow-disk", "--rounds", "1", "--seconds", "0.5", "--warmup", "0.2",
        "--concurrency", "2", "--data-dir", str(tmp_path),
    )  # fmt: skip
    assert code == 1
    err = capsys.readouterr().err
    assert "the coordinator died during the slow-disk run" in err
    assert "failpoint coordinator.before_decision: crash" in err
    assert f"logs are in {tmp_path}" in err
