"""The exclusive lock that keeps two coordinators (or a coordinator and a repair) off one log."""

from __future__ import annotations

import fcntl
import os
import socket
from pathlib import Path

from xatm.coordinator.txlog.file.segment import file_vanished
from xatm.coordinator.txlog.interface import LogLocked

__all__ = ["DirLock"]


class DirLock:
    """``flock`` on ``data_dir/LOCK``; the kernel drops it when the holder dies, even on kill -9.

    The file names the holder (pid, host, node) so the refusal tells the operator whom to stop.
    """

    def __init__(self, data_dir: Path, node: str = "") -> None:
        self.path = data_dir / "LOCK"
        self._node = node
        self._fd: int | None = None

    def acquire(self) -> None:
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 512, 0).decode(errors="replace").strip() or "holder did not say who it is"
            os.close(fd)
            raise LogLocked(
                f"{self.path} is held by another process ({holder}); stop it or use another data directory"
            ) from None
        who = f"pid {os.getpid()} on {socket.gethostname()}" + (f", node {self._node}" if self._node else "")
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, who.encode() + b"\n", 0)
        except OSError:
            os.close(fd)  # e.g. a full disk: do not keep holding a lock on a log we cannot use
            raise
        self._fd = fd

    def lost(self) -> str | None:
        """Why the lock no longer guards ``path`` (the file was deleted or replaced), or None.

        A lost lock file lets a second coordinator lock a new one and write the same log.
        """
        if self._fd is None:
            return None
        return file_vanished(self._fd, self.path)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor releases the flock
            self._fd = None
