"""Appending to the active segment, rolling over and checkpointing; used by one thread only."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.file.framing import (
    SEGMENT_HEADER_SIZE,
    SegmentHeader,
    check_payload,
    encode_frames,
    encode_segment_header,
)
from xatm.coordinator.txlog.file.scan import Tail
from xatm.coordinator.txlog.file.segment import (
    TEMP_SUFFIX,
    Hook,
    create_segment,
    file_vanished,
    fsync_dir,
    fsync_fd,
    list_segments,
    publish_segment,
    write_all,
)
from xatm.coordinator.txlog.interface import Encoded

__all__ = ["CheckpointBody", "SegmentWriter", "write_checkpoint_body"]

#: Snapshot records framed per write while a checkpoint body is written; after each chunk the
#: thread pauses for ``_PAUSE`` seconds, so that the event loop and the log's writer, which need
#: the interpreter too, get it within a chunk's time rather than the interpreter's 5-ms switch
#: interval (a checkpoint of a long history would otherwise slow every commit while it runs).
_CHUNK = 256
_PAUSE = 0.0001


@dataclass(slots=True)
class CheckpointBody:
    """A checkpoint's snapshot written beside the log, not yet part of it: ``path`` (a temp file,
    which a crash leaves for the next open to delete) open as ``fd``, ``size`` bytes long
    including room for the segment header, its frames chained from ``seed`` to ``crc``, and how
    many records of each type it holds."""

    path: Path
    fd: int
    size: int
    seed: int
    crc: int
    counts: Counter[str]

    def discard(self) -> None:
        """Close and delete it (the checkpoint was abandoned)."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        self.path.unlink(missing_ok=True)


def write_checkpoint_body(
    wal_dir: Path, name: str, records: Iterable[wal_pb2.WalRecord | Encoded], hook: Hook | None = None
) -> CheckpointBody:
    """Serialise and frame ``records`` into ``wal_dir/name`` + ``.tmp`` and sync it; runs on any
    thread (it touches nothing of the live log). Raises OSError for the disk, ValueError for an
    oversized record; the file is deleted then."""
    path = wal_dir / f"{name}{TEMP_SUFFIX}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    # A base segment starts the chain: nothing before it is checked against its seed.
    body = CheckpointBody(path, fd, SEGMENT_HEADER_SIZE, 0, 0, Counter())
    try:
        chunk: list[bytes] = []
        for record in records:
            if isinstance(record, Encoded):
                chunk.append(check_payload(record.payload))
                body.counts[record.body] += 1
            else:
                chunk.append(check_payload(record.SerializeToString()))
                body.counts[record.WhichOneof("body") or "none"] += 1
            if len(chunk) >= _CHUNK:
                _append_frames(body, chunk)
                time.sleep(_PAUSE)
        _append_frames(body, chunk)
        fsync_fd(fd, hook)
    except BaseException:
        body.discard()
        raise
    return body


def _append_frames(body: CheckpointBody, payloads: list[bytes]) -> None:
    frames, body.crc = encode_frames(payloads, body.crc)
    write_all(body.fd, frames, body.size)
    body.size += len(frames)
    payloads.clear()


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
                self._start_segment()
            frame, self._crc = encode_frames((payload,), self._crc)
            pending += frame
        self._put(pending)

    def sync(self) -> None:
        """Make everything written so far durable (no-op when nothing was written since)."""
        if self._dirty:
            self._fsync(self._fd)
            self._dirty = False

    def install(self, body: CheckpointBody, payloads: Sequence[bytes]) -> None:
        """Make ``body`` (a checkpoint written beside the log) the log's new base segment, with
        ``payloads`` (what was appended since the checkpoint was taken) after its snapshot, then
        delete every older segment.

        ``body`` is complete and synced except for its header, which only now gets the segment's
        number; it is synced again before it takes its name. Deletion comes last: a crash in
        between leaves older segments that replay skips (it starts at the newest base) and the
        next open deletes.
        """
        self.sync()  # the finished segment first: only the last segment may ever hold a torn write
        seq = self._seq + 1
        frames, crc = encode_frames(payloads, body.crc)
        write_all(body.fd, frames, body.size)
        write_all(body.fd, encode_segment_header(SegmentHeader(seq=seq, seed=body.seed, base=True)), 0)
        self._fsync(body.fd)
        path = publish_segment(body.path, seq, self._fsync)
        os.close(self._fd)
        self._fd, body.fd = body.fd, -1
        self._path = path
        self._seq, self._size, self._crc = seq, body.size + len(frames), crc
        for old, old_path in list_segments(self._wal_dir):
            if old < seq:
                old_path.unlink()
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

    def _start_segment(self) -> None:
        """Roll over to a new, empty segment continuing the chain."""
        self.sync()  # the finished segment first: only the last segment may ever hold a torn write
        seq = self._seq + 1
        header = encode_segment_header(SegmentHeader(seq=seq, seed=self._crc, base=False))
        path = create_segment(self._wal_dir, seq, header, self._fsync)
        os.close(self._fd)
        self._fd = os.open(path, os.O_WRONLY)
        self._path = path
        self._seq, self._size = seq, len(header)

    def _fsync(self, fd: int) -> None:
        fsync_fd(fd, self._hook)
        self.fsync_count += 1
