"""The report as a person reads it, built from the JSON document so the two never disagree.

Every figure stands beside its baseline: the coordinator beside the echo ceiling, each
scenario beside the normal run, the history run beside the plain one, xatm beside direct
PostgreSQL two-phase commit, etcd replicas beside the embedded WAL.
"""

from __future__ import annotations

from typing import Any

from xatm.coordinator.tools.bench.runs import CONFIGS

__all__ = ["render_table"]


def _counts(counts: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in counts.items()) or "none"


def _header(report: dict[str, Any]) -> list[str]:
    m, s = report["machine"], report["settings"]
    return [
        f"xatm bench on {m['nproc']} CPUs ({m['cpu_model']}), Python {m['python']}, {m['platform']}",
        f"load average {m['loadavg_start']} before, {m['loadavg_end']} after "
        "(load before the start is other work sharing the machine)",
        f"concurrency {s['concurrency']}, {s['branches']} branches, {s['seconds']:g} s measured per run "
        f"after {s['warmup']:g} s warm-up, {s['rounds']} round(s) rotated; medians over rounds",
    ]


def _headline(report: dict[str, Any]) -> list[str]:
    h = report["headline"]
    rows = [
        (
            "throughput /s",
            f"{h['tps']:.1f} tx",
            f"{h['baseline_rps']:.1f} echo calls",
            f"tx_per_echo {h['tx_per_echo']:.3f}",
        ),
        ("", "", "", "each round " + " ".join(f"{r:.3f}" for r in h["tx_per_echo_each_round"])),
        (
            "CPU ms",
            f"{h['coordinator_cpu_ms_per_tx']:.3f} per tx",
            f"{h['echo_cpu_ms_per_call']:.3f} per call",
            f"x{h['cpu_per_tx_per_echo_call']:.1f}",
        ),
        ("p50 ms", f"{h['p50_ms']:.1f} (tx)", f"{h['echo_p50_ms']:.2f}", ""),
        ("p99 ms", f"{h['p99_ms']:.1f}", f"{h['echo_p99_ms']:.2f}", ""),
        ("max ms", f"{h['max_ms']:.1f}", f"{h['echo_max_ms']:.2f}", ""),
    ]
    lines = ["", "Beside the gRPC ceiling (echo server, same layout and concurrency):",
             f"  {'figure':<14} {'xatm':<18} {'echo':<20} ratio"]  # fmt: skip
    lines += [f"  {a:<14} {b:<18} {c:<20} {d}" for a, b, c, d in rows]
    lines += [
        f"  RPCs per tx {h['rpcs_per_tx']:g}: served {_counts(h['served_per_tx'])}; "
        f"sent {_counts(h['sent_per_tx'])} (echo: 1)",
        f"  log records per tx {h['log_records_per_tx']:g} ({_counts(h['log_records_by_type'])}); "
        f"fsyncs per tx {h['fsyncs_per_tx']:g}, forced decisions per tx {h['decision_writes_per_tx']:g}",
    ]
    return lines


def _configs(report: dict[str, Any]) -> list[str]:
    lines = [
        "",
        f"{'config':<10} {'branches':>8} {'tx/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
        f"{'fsync/tx':>8} {'forced/tx':>9} {'CPU ms/tx':>9} {'coord cores':>11} {'harness cores':>13} "
        f"{'failed':>6}  tx/s each round",
    ]
    for name, r in report["configs"].items():
        lines.append(
            f"{name:<10} {r['branches']:>8} {r['tps']:>7.1f} {r['p50_ms']:>7.1f} {r['p99_ms']:>7.1f} "
            f"{r['max_ms']:>7.1f} {r['durable_writes_per_commit']:>8.3f} "
            f"{r['decision_writes_per_commit']:>9.3f} "
            f"{r['coordinator_cpu_ms_per_commit']:>9.2f} {r['coordinator_cores']:>11.2f} "
            f"{r['harness_cores']:>13.2f} {r['failed']:>6}  "
            + " ".join(f"{t:.0f}" for t in r["tps_each_round"])
        )
    lines += [f"{name:<10} {CONFIGS[name].description}" for name in report["configs"]]
    check = report["check"]
    for c in report["scenarios"]:
        base, var = c["baseline"], c["variant"]
        verdict = ""
        if c["name"] == "slow-disk" and check["ratio_bound"] is not None:
            verdict = f" (bound {check['ratio_bound']:g}: {'ok' if check['passed'] else 'BELOW'})"
        lines += [
            f"{c['name']}: {var['config']}/{base['config']} throughput ratio {c['tps_ratio']:.3f}{verdict}; "
            f"p50 {base['p50_ms']:.1f} -> {var['p50_ms']:.1f} ms, "
            f"fsync/tx {base['durable_writes_per_commit']:.3f} -> {var['durable_writes_per_commit']:.3f}, "
            f"forced/tx {base['decision_writes_per_commit']:.3f} -> {var['decision_writes_per_commit']:.3f}",
            f"   ratio each round {' '.join(f'{r:.2f}' for r in c['tps_ratio_each_round'])}; {c['shows']}",
        ]
    return lines


