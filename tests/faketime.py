"""Step the wall clock of one child process, never the machine's: libfaketime through LD_PRELOAD.

The child reads its offset from a file on every clock read (``FAKETIME_NO_CACHE``), so a test
moves the child's wall clock while it runs by rewriting the file. Only ``CLOCK_REALTIME`` is
faked (``FAKETIME_DONT_FAKE_MONOTONIC``): ``time.time()`` jumps, ``time.monotonic()`` does not,
exactly what an NTP step or an operator's ``date -s`` does to a real process.

libfaketime 0.9.10 mis-handles ``clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME)`` when the
monotonic clock is not faked (wolfcw/libfaketime#426), which is how ``time.sleep`` waits from
Python 3.11 on: it fails with EINVAL. The servers under test never call it, so nothing is
patched around it; a child that does would need a newer libfaketime.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

__all__ = ["STEP", "FakeClock", "library"]

#: How far a test steps a wall clock (s): longer than every timeout and retention in play.
STEP = 45


def library() -> Path:
    """Path of libfaketime.so.1; fails the calling test (never skips it) when it is missing."""
    found = sorted(Path("/usr/lib").glob("*/faketime/libfaketime.so.1"))
    if found:
        return found[0]
    try:
        files = subprocess.run(
            ["dpkg", "-L", "libfaketime"], capture_output=True, text=True, check=False
        ).stdout.split()
    except OSError:
        files = []
    for name in files:
        if name.endswith("/libfaketime.so.1"):
            return Path(name)
    pytest.fail(
        "libfaketime is not installed (no libfaketime.so.1): the clock-step tests need it; "
        "install the Debian package libfaketime",
        pytrace=False,
    )


class FakeClock:
    """The wall-clock offset of the processes started with ``env()``, in whole seconds."""

    def __init__(self, directory: Path):
        self.path = directory / "faketime-offset"
        self.offset = 0
        self._write()

    def env(self) -> dict[str, str]:
        """Environment variables that put a child process on this clock."""
        return {
            "LD_PRELOAD": str(library()),
            "FAKETIME_TIMESTAMP_FILE": str(self.path),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        }

    def step(self, seconds: int) -> None:
        """Move the children's wall clock by ``seconds`` (negative: back) from where it is now."""
        self.offset += seconds
        self._write()

    def _write(self) -> None:
        # Written whole and renamed, so a child never reads a half-written offset.
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(f"{self.offset:+d}s\n")
        tmp.replace(self.path)
