"""On-disk framing of the write-ahead log: segment headers and record frames.

Segment header, 32 bytes, little-endian::

    0   8s  SEGMENT_MAGIC (format version in the last byte)
    8   Q   sequence number, equal to the number in the file name
    16  I   chain seed: the CRC the first record chains from (the previous segment's last CRC)
    20  I   flags; FLAG_BASE marks where replay starts (a fresh log or a checkpoint)
    24  I   CRC-32 of bytes 0..24
    28  I   zero

Record frame: a 16-byte header, the payload (a serialized ``WalRecord``), zero padding to a
multiple of 8::

    0   I   payload length
    4   H   FRAME_MAGIC, never zero: a zero-filled or preallocated tail is not a frame
    6   B   FRAME_KIND
    7   B   zero
    8   I   CRC-32 of header[0:8] + payload + padding, seeded with the previous record's CRC
    12  I   CRC-32 of header[0:12]

Frames start on 8-byte boundaries, so the length and magic share one aligned word that a torn
write cannot split. The chained CRC catches records that are individually intact but out of
place (a stale or spliced segment); the header CRC lets a scanner recognise a frame without its
predecessor, which is how damage in the middle is told from a torn tail.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterable
from dataclasses import dataclass

from xatm.participant.errors import XatmError

__all__ = [
    "FRAME_HEADER_SIZE",
    "MAX_PAYLOAD",
    "SEGMENT_HEADER_SIZE",
    "FrameError",
    "SegmentHeader",
    "check_frames",
    "check_payload",
    "decode_frame",
    "decode_segment_header",
    "encode_frames",
    "encode_segment_header",
    "find_frame",
]

SEGMENT_MAGIC = b"XATMWAL\x01"
FLAG_BASE = 1
FRAME_MAGIC = 0xA7E1
FRAME_KIND = 1
MAX_PAYLOAD = 64 << 20  # far above any real record; keeps a bad caller from writing a giant frame

_SEGMENT = struct.Struct("<8sQII")
_SEGMENT_CHECK = struct.Struct("<II")
_FRAME = struct.Struct("<IHBBII")
_FRAME_TAG = struct.pack("<HBB", FRAME_MAGIC, FRAME_KIND, 0)  # bytes 4..8 of every frame header
_LENGTH_TAG = struct.Struct("<I4s")
#: A frame header as four words; the second is the magic, kind and zero byte (``_TAG``).
_WORDS = struct.Struct("<IIII")
_TAG = int.from_bytes(_FRAME_TAG, "little")
_CRC = struct.Struct("<I")
_PADDING = [bytes(n) for n in range(8)]
SEGMENT_HEADER_SIZE = _SEGMENT.size + _SEGMENT_CHECK.size
FRAME_HEADER_SIZE = _FRAME.size
_ZERO_HEADER = bytes(FRAME_HEADER_SIZE)


class FrameError(XatmError, ValueError):
    """Bytes that are not a valid header or frame; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class SegmentHeader:
    seq: int
    seed: int
    base: bool


def encode_segment_header(header: SegmentHeader) -> bytes:
    head = _SEGMENT.pack(SEGMENT_MAGIC, header.seq, header.seed, FLAG_BASE if header.base else 0)
    return head + _SEGMENT_CHECK.pack(zlib.crc32(head), 0)


def decode_segment_header(data: bytes) -> SegmentHeader:
    if len(data) < SEGMENT_HEADER_SIZE:
        raise FrameError(f"segment header truncated: {len(data)} of {SEGMENT_HEADER_SIZE} bytes")
    magic, seq, seed, flags = _SEGMENT.unpack_from(data)
    crc, reserved = _SEGMENT_CHECK.unpack_from(data, _SEGMENT.size)
    if magic != SEGMENT_MAGIC:
        raise FrameError(f"not a segment of this log format (magic {magic!r})")
    if crc != zlib.crc32(data[: _SEGMENT.size]) or reserved or flags & ~FLAG_BASE:
        raise FrameError("segment header checksum mismatch")
    return SegmentHeader(seq=seq, seed=seed, base=bool(flags & FLAG_BASE))


