"""The transaction-log interface the coordinator writes every decision through.

Backends (the embedded file WAL, a replicated store) implement ``TxLog``. Records are
``WalRecord`` protobuf messages; framing and durability are the backend's business.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence

from participant._proto import wal_pb2

__all__ = ["TxLog", "TxLogCorrupt"]


class TxLogCorrupt(Exception):
    """Damage before the tail of the log: start-up must stop and name where."""

    def __init__(self, path: str, offset: int, detail: str):
        super().__init__(f"{path} at offset {offset}: {detail}")
        self.path = path
        self.offset = offset
        self.detail = detail


class TxLog(abc.ABC):
    @abc.abstractmethod
    async def open(self) -> list[wal_pb2.WalRecord]:
        """Take ownership of the log and return every surviving record in append order.

        A torn or checksum-failing final record is cut off (and reported); damage before
        the tail raises ``TxLogCorrupt``. Another process holding the log raises
        ``RuntimeError`` with a message naming the holder.
        """

    @abc.abstractmethod
    async def append(self, record: wal_pb2.WalRecord, *, force: bool = False) -> None:
        """Append in order. With ``force`` return only once the record is durable;
        without it the record rides along with the next forced write (group commit)."""

    @abc.abstractmethod
    async def checkpoint(self, snapshot: Sequence[wal_pb2.WalRecord]) -> None:
        """Replace everything logged so far by ``snapshot`` (one record per kept transaction),
        durably; records appended after this call follow the snapshot."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Flush, release the log; later calls fail."""
