"""``repair``: the explicit operator action for a log that ``open()`` refuses (``--repair-wal``)."""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from xatm.coordinator.txlog.file.lock import DirLock
from xatm.coordinator.txlog.file.scan import LogScan
from xatm.coordinator.txlog.file.segment import (
    HEAD_NAME,
    fsync_dir,
    fsync_fd,
    list_segments,
    write_head,
)

__all__ = ["RepairReport", "repair"]

log = logging.getLogger(__name__)


@dataclass
class RepairReport:
    """What ``repair`` found and did, for the operator's records."""

    wal_dir: Path
    kept_records: int
    problem: str | None = None
    backup_dir: Path | None = None
    #: (segment, new size, bytes cut)
    truncated: list[tuple[Path, int, int]] = field(default_factory=list)
    removed: list[Path] = field(default_factory=list)
    #: The segment the log ends at after the repair (recorded in HEAD); None: no segment left.
    last_segment: int | None = None

    def __str__(self) -> str:
        if self.problem is None:
            return f"{self.wal_dir}: no damage found, {self.kept_records} records, nothing changed"
        lines = [f"{self.wal_dir}: {self.problem}", f"kept {self.kept_records} records before it"]
        if self.backup_dir is not None:
            lines.append(f"backed up the affected segments to {self.backup_dir}")
        lines += [
            f"truncated {path.name} to {size} bytes ({cut} bytes cut)" for path, size, cut in self.truncated
        ]
        lines += [f"removed {path.name}" for path in self.removed]
        end = f"segment {self.last_segment}" if self.last_segment is not None else "no segment (a new log)"
        lines.append(f"the log now ends at {end}")
        return "\n".join(lines)


def repair(data_dir: Path | str) -> RepairReport:
    """Cut the log at its first damage so the coordinator can start, losing what follows.

    Every segment touched is first copied to ``wal/backup-<UTC time>/``; then the damaged
    segment is truncated at the damage (removed if its header is bad) and every later
    segment is removed. Takes the log's lock, so it refuses to run beside a coordinator.
    """
    data_dir = Path(data_dir)
    wal_dir = data_dir / "wal"
    if not wal_dir.is_dir():
        raise FileNotFoundError(f"no write-ahead log in {data_dir} (expected {wal_dir})")
    lock = DirLock(data_dir, node="wal repair")
    lock.acquire()
    try:
        scan = LogScan(wal_dir)
        report = RepairReport(wal_dir, kept_records=sum(1 for _ in scan))
        cut = scan.damage or scan.torn_tail
        if cut is None:
            return report
        kind = "damage" if scan.damage else "torn tail"
        report.problem = f"{kind} in {cut.path.name} at offset {cut.offset}: {cut.detail}"
        affected = [path for _, path in list_segments(wal_dir) if path.name >= cut.path.name]
        if affected:  # none when only the newest segments are missing: nothing to cut then
            _cut(report, cut.offset, affected)
        # HEAD follows the cut, or the next open would report the removed segments as missing.
        remaining = list_segments(wal_dir)
        if remaining:
            report.last_segment = remaining[-1][0]
            write_head(wal_dir, report.last_segment)
        else:
            (wal_dir / HEAD_NAME).unlink(missing_ok=True)
        fsync_dir(wal_dir)
        log.warning("write-ahead log repaired:\n%s", report)
        return report
    finally:
        lock.release()


def _cut(report: RepairReport, offset: int, affected: list[Path]) -> None:
    """Back up ``affected``, truncate the first at ``offset`` (remove it at 0), remove the rest."""
    report.backup_dir = _backup(report.wal_dir, affected)
    first, *later = affected
    if offset == 0:
        later.insert(0, first)
    else:
        size = first.stat().st_size
        fd = os.open(first, os.O_WRONLY)
        try:
            os.ftruncate(fd, offset)
            fsync_fd(fd)
        finally:
            os.close(fd)
        report.truncated.append((first, offset, size - offset))
    for path in later:
        path.unlink()
        report.removed.append(path)


def _backup(wal_dir: Path, paths: list[Path]) -> Path:
    """Copy ``paths`` durably into a new backup directory (never overwriting an earlier one)."""
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    backup = wal_dir / f"backup-{stamp}"
    suffix = 1
    while backup.exists():
        backup = wal_dir / f"backup-{stamp}-{suffix}"
        suffix += 1
    backup.mkdir()
    for path in paths:
        copy = shutil.copy2(path, backup / path.name)
        fd = os.open(copy, os.O_RDONLY)
        try:
            fsync_fd(fd)
        finally:
            os.close(fd)
    fsync_dir(backup)
    fsync_dir(wal_dir)
    return backup