def encode_frames(payloads: Iterable[bytes], crc: int) -> tuple[bytes, int]:
    """Frame ``payloads`` in order, chaining from ``crc``; returns the bytes and the last CRC."""
    out = bytearray()
    crc32 = zlib.crc32
    for payload in payloads:
        pad = _PADDING[-len(payload) % 8]
        first = _LENGTH_TAG.pack(len(payload), _FRAME_TAG)
        crc = crc32(pad, crc32(payload, crc32(first, crc)))
        head = first + _CRC.pack(crc)
        out += head
        out += _CRC.pack(crc32(head))
        out += payload
        out += pad
    return bytes(out), crc


def check_payload(payload: bytes) -> bytes:
    """Refuse an oversized record in the caller, before it can reach (and stop) the writer."""
    if len(payload) > MAX_PAYLOAD:
        raise ValueError(f"WAL record of {len(payload)} bytes exceeds the {MAX_PAYLOAD}-byte limit")
    return payload


def _check_header(data: bytes, pos: int) -> int:
    """Validate the frame header at ``pos``; return the payload length."""
    if len(data) - pos < FRAME_HEADER_SIZE:
        if not any(data[pos:]):
            raise FrameError("zero-filled tail")
        raise FrameError(f"frame header truncated: {len(data) - pos} of {FRAME_HEADER_SIZE} bytes")
    header = data[pos : pos + FRAME_HEADER_SIZE]
    if header == _ZERO_HEADER:
        raise FrameError("zero-filled tail")
    length, magic, kind, reserved, _, hcrc = _FRAME.unpack(header)
    if (magic, kind, reserved) != (FRAME_MAGIC, FRAME_KIND, 0):
        raise FrameError("no frame header here (bad magic)")
    if hcrc != zlib.crc32(header[:12]):
        raise FrameError("frame header checksum mismatch")
    return int(length)


def decode_frame(data: bytes, pos: int, crc: int) -> tuple[bytes, int, int]:
    """Decode the frame at ``pos`` chained from ``crc``; returns (payload, end offset, its CRC)."""
    length = _check_header(data, pos)
    start = pos + FRAME_HEADER_SIZE
    end = start + length + (-length % 8)
    if end > len(data):
        raise FrameError(f"record truncated: frame needs {end - pos} bytes, {len(data) - pos} present")
    (stored,) = struct.unpack_from("<I", data, pos + 8)
    if zlib.crc32(data[start:end], zlib.crc32(data[pos : pos + 8], crc)) != stored:
        raise FrameError("record checksum mismatch")
    return data[start : start + length], end, stored


def check_frames(data: bytes, pos: int, crc: int) -> tuple[int, int, FrameError | None]:
    """Check the frames from ``pos`` on, chained from ``crc``.

    Returns where the good frames end, the CRC they end with, and the error at that offset
    (None when they run to the end of ``data``). Accepts exactly what ``decode_frame`` accepts:
    the first frame it does not like is handed to ``decode_frame`` to say what is wrong.
    """
    size = len(data)
    unpack = _WORDS.unpack_from
    crc32 = zlib.crc32
    tag = _TAG
    while pos < size:
        if size - pos >= 16:  # FRAME_HEADER_SIZE, as a constant: this loop runs once a record
            length, tagged, stored, hcrc = unpack(data, pos)
            start = pos + 16
            end = start + length + (-length % 8)
            # Slices of the bytes, not of a view: copying a record costs less than a view object.
            if (
                tagged == tag
                and end <= size
                and hcrc == crc32(data[pos : pos + 12])
                and stored == crc32(data[start:end], crc32(data[pos : pos + 8], crc))
            ):
                pos, crc = end, stored
                continue
        try:
            _, pos, crc = decode_frame(data, pos, crc)
        except FrameError as exc:
            return pos, crc, exc
    return pos, crc, None


def find_frame(data: bytes, start: int) -> int | None:
    """First offset at or after ``start`` holding a valid frame header, if any.

    Any offset, not only aligned ones: data shifted by damage is still found, so what follows
    a bad spot is never mistaken for an unwritten tail.
    """
    hit = data.find(_FRAME_TAG, start + 4)
    while hit != -1:
        try:
            _check_header(data, hit - 4)
        except FrameError:
            hit = data.find(_FRAME_TAG, hit + 1)
        else:
            return hit - 4
    return None
