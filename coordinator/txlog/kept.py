"""The kept-records form of a completed transaction: the log records that made it what it is, each
serialised without its gtrid (the key it is kept under says it) and preceded by its length (4 bytes,
little-endian), one after the other. Replay keeps a completed transaction so, checkpoints write it
as it is (``CompletedRecord.records``), and the dump and ``journal.expand`` read it back.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator

from xatm.coordinator.txlog._proto import wal_pb2

__all__ = ["LENGTH", "kept_record", "kept_records", "kept_spans", "pack_length"]

#: The length before each kept record.
LENGTH = struct.Struct("<I")
#: The length before a kept record, as bytes.
pack_length = LENGTH.pack


def kept_record(payload: bytes | memoryview) -> bytes:
    """A serialised record as a transaction's kept records hold it: without its gtrid (the key it
    is kept under says it), preceded by its length (4 bytes, little-endian).

    Cut from the bytes: a record's time and gtrid come first (fields 1 and 2, as protobuf writes
    them, in field order), and a whole field taken out leaves the rest a record all the same; bytes
    that do not start so are kept whole."""
    size = len(payload)
    at = 2 + payload[1] if size > 1 and payload[0] == 0x0A and payload[1] < 0x80 else 0
    if at + 1 < size and payload[at] == 0x12 and payload[at + 1] < 0x80:
        cut = at + 2 + payload[at + 1]
        if cut <= size:
            return b"".join((pack_length(size - cut + at), payload[:at], payload[cut:]))
    return pack_length(size) + payload


def kept_spans(kept: bytes) -> Iterator[tuple[int, int]]:
    """Where each record of kept records (``kept_record``'s, one after the other) starts and
    ends (its length included), in order. Raises ``ValueError`` for bytes cut short."""
    pos, length_at, size = 0, LENGTH.unpack_from, LENGTH.size
    while pos < len(kept):
        if pos + size > len(kept):
            raise ValueError(f"kept records cut short at byte {pos} of {len(kept)}")
        end = pos + size + length_at(kept, pos)[0]
        if end > len(kept):
            raise ValueError(f"kept records cut short at byte {pos} of {len(kept)}")
        yield pos, end
        pos = end


def kept_records(kept: bytes) -> Iterator[wal_pb2.WalRecord]:
    """The records of kept records, in order (without their gtrid).

    Raises ``google.protobuf.message.DecodeError`` or ``ValueError`` for bytes that are not."""
    parse = wal_pb2.WalRecord.FromString
    for pos, end in kept_spans(kept):
        yield parse(kept[pos + LENGTH.size : end])

