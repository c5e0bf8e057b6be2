"""The transaction-log interface the coordinator writes every decision through.

Backends (the embedded file WAL, a replicated store) implement ``TxLog``. Records are
``WalRecord`` protobuf messages; framing and durability are the backend's business.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from xatm.coordinator.txlog._proto import wal_pb2
from xatm.participant.errors import FailedPreconditionError, Status, UnavailableError, XatmError

__all__ = ["Encoded", "Framed", "LogCorrupt", "LogLocked", "LogMissing", "LogStopped", "TxLog", "decoded"]


@dataclass(frozen=True, slots=True)
class Encoded:
    """A log record already serialised, for a checkpoint: ``payload`` is a ``WalRecord``'s bytes,
    ``gtrid`` and ``body`` (the name of its body field) say what it holds without parsing it.

    The engine keeps the snapshot of a completed transaction this way, made once, since nothing
    changes it any more; a backend that stores bytes writes ``payload`` as it is.
    """

    gtrid: str
    body: str
    payload: bytes


@runtime_checkable
class Framed(Protocol):
    """What ``open()`` returns when the backend reads records from their bytes: besides being
    iterated, it can be read once as (payload, record) pairs, ``payload`` the bytes ``record`` was
    parsed from (so that a reader who keeps records as bytes need not serialise them again), good
    only until the next pair is read (the backend may read over them)."""

    def frames(self) -> Iterator[tuple[memoryview, wal_pb2.WalRecord]]: ...

    def __iter__(self) -> Iterator[wal_pb2.WalRecord]: ...


def decoded(item: wal_pb2.WalRecord | Encoded) -> wal_pb2.WalRecord:
    """``item`` as a ``WalRecord`` (parsed when it is ``Encoded``)."""
    return wal_pb2.WalRecord.FromString(item.payload) if isinstance(item, Encoded) else item


class LogCorrupt(XatmError):
    """Damage before the tail of the log: start-up must stop and name where (status DATA_LOSS).

    ``path`` is the damaged file, ``offset`` the byte offset of the damage, ``detail`` what is wrong.
    """

    status = Status.DATA_LOSS

    def __init__(self, path: str, offset: int, detail: str):
        super().__init__(f"{path} at offset {offset}: {detail}")
        self.path = path
        self.offset = offset
        self.detail = detail


class LogMissing(LogCorrupt):
    """The log, or its beginning, is gone although the data dir shows it existed.

    Starting on what is left would presume abort for every decision that was in the missing
    part, so start-up stops; ``offset`` is 0 and ``path`` names the file or directory missing.
    """

    def __init__(self, path: str, offset: int, detail: str):
        super().__init__(path, offset, detail)
        self.message = f"{path}: {detail}"
        self.args = (self.message,)


class LogLocked(FailedPreconditionError):
    """Another process (or another open log) holds the log; the message names the holder."""


class LogStopped(UnavailableError):
    """The log takes no more records: a write or fsync failed (full disk, I/O error) or its
    files vanished underneath the process.

    Final for the process: after a failed fsync the page cache can no longer be trusted, and a
    log whose file was deleted cannot be made durable again, so every later call raises this
    too. Its status is UNAVAILABLE (HTTP 503), so callers are told to retry elsewhere or later
    rather than shown an internal error. ``reason`` is the one-line cause.
    """

    def __init__(self, reason: str):
        super().__init__(
            f"transaction log stopped: {reason}; no decisions are taken until the coordinator restarts"
        )
        self.reason = reason


class TxLog(abc.ABC):
    @abc.abstractmethod
    async def open(self) -> Iterable[wal_pb2.WalRecord]:
        """Take ownership of the log and return every surviving record in append order.

        The records may come as a list or be read as they are iterated (the file WAL streams
        them, so replaying a long log never holds it all in memory): iterate them once, on any
        one thread; the log takes appends meanwhile. A torn or checksum-failing final record is
        cut off (and reported); damage before the tail raises ``LogCorrupt`` (here, or from the
        iteration when only reading a record can show it), a log missing where one must exist
        ``LogMissing``, storage that cannot be written ``LogStopped``. Another process holding
        the log raises ``LogLocked`` with a message naming the holder.
        """

    @abc.abstractmethod
    async def append(self, record: wal_pb2.WalRecord, *, force: bool = False) -> None:
        """Append in order. With ``force`` return only once the record is durable;
        without it the record rides along with the next forced write (group commit).

        Raises ``LogStopped`` once the log has stopped (and for a forced record whose
        write or fsync failed: it may or may not be on disk)."""

    @abc.abstractmethod
    async def checkpoint(self, snapshot: Iterable[wal_pb2.WalRecord | Encoded]) -> None:
        """Replace everything logged so far by ``snapshot`` (one record per kept transaction,
        each a ``WalRecord`` or already ``Encoded``), durably; records appended after this call
        follow the snapshot.

        ``snapshot`` is iterated once before this returns, possibly on another thread while the
        event loop goes on, so it must not read anything the loop changes meanwhile.

        A checkpoint that fails part way stops the log (``LogStopped``) and leaves on
        storage either the old records or the complete snapshot, never neither."""

    @abc.abstractmethod
    async def watch(self, interval: float) -> LogStopped:
        """Return the reason once the log has stopped, however that happens.

        Also checks every ``interval`` seconds (monotonic) that the log's storage is still
        where it was opened, so a log deleted or replaced while nothing is written is noticed
        too (and stops the log).
        """

    @property
    @abc.abstractmethod
    def stopped(self) -> LogStopped | None:
        """Why the log stopped, or None while it works."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush, release the log; later calls fail. Closing a stopped log only releases it."""
