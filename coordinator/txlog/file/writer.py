"""Appending to the active segment, rolling over and checkpointing; used by one thread only."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from xatm.coordinator.txlog.file.framing import (
    SEGMENT_HEADER_SIZE,
    SegmentHeader,
    encode_frames,
    encode_segment_header,
)
from xatm.coordinator.txlog.file.scan import Tail
from xatm.coordinator.txlog.file.segment import (
    Hook,
    create_segment,
    file_vanished,
    fsync_dir,
    fsync_fd,
    list_segments,
    write_all,
)

__all__ = ["SegmentWriter"]


class SegmentWriter:
    """The synchronous half of the log: frames, writes, fsyncs. It never decides *when* to sync;
    the group-commit loop in ``FileWal`` does, so one fsync can serve many callers."""

    def __init__(self, wal_dir: Path, tail: Tail, segment_bytes: int, hook: Hook | None = None) -> None:
        self._wal_dir = wal_dir
        self._hook = hook
        self._segment_bytes = segment_bytes
        self._seq = tail.seq
        self._size = tail.size
        self._crc = tail.crc
        self._path = tail.path
        self._fd = os.open(tail.path, os.O_WRONLY)
        self._dirty = False
        self.fsync_count = 0

    def write(self, payloads: Sequence[bytes]) -> None:
        """Write ``payloads`` to the OS (not yet durable), rolling over when a segment is full.

        A segment always takes at least one record, so a record larger than ``segment_bytes``
        still fits; one ``pwrite`` per segment touched.
        """
        pending = bytearray()
        for payload in payloads:
            used = self._size + len(pending)
            if used >= self._segment_bytes and used > SEGMENT_HEADER_SIZE:
                self._put(pending)
                pending.clear()
                self._start_segment((), base=False)
            frame, self._crc = encode_frames((payload,), self._crc)
            pending += frame
        self._put(pending)

    def sync(self) -> None:
        """Make everything written so far durable (no-op when nothing was written since)."""
        if self._dirty:
            self._fsync(self._fd)
            self._dirty = False

    def checkpoint(self, payloads: Sequence[bytes]) -> None:
        """Start a base segment holding ``payloads``, durably, then delete every older segment.

        Deletion comes last: a crash in between leaves older segments that replay skips (it
        starts at the newest base) and the next open deletes.
        """
        self._start_segment(payloads, base=True)
        for seq, path in list_segments(self._wal_dir):
            if seq < self._seq:
                path.unlink()
        fsync_dir(self._wal_dir, self._fsync)

    def vanished(self) -> str | None:
        """Why the open segment is no longer the file at its name (deleted, replaced), or None.

        Writes to an unlinked file succeed and are lost, so this is asked before every batch.
        """
        return file_vanished(self._fd, self._path)

    def close(self) -> None:
        """Release the segment without syncing: after a failed write, syncing again proves nothing."""
        os.close(self._fd)

    def _put(self, data: bytes | bytearray) -> None:
        if data:
            write_all(self._fd, data, self._size)
            self._size += len(data)
            self._dirty = True

    def _start_segment(self, payloads: Sequence[bytes], *, base: bool) -> None:
        # The finished segment is synced first: only the last segment may ever hold a torn write.
        self.sync()
        seq = self._seq + 1
        header = encode_segment_header(SegmentHeader(seq=seq, seed=self._crc, base=base))
        body, crc = encode_frames(payloads, self._crc)
        path = create_segment(self._wal_dir, seq, header + body, self._fsync)
        os.close(self._fd)
        self._fd = os.open(path, os.O_WRONLY)
        self._path = path
        self._seq, self._size, self._crc = seq, len(header) + len(body), crc

    def _fsync(self, fd: int) -> None:
        fsync_fd(fd, self._hook)
        self.fsync_count += 1
