"""Checkpoints written beside the log keep every acknowledged record across kill -9 at any
instant; start-up replay of a long log stays within a bounded amount of memory."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.wal_support import reopen
from xatm.coordinator.tools.measure_log import measure_replay

CHILD = """
import asyncio, sys
from pathlib import Path
from xatm.coordinator.txlog.file import FileWal
from xatm.coordinator.txlog._proto import wal_pb2

async def main():
    wal = FileWal(Path(sys.argv[1]), segment_bytes=4096)
    await wal.open()
    appended = []

    async def appender():
        i = 0
        while True:
            appended.append(i)
            await wal.append(wal_pb2.WalRecord(gtrid=f"acked.{i}"), force=True)
            print(i, flush=True)
            i += 1

    async def checkpointer():
        while True:
            # The state so far as the snapshot, as the engine's: every record appended before the
            # call (acknowledged or not yet).
            snapshot = [wal_pb2.WalRecord(gtrid=f"acked.{i}") for i in list(appended)] * 3
            await wal.checkpoint(snapshot)
            print("checkpoint", flush=True)

    await asyncio.gather(appender(), checkpointer())

asyncio.run(main())
"""


@pytest.mark.parametrize(("checkpoints", "acks"), [(0, 5), (1, 3), (2, 17), (3, 40), (5, 1), (8, 90)])
def test_acknowledged_records_survive_kill_9_during_checkpoints(
    tmp_path: Path, checkpoints: int, acks: int
) -> None:
    """kill -9 once ``checkpoints`` checkpoints completed and ``acks`` more records were
    acknowledged: somewhere in the next checkpoint's body, its installation, or an append."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    acked: set[str] = set()
    try:
        assert child.stdout is not None
        seen, after = 0, 0
        while seen < checkpoints or after < acks:
            line = child.stdout.readline().strip()
            assert line, child.stderr.read() if child.stderr else ""
            if line == "checkpoint":
                seen += 1
            else:
                acked.add(f"acked.{line}")
                after += seen >= checkpoints
        os.kill(child.pid, signal.SIGKILL)
        out, _ = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == -signal.SIGKILL
    acked |= {f"acked.{line}" for line in out.split() if line.isdigit()}
    survived = {r.gtrid for r in reopen(tmp_path)[0]}
    assert acked <= survived


def test_replaying_a_million_records_keeps_memory_bounded(tmp_path: Path) -> None:
    figures = measure_replay(1_000_000, workdir=tmp_path)
    assert figures.records >= 1_000_000
    assert figures.transactions == 100_000  # every completed transaction, up to max_history
    # The whole log held as records would take gigabytes; streamed, the kept history dominates.
    assert figures.peak_rss_bytes - figures.base_rss_bytes < 600 << 20
