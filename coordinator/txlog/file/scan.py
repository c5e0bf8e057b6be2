"""One read-only pass over the log: records in order, and where (if anywhere) it is damaged.

Shared by start-up replay, the offline reader and repair, so all three agree on what is a torn
tail (cut it, the writer never acknowledged it) and what is damage (stop, an operator decides).
"""

from __future__ import annotations

import contextlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path

from google.protobuf.message import DecodeError

from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.file.framing import (
    FRAME_HEADER_SIZE,
    SEGMENT_HEADER_SIZE,
    FrameError,
    check_frames,
    decode_frame,
    decode_segment_header,
    find_frame,
)
from xatm.coordinator.txlog.file.segment import list_segments, read_head, segment_path
from xatm.coordinator.txlog.interface import LogCorrupt, LogMissing

__all__ = [
    "Damage",
    "LogScan",
    "Span",
    "SpanRecords",
    "Tail",
    "TornTail",
    "close_spans",
    "read_frames",
    "read_spans",
]

_LENGTH = struct.Struct("<I")
#: Bytes read at a time when records are read after ``verify``: replay holds this much of a
#: segment, not the segment.
READ_CHUNK = 1 << 20
#: Bytes checked at a time by ``verify`` (the frames' checksums, before anything is parsed).
CHECK_CHUNK = 4 << 20


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
    """Iterate (segment path, offset, record) over the live segments of ``wal_dir``, or check
    them without parsing (``verify``) and read them after (``read_spans``).

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
                    self._cut(exc, data, pos, crc, (seq, path), index, len(segments))
                    return
                try:
                    record = wal_pb2.WalRecord.FromString(payload)
                except DecodeError as exc:
                    self.damage = _unparsable(path, pos, exc)
                    return
                yield path, pos, record
                pos, crc = end, next_crc
            prev = self.tail = Tail(seq, path, pos, crc)

    def verify(self) -> list[Span]:
        """Check every frame of the live segments without parsing the records; the spans of
        good frames, oldest first, each with the segment open for ``read_spans``.

        Sets ``damage``, ``torn_tail``, ``tail`` and ``stale`` as iterating does, except that a
        record whose checksum holds but which does not parse is only found when it is read. The
        descriptors are the caller's to close (``read_spans`` does, as it finishes each span).
        """
        spans: list[Span] = []
        prev: Tail | None = None
        segments = self._live_segments()
        try:
            for index, (seq, path) in enumerate(segments):
                fd = os.open(path, os.O_RDONLY)
                spans.append(Span(path, fd, SEGMENT_HEADER_SIZE, SEGMENT_HEADER_SIZE))
                head = _read(fd, SEGMENT_HEADER_SIZE)
                seed = self._check_header(seq, path, head, prev)
                if seed is None:
                    break
                end, crc = _check_chunked(fd, seed)
                if end is None:  # something to report: the whole segment says what and where
                    data = _read(fd)
                    end, crc, error = check_frames(data, SEGMENT_HEADER_SIZE, seed)
                    if error is not None:
                        spans[-1] = Span(path, fd, SEGMENT_HEADER_SIZE, end)
                        self._cut(error, data, end, crc, (seq, path), index, len(segments))
                        break
                spans[-1] = Span(path, fd, SEGMENT_HEADER_SIZE, end)
                prev = self.tail = Tail(seq, path, end, crc)
            if self.damage is None:
                self._check_head(segments)
        except BaseException:
            close_spans(spans)
            raise
        return spans

    def _cut(
        self,
        exc: FrameError,
        data: bytes,
        pos: int,
        crc: int,
        segment: tuple[int, Path],
        index: int,
        count: int,
    ) -> None:
        """Record why reading stops at ``pos`` of ``segment`` (number, path; ``index`` of ``count``
        live ones): a torn tail (only in the last segment, with no frame after it) or damage."""
        seq, path = segment
        if index == count - 1 and find_frame(data, pos + 1) is None:
            self.torn_tail = TornTail(path, pos, len(data) - pos, str(exc))
            self.tail = Tail(seq, path, pos, crc)
        else:
            self.damage = Damage(path, pos, _damage_detail(exc, data, pos, index, count))

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


@dataclass(frozen=True, slots=True)
class Span:
    """Checked frames of one segment: bytes ``start`` to ``end`` of ``path``, open as ``fd``."""

    path: Path
    fd: int
    start: int
    end: int


class SpanRecords:
    """The records of checked spans as a one-time iterable (``read_spans``), or with the bytes
    each was parsed from (``frames``, instead); the descriptors are closed when it is read to the
    end, or when it is dropped unread."""

    def __init__(self, spans: list[Span]) -> None:
        self._spans = spans

    def __iter__(self) -> Iterator[wal_pb2.WalRecord]:
        return read_spans(self._take())

    def frames(self) -> Iterator[tuple[memoryview, wal_pb2.WalRecord]]:
        """(serialised record, record) for each record, as ``read_frames``."""
        return read_frames(self._take())

    def _take(self) -> list[Span]:
        spans, self._spans = self._spans, []
        return spans

    def __del__(self) -> None:
        close_spans(self._spans)


def read_spans(spans: list[Span]) -> Iterator[wal_pb2.WalRecord]:
    """The records in ``spans``, as ``read_frames`` parses them."""
    return map(_RECORD, read_frames(spans))


_RECORD = itemgetter(1)


def read_frames(spans: list[Span]) -> Iterator[tuple[memoryview, wal_pb2.WalRecord]]:
    """(payload, record) for each record in ``spans`` (checked by ``LogScan.verify``): the bytes
    of the record as written (a view of the read buffer, good until the next pair is read), and
    the record parsed from them, one at a time. Each segment is read ``READ_CHUNK`` bytes at a
    time, and released with its descriptor once read.

    Raises ``LogCorrupt`` at a record whose checksum holds but which does not parse.
    """
    parse = wal_pb2.WalRecord.FromString
    length_at = _LENGTH.unpack_from
    # One buffer for every chunk: a fresh megabyte each time would be fresh pages for the kernel
    # to map in. Parsing copies what a record holds, so the buffer can be read over.
    buffer = bytearray(READ_CHUNK)
    header = FRAME_HEADER_SIZE
    try:
        while spans:
            span = spans[0]
            pos = span.start  # where ``data`` starts in the file
            while pos < span.end:
                data = _chunk(span, pos, buffer)
                at, size = 0, len(data)
                # Every frame that lies whole in the chunk; the rest start the next one.
                while at + header <= size:
                    (length,) = length_at(data, at)
                    start = at + header
                    end = start + length + (-length % 8)
                    if end > size:
                        break
                    payload = data[start : start + length]
                    try:
                        record = parse(payload)  # type: ignore[arg-type]  # any buffer
                    except DecodeError as exc:
                        raise _unparsable(span.path, pos + at, exc).error() from None
                    yield payload, record
                    at = end
                if not at:  # checked bytes hold whole frames: this span is not what was checked
                    raise LogCorrupt(str(span.path), pos, "segment changed while it was being read")
                pos += at
            os.close(span.fd)
            spans.pop(0)
    finally:
        close_spans(spans)


def _chunk(span: Span, pos: int, buffer: bytearray) -> memoryview:
    """The checked bytes of ``span`` from ``pos`` on, read into ``buffer`` (as many as it holds,
    never past the span's end), or on their own when the frame at ``pos`` is larger. Raises
    ``LogCorrupt`` if the file is shorter."""
    data = memoryview(buffer)[: min(len(buffer), span.end - pos)]
    done = 0
    while done < len(data):  # a short read is legal
        got = os.preadv(span.fd, [data[done:]], pos + done)
        if not got:
            raise LogCorrupt(str(span.path), pos + done, "segment shrank while it was being read")
        done += got
    if len(data) >= FRAME_HEADER_SIZE:
        (length,) = _LENGTH.unpack_from(data)
        frame = FRAME_HEADER_SIZE + length + (-length % 8)
        if frame > len(data):  # larger than the buffer: read whole, in bytes of its own
            return memoryview(_pread(span, min(frame, span.end - pos), pos))
    return data


def _pread(span: Span, size: int, offset: int) -> bytes:
    """``size`` bytes of ``span``'s file at ``offset`` (checked bytes: a short file is damage)."""
    data = os.pread(span.fd, size, offset)
    while len(data) < size:  # a short read is legal
        more = os.pread(span.fd, size - len(data), offset + len(data))
        if not more:
            raise LogCorrupt(str(span.path), offset, "segment shrank while it was being read")
        data += more
    return data


def _check_chunked(fd: int, seed: int) -> tuple[int | None, int]:
    """Check the frames of the segment open as ``fd`` (chained from ``seed``) ``CHECK_CHUNK``
    bytes at a time, so that the check holds a chunk of the segment rather than all of it.

    Returns where the frames end and their last CRC when every frame is good up to the end of
    the file; (None, seed) when they are not, for the caller to find out how on the whole segment.
    """
    size = os.fstat(fd).st_size
    pos, crc = SEGMENT_HEADER_SIZE, seed
    data = b""  # the file from ``pos`` on, as far as it has been read
    while pos < size:
        more = os.pread(fd, min(CHECK_CHUNK, size - pos - len(data)), pos + len(data))
        if not more:  # shorter than it said: let the whole-segment check see what is there
            return None, seed
        data += more
        checked, crc, error = check_frames(data, 0, crc)
        pos += checked
        data = data[checked:]
        if error is not None and not _cut_short(data, pos + len(data) < size):
            return None, seed
    return pos, crc


def _cut_short(data: bytes, more_follows: bool) -> bool:
    """Whether the frame ``data`` starts with only failed to check because the chunk ends
    before it does (so reading on will tell)."""
    if not more_follows:
        return False
    if len(data) < FRAME_HEADER_SIZE:
        return True
    length: int = _LENGTH.unpack_from(data)[0]
    return FRAME_HEADER_SIZE + length + (-length % 8) > len(data)


def close_spans(spans: list[Span]) -> None:
    """Close the descriptors of ``spans`` still open."""
    for span in spans:
        with contextlib.suppress(OSError):
            os.close(span.fd)


def _read(fd: int, size: int | None = None) -> bytes:
    """The first ``size`` bytes (all without ``size``) of the file open as ``fd``."""
    if size is None:
        size = os.fstat(fd).st_size
    data = os.pread(fd, size, 0)
    while len(data) < size:  # a short read is legal
        more = os.pread(fd, size - len(data), len(data))
        if not more:
            break
        data += more
    return data


def _unparsable(path: Path, pos: int, exc: DecodeError) -> Damage:
    return Damage(path, pos, f"record has a valid checksum but does not parse: {exc}")


def _damage_detail(exc: FrameError, data: bytes, pos: int, index: int, count: int) -> str:
    if index < count - 1:
        return f"{exc} (in segment {index + 1} of {count}, not the last one)"
    return f"{exc}; a valid record follows at offset {find_frame(data, pos + 1)}"