def _scaling(cells: list[dict[str, Any]]) -> list[str]:
    lines = [
        "",
        "Scaling (one run per cell; echo calls/s at the same concurrency):",
        f"  {'conc':>4} {'branches':>8} {'tx/s':>7} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
        f"{'CPU ms/tx':>9} {'RPC/tx':>6} {'rec/tx':>6} {'echo/s':>7} {'tx/echo':>7}",
    ]
    for c in cells:
        lines.append(
            f"  {c['concurrency']:>4} {c['branches']:>8} {c['tps']:>7.1f} {c['p50_ms']:>7.1f} "
            f"{c['p99_ms']:>7.1f} {c['max_ms']:>7.1f} {c['coordinator_cpu_ms_per_tx']:>9.2f} "
            f"{c['rpcs_per_tx']:>6.1f} "
            f"{c['log_records_per_tx']:>6.1f} {c['baseline_rps']:>7.0f} {c['tx_per_echo']:>7.3f}"
        )
    return lines


def _footprint(report: dict[str, Any]) -> list[str]:
    lines = [""]
    if memory := report["memory"]:
        lines.append(
            f"Memory: {memory['kib_per_open_transaction']:.2f} KiB per open transaction "
            f"({memory['open_transactions']} open with {memory['branches']} branches each; "
            f"RSS {memory['rss_before_kib']} -> {memory['rss_after_kib']} KiB)"
        )
    if replay := report["replay"]:
        history = replay["history"]
        plain = report["headline"]["max_ms"] if report["headline"] else None
        beside = f" (without history: {plain:.1f} ms)" if plain is not None else ""
        lines += [
            f"Replay: {replay['records']} records ({replay['transactions']} transactions of "
            f"{replay['records_per_transaction']}) in {replay['replay_s']:.2f} s = {replay['records_per_s']} "
            f"records/s ({replay['records_per_cpu_s']} per CPU second), "
            f"peak RSS {replay['peak_rss_mib']} MiB "
            f"(start-up {replay['start_replay_s']:.2f} s "
            f"vs {replay['start_empty_s']:.2f} s on an empty log)",
            f"With those {history['transactions_kept']} completed transactions kept, checkpoint every "
            f"{history['checkpoint_interval_s']:g} s: {history['tps']:.1f} tx/s, "
            f"p99 {history['p99_ms']:.1f} ms, max {history['max_ms']:.1f} ms{beside}",
        ]
    return lines


def _postgresql(pg: dict[str, Any]) -> list[str]:
    x, d = pg["xatm"], pg["direct"]
    return [
        "",
        f"PostgreSQL bank transfer, two databases, concurrency {pg['concurrency']}:",
        f"  through xatm  {x['tps']:7.1f} transfers/s  p50 {x['p50_ms']:6.1f}  p99 {x['p99_ms']:6.1f}  "
        f"max {x['max_ms']:6.1f} ms  failed {x['failed']}",
        f"  direct 2PC    {d['tps']:7.1f} transfers/s  p50 {d['p50_ms']:6.1f}  p99 {d['p99_ms']:6.1f}  "
        f"max {d['max_ms']:6.1f} ms  failed {d['failed']}",
        f"  xatm/direct {pg['ratio']:.3f} "
        f"(each round {' '.join(f'{r:.2f}' for r in pg['ratio_each_round'])})",
        "  CPU ms per transfer: through xatm "
        + " ".join(f"{name} {ms:.2f}" for name, ms in x["cpu_ms_per_transfer"].items())
        + f"; direct: client {d['cpu_ms_per_transfer']['initiator']:.2f} "
        f"postgresql {d['cpu_ms_per_transfer']['postgresql']:.2f}",
    ]


def _etcd(etcd: dict[str, Any]) -> list[str]:
    lines = ["", f"Transaction log on etcd (three members, loopback), concurrency {etcd['concurrency']}:"]
    for name, c in etcd["configs"].items():
        lines.append(
            f"  {name:<7} {c['store']:<4} x{c['replicas']}  {c['tps']:7.1f} tx/s  p99 {c['p99_ms']:6.1f} ms  "
            f"max {c['max_ms']:6.1f} ms  {c['coordinator_cpu_ms_per_commit']:.2f} CPU ms/tx  "
            f"writes/tx {c['durable_writes_per_commit']:.2f}  x{c['tps_ratio_to_wal']:.2f} of wal  "
            f"failed {c['failed']}"
        )
    return lines


def render_table(report: dict[str, Any]) -> str:
    """``report`` (the JSON document) as text; sections not run are left out."""
    lines = _header(report)
    if report["headline"]:
        lines += _headline(report) + _configs(report)
    if report["scaling"]:
        lines += _scaling(report["scaling"])
    if report["memory"] or report["replay"]:
        lines += _footprint(report)
    if report["postgresql"]:
        lines += _postgresql(report["postgresql"])
    if report["etcd"]:
        lines += _etcd(report["etcd"])
    return "\n".join(lines)
