"""One read-only pass over the log: records in order, and where (if anywhere) it is damaged.

Shared by start-up replay, the offline reader and repair, so all three agree on what is a torn
tail (cut it, the writer never acknowledged it) and what is damage (stop, an operator decides).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError

from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.file.framing import (
    SEGMENT_HEADER_SIZE,
    FrameError,
    decode_frame,
    decode_segment_header,
    find_frame,
)
from xatm.coordinator.txlog.file.segment import list_segments, read_head, segment_path
from xatm.coordinator.txlog.interface import LogCorrupt, LogMissing

__all__ = ["Damage", "LogScan", "Tail", "TornTail"]


@dataclass(frozen=True, slots=True)
class TornTail:
    """Bytes after the last good record of the last segment: a write that never completed."""

    path: Path
    offset: int
    nbytes: int
    detail: str


@dataclass(frozen=True, slots=True)
class Damage:
    """The first place the log cannot be read past: ``open()`` refuses, ``repair`` cuts here."""

    path: Path
    offset: int
    detail: str
    #: Whole segments are missing (not bad bytes): restoring them, not cutting, is the way out.
    missing: bool = False

    def error(self) -> LogCorrupt:
        kind = LogMissing if self.missing else LogCorrupt
        return kind(str(self.path), self.offset, self.detail)


@dataclass(frozen=True, slots=True)
class Tail:
    """Where appending resumes: the last segment, its good length and the chain's last CRC."""

    seq: int
    path: Path
    size: int
    crc: int


class LogScan:
    """Iterate (segment path, offset, record) over the live segments of ``wal_dir``.

    Replay starts at the newest base segment (the log's first segment or a checkpoint); older
    segments are ``stale`` leftovers of a checkpoint interrupted before it deleted them. Iteration
    never raises for bad data: when it ends, ``damage`` or ``torn_tail`` say how, and ``tail``
    says where a writer would continue. Nothing is modified.
    """

    def __init__(self, wal_dir: Path) -> None:
        self.wal_dir = wal_dir
        self.stale: list[Path] = []
        self.damage: Damage | None = None
        self.torn_tail: TornTail | None = None
        self.tail: Tail | None = None

    def __iter__(self) -> Iterator[tuple[Path, int, wal_pb2.WalRecord]]:
        segments = self._live_segments()
        yield from self._records(segments)
        if self.damage is None:
            self._check_head(segments)

    def _check_head(self, segments: list[tuple[int, Path]]) -> None:
        """Segments deleted from the end leave a log that reads well: HEAD says how far it went."""
        head = read_head(self.wal_dir)
        last = segments[-1][0] if segments else 0
        if head is None or head <= last:
            return
        missing = f"segments {last + 1}..{head} are" if head > last + 1 else f"segment {head} is"
        self.damage = Damage(
            segment_path(self.wal_dir, last + 1),
            0,
            f"{missing} missing: the log had reached segment {head} (as its {self.wal_dir.name}/HEAD says)",
            missing=True,
        )

    def _records(self, segments: list[tuple[int, Path]]) -> Iterator[tuple[Path, int, wal_pb2.WalRecord]]:
        prev: Tail | None = None
        for index, (seq, path) in enumerate(segments):
            data = path.read_bytes()
            crc = self._check_header(seq, path, data, prev)
            if crc is None:
                return
            pos = SEGMENT_HEADER_SIZE
            while pos < len(data):
                try:
                    payload, end, next_crc = decode_frame(data, pos, crc)
                except FrameError as exc:
                    if index == len(segments) - 1 and find_frame(data, pos + 1) is None:
                        self.torn_tail = TornTail(path, pos, len(data) - pos, str(exc))
                        self.tail = Tail(seq, path, pos, crc)
                    else:
                        self.damage = Damage(path, pos, _damage_detail(exc, data, pos, index, len(segments)))
                    return
                try:
                    record = wal_pb2.WalRecord.FromString(payload)
                except DecodeError as exc:
                    self.damage = Damage(path, pos, f"record has a valid checksum but does not parse: {exc}")
                    return
                yield path, pos, record
                pos, crc = end, next_crc
            prev = self.tail = Tail(seq, path, pos, crc)

    def _live_segments(self) -> list[tuple[int, Path]]:
        segments = list_segments(self.wal_dir)
        for index in range(len(segments) - 1, -1, -1):
            with segments[index][1].open("rb") as file:
                head = file.read(SEGMENT_HEADER_SIZE)
            try:
                base = decode_segment_header(head).base
            except FrameError:
                continue  # the forward pass reports it if it is live
            if base:
                self.stale = [path for _, path in segments[:index]]
                return segments[index:]
        if segments:
            self.damage = Damage(
                segments[0][1], 0, "no base segment: the beginning of the log is missing", missing=True
            )
        return []

    def _check_header(self, seq: int, path: Path, data: bytes, prev: Tail | None) -> int | None:
        """The chain seed of this segment, or None after recording why it cannot be read."""
        try:
            header = decode_segment_header(data)
        except FrameError as exc:
            self.damage = Damage(path, 0, str(exc))
            return None
        problem = None
        if header.seq != seq:
            problem = f"header says segment {header.seq}, file name says {seq}"
        elif prev is not None and seq != prev.seq + 1:
            self.damage = Damage(path, 0, f"segments {prev.seq + 1}..{seq - 1} are missing", missing=True)
            return None
        elif prev is not None and header.seed != prev.crc:
            problem = (
                f"checksum chain broken: segment starts from {header.seed:#010x}, "
                f"{prev.path.name} ends with {prev.crc:#010x}"
            )
        if problem:
            self.damage = Damage(path, 0, problem)
            return None
        return header.seed


def _damage_detail(exc: FrameError, data: bytes, pos: int, index: int, count: int) -> str:
    if index < count - 1:
        return f"{exc} (in segment {index + 1} of {count}, not the last one)"
    return f"{exc}; a valid record follows at offset {find_frame(data, pos + 1)}"
