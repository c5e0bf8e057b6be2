"""The embedded write-ahead log keeps every acknowledged record when its process is killed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.wal_support import reopen

CRASH_CHILD = """
import asyncio, sys
from pathlib import Path
from xatm.coordinator.txlog.file import FileWal
from xatm.participant import failpoints
from xatm.coordinator.txlog._proto import wal_pb2

async def main():
    wal = FileWal(Path(sys.argv[1]), failpoint=failpoints.hit)
    await wal.open()
    for i in range(20):
        await wal.append(wal_pb2.WalRecord(gtrid=f"acked.{i}"), force=True)
        print(i, flush=True)
    failpoints.arm("wal.before_fsync=crash")
    await wal.append(wal_pb2.WalRecord(gtrid="never-acked"), force=True)
    print("unreachable", flush=True)

asyncio.run(main())
"""


def test_acknowledged_records_survive_a_crash(tmp_path: Path) -> None:
    child = subprocess.run(
        [sys.executable, "-c", CRASH_CHILD, str(tmp_path)], capture_output=True, text=True, timeout=120
    )
    assert child.returncode == 137, child.stderr
    acked = child.stdout.split()
    assert acked == [str(i) for i in range(20)]
    gtrids = [r.gtrid for r in reopen(tmp_path)[0]]
    assert gtrids[:20] == [f"acked.{i}" for i in range(20)]
