"""What the benchmark reads off processes: CPU time, memory, Prometheus samples, percentiles.

Everything comes from outside the measured process (``/proc`` and its ``/metrics``), so
measuring costs the coordinator nothing beyond serving one scrape at each end of a window.
"""

from __future__ import annotations

import math
import os
import platform
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

__all__ = [
    "Samples",
    "cpu_seconds",
    "delta",
    "machine",
    "memory_kib",
    "per",
    "percentile",
    "scrape",
]

#: Prometheus samples by (name, sorted label pairs).
Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def percentile(sorted_values: list[float], q: float) -> float:
    """Nearest rank of an ascending list, no interpolation: p99 is a latency that really occurred.

    0 for an empty list.
    """
    if not sorted_values:
        return 0.0
    rank = min(max(1, math.ceil(q * len(sorted_values))), len(sorted_values))
    return sorted_values[rank - 1]


def cpu_seconds(pid: int) -> float:
    """User plus system CPU seconds of a process so far (``/proc/PID/stat`` utime + stime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int, field: str = "VmRSS") -> int:
    """A memory line of ``/proc/PID/status`` in KiB: ``VmRSS`` (resident now) or ``VmHWM`` (peak).

    Raises ``OSError`` when the process is gone, ``LookupError`` for a field the kernel lacks.
    """
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(f"no {field} in /proc/{pid}/status")


def scrape(http: str) -> Samples:
    """Every sample of the Prometheus endpoint at ``http`` (host:port), ``/metrics``."""
    with urllib.request.urlopen(f"http://{http}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def delta(before: Samples, after: Samples, name: str, by: str | None = None) -> dict[str, float]:
    """How much the samples called ``name`` grew, summed per value of label ``by`` (all under "")."""
    grown: dict[str, float] = {}
    for key, value in after.items():
        if key[0] != name:
            continue
        label = dict(key[1]).get(by, "") if by else ""
        grown[label] = grown.get(label, 0.0) + value - before.get(key, 0.0)
    return {k: v for k, v in grown.items() if v}


def per(counts: Mapping[str, float], n: float, digits: int = 3) -> dict[str, float]:
    """Each count divided by ``n`` (0 when ``n`` is 0), rounded, keys sorted."""
    return {k: round(v / n, digits) if n else 0.0 for k, v in sorted(counts.items())}


def machine() -> dict[str, Any]:
    """CPUs this process may use, CPU model, Python, platform and the 1-minute load average now."""
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
