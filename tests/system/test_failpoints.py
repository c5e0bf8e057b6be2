"""The crash action of XATM_FAILPOINTS (docs/contract.md) ends a child process at once.

The parser and the other actions are checked in process in tests/unit/test_failpoints.py.
"""

from __future__ import annotations

import os
import subprocess
import sys


def test_crash_exits_at_once_with_no_cleanup(tmp_path) -> None:  # type: ignore[no-untyped-def]
    marker = tmp_path / "cleanup-ran"
    code = (
        "import atexit, pathlib; from xatm.participant import failpoints\n"
        f"atexit.register(lambda: pathlib.Path({str(marker)!r}).write_text('x'))\n"
        "failpoints.hit('participant.prepare')\n"
    )
    env = {**os.environ, "XATM_FAILPOINTS": "participant.prepare=crash"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30)
    assert done.returncode == 137
    assert "failpoint participant.prepare: crash" in done.stderr
    assert not marker.exists()
