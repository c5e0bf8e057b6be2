"""``xatm bench --etcd --quick``: one and three coordinator replicas on etcd beside the embedded WAL.

The bench starts its own three-member etcd cluster on loopback (the ``etcd`` binary); a missing
etcd fails, never skips. Only shape and correctness are asserted: every configuration commits
without failures and writes durably, each transaction on one replica.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.bench_support import bench


def test_replicas_on_etcd_beside_the_wal(tmp_path: Path) -> None:
    code, out = bench("--quick", "--only", "etcd", "--output", "json", "--data-dir", str(tmp_path))
    assert code == 0, out
    etcd = json.loads(out)["etcd"]
    configs = etcd["configs"]
    assert {name: (c["store"], c["replicas"]) for name, c in configs.items()} == {
        "wal": ("file", 1),
        "etcd-1": ("etcd", 1),
        "etcd-3": ("etcd", 3),
    }
    for c in configs.values():
        assert c["failed"] == 0 and c["tps"] > 0 and c["p99_ms"] > 0, c
        assert c["durable_writes_per_commit"] > 0, c
    assert configs["wal"]["tps_ratio_to_wal"] == 1.0
    runs = {r["config"]: r for r in etcd["runs"]}
    # Each transaction's one Commit, its gtrid made with that replica's node id, went to that replica.
    assert set(runs["etcd-3"]["served_per_commit"]) == {"Commit"}
    assert runs["etcd-3"]["served_per_commit"]["Commit"] > 0.8
    assert runs["etcd-3"]["replicas"] == 3 and runs["etcd-3"]["store"] == "etcd"
