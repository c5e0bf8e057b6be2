"""``xatm bench --postgresql --quick``: the bank transfer through xatm beside direct two-phase commit.

A real PostgreSQL cluster (started by the bench itself); a missing PostgreSQL fails, never skips.
Only shape and correctness are asserted: both ways commit transfers without failures and the
ratio is theirs.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bench_support import bench
from xatm.coordinator.tools.bench.report import render_table


def test_postgresql_transfer_beside_direct_two_phase_commit(tmp_path: Path) -> None:
    code, out = bench("--quick", "--only", "postgresql", "--output", "json", "--data-dir", str(tmp_path))
    assert code == 0, out
    report = json.loads(out)
    assert report["headline"] is None and report["etcd"] is None
    pg = report["postgresql"]
    assert set(pg) == {"concurrency", "xatm", "direct", "ratio", "ratio_each_round"}
    for way in ("xatm", "direct"):
        side = pg[way]
        assert side["failed"] == 0, side
        assert side["tps"] > 0 and 0 < side["p50_ms"] <= side["p99_ms"] <= side["max_ms"], side
        assert len(side["tps_each_round"]) == 1
    # CPU per transfer of every process taking part; the direct client is the bench process.
    through, direct = pg["xatm"]["cpu_ms_per_transfer"], pg["direct"]["cpu_ms_per_transfer"]
    assert set(through) == set(direct) == {"initiator", "coordinator", "bank-a", "bank-b", "postgresql"}
    for name in through:
        assert through[name] > 0, through
    assert direct["initiator"] > 0 and direct["postgresql"] > 0, direct
    table = render_table(report)
    assert f"through xatm initiator {through['initiator']:.2f} coordinator" in table, table
    assert pg["ratio"] == pytest.approx(pg["xatm"]["tps"] / pg["direct"]["tps"], abs=0.001)
