"""Segment files on disk: names, listing, durable creation and the fsync every write goes through."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from xatm.coordinator.txlog.file.metrics import WAL_FSYNC_DURATION

__all__ = [
    "HEAD_NAME",
    "TEMP_SUFFIX",
    "Hook",
    "create_segment",
    "file_vanished",
    "fsync_dir",
    "fsync_fd",
    "list_segments",
    "publish_segment",
    "read_head",
    "segment_path",
    "write_all",
    "write_head",
]

_NAME = re.compile(r"^(\d{16})\.wal$")
TEMP_SUFFIX = ".tmp"
#: Holds the number of the newest segment ever created, so that losing the newest segments is
#: noticed at start-up: the segments alone cannot tell a log that ends early from a complete one.
HEAD_NAME = "HEAD"


def segment_path(wal_dir: Path, seq: int) -> Path:
    """Zero-padded so that name order is sequence order for people listing the directory."""
    return wal_dir / f"{seq:016d}.wal"


def list_segments(wal_dir: Path) -> list[tuple[int, Path]]:
    """Every segment file in ``wal_dir`` as (sequence number, path), oldest first."""
    found = []
    for entry in os.scandir(wal_dir):
        match = _NAME.match(entry.name)
        if match and entry.is_file():
            found.append((int(match.group(1)), Path(entry.path)))
    return sorted(found)


#: Called with a failpoint's name where the log could fail or stall (tests, chaos drills).
Hook = Callable[[str], object]


def fsync_fd(fd: int, hook: Hook | None = None) -> None:
    """The one place the log waits for the disk: ``hook("wal.before_fsync")`` first (when
    given), the latency into the histogram."""
    if hook is not None:
        hook("wal.before_fsync")
    started = time.perf_counter()
    os.fsync(fd)
    WAL_FSYNC_DURATION.observe(time.perf_counter() - started)


def fsync_dir(path: Path, fsync: Callable[[int], None] = fsync_fd) -> None:
    """Make creations, renames and deletions in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fsync(fd)
    finally:
        os.close(fd)


def create_segment(wal_dir: Path, seq: int, content: bytes, fsync: Callable[[int], None] = fsync_fd) -> Path:
    """Write a whole new segment so that it exists complete or not at all.

    Temp file, fsync, rename, fsync the directory: after a crash a segment name never points
    at a half-written header, so a bad header is always damage, never a torn write.
    """
    path = segment_path(wal_dir, seq)
    temp = path.with_name(path.name + TEMP_SUFFIX)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, content, 0)
        fsync(fd)
    finally:
        os.close(fd)
    publish_segment(temp, seq, fsync)
    return path


def publish_segment(temp: Path, seq: int, fsync: Callable[[int], None] = fsync_fd) -> Path:
    """Give the complete, synced file ``temp`` its segment name ``seq`` in the same directory,
    durably, and record it in HEAD; returns the segment's path."""
    wal_dir = temp.parent
    path = segment_path(wal_dir, seq)
    os.rename(temp, path)
    fsync_dir(wal_dir, fsync)
    # Only once the segment is durable: HEAD never names a segment a crash could take back.
    write_head(wal_dir, seq, fsync)
    return path


def write_head(wal_dir: Path, seq: int, fsync: Callable[[int], None] = fsync_fd) -> None:
    """Durably record ``seq`` as the newest segment of the log (temp file, fsync, rename)."""
    head = wal_dir / HEAD_NAME
    temp = head.with_name(HEAD_NAME + TEMP_SUFFIX)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        write_all(fd, f"{seq}\n".encode(), 0)
        fsync(fd)
    finally:
        os.close(fd)
    os.rename(temp, head)
    fsync_dir(wal_dir, fsync)


def read_head(wal_dir: Path) -> int | None:
    """The newest segment number recorded in HEAD; None without a readable HEAD (e.g. a log
    written by an earlier version), which leaves only the segments themselves to go by."""
    try:
        text = (wal_dir / HEAD_NAME).read_text().strip()
    except (FileNotFoundError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def write_all(fd: int, data: bytes | bytearray, offset: int) -> None:
    """``pwrite`` until everything is written (a short write is legal, e.g. on a signal)."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view = view[written:]
        offset += written


def file_vanished(fd: int, path: Path) -> str | None:
    """Why ``path`` no longer names the file open as ``fd`` (deleted, replaced), or None.

    Compares the descriptor's inode with the path's, and its link count with zero: a file
    unlinked (or its directory removed) while open still takes writes that no one will read.
    """
    held = os.fstat(fd)
    try:
        named = os.stat(path)
    except FileNotFoundError:
        return f"{path} was deleted"
    if held.st_nlink == 0 or (named.st_dev, named.st_ino) != (held.st_dev, held.st_ino):
        return f"{path} was replaced by another file"
    return None
