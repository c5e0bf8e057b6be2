"""``MemoryLog``: a transaction log kept in memory, so the engine can run in one process (tests).

It keeps the ``TxLog`` contract of the file WAL without a disk. What a crash would leave on disk
lives in a ``LogStore``: the records made durable (by a forced append, a checkpoint or ``close``),
in order. A new ``MemoryLog`` opened on the same store replays them, which is how a test
simulates a restart; ``crash()`` first drops what was written but not yet durable, as kill -9
would. ``hold()`` keeps durability back (a slow fsync) and ``stop()`` / ``stop_at()`` stop the
log for good, as a full disk or a failed fsync stops the file WAL.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable

from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.interface import Encoded, LogLocked, LogStopped, TxLog, decoded

__all__ = ["LogStore", "MemoryLog"]


class LogStore:
    """What survives the process: the durable records in append order, and who holds the log."""

    def __init__(self) -> None:
        self.records: list[wal_pb2.WalRecord] = []
        #: The open log using this store (the file WAL's directory lock), or None.
        self.holder: MemoryLog | None = None


def _copy(record: wal_pb2.WalRecord) -> wal_pb2.WalRecord:
    # Through the wire format, as the file WAL does: an unserialisable record fails here too, and
    # a record changed by the caller after the append does not change what was logged.
    copy = wal_pb2.WalRecord()
    copy.ParseFromString(record.SerializeToString())
    return copy


class MemoryLog(TxLog):
    """A ``TxLog`` whose storage is a ``LogStore`` (a new one unless given).

    Appends are written at once, in call order; a forced append, a checkpoint or ``close``
    then makes everything written so far durable (group commit: unforced records ride along).
    ``appended`` keeps every record appended since ``open`` for tests to read, checkpoints
    notwithstanding; ``store.records`` is what a restart would replay.
    """

    def __init__(self, store: LogStore | None = None) -> None:
        self.store = store if store is not None else LogStore()
        #: Every record appended since ``open``, in order (copies), for tests to read.
        self.appended: list[wal_pb2.WalRecord] = []
        #: Checkpoints completed since ``open``.
        self.checkpoints = 0
        #: Written but not durable yet: the snapshot of a checkpoint not synced yet, then appends.
        self._snapshot: list[wal_pb2.WalRecord] | None = None
        self._tail: list[wal_pb2.WalRecord] = []
        self._state = "new"
        self._failure: LogStopped | None = None
        self._stopped_event = asyncio.Event()
        #: Set while durability is not held back; also set by a stop, so waiters wake and fail.
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._trap: tuple[Callable[[wal_pb2.WalRecord], bool], str, bool] | None = None

    # ----------------------------------------------------------------- the TxLog contract

    async def open(self) -> list[wal_pb2.WalRecord]:
        """The store's durable records; RuntimeError when already opened, LogLocked when another
        open log holds the store (what the file WAL's lock reports)."""
        if self._state != "new":
            raise RuntimeError(f"memory log is already {self._state}")
        if self.store.holder is not None:
            raise LogLocked("memory log store is held by another open log")
        self.store.holder = self
        self._state = "open"
        return [_copy(record) for record in self.store.records]

    async def append(self, record: wal_pb2.WalRecord, *, force: bool = False) -> None:
        self._check_usable()
        copy = _copy(record)
        if self._trap is not None and self._trap[0](copy):
            _, reason, durable = self._trap
            self._persist()  # the log stops exactly here: what came before is on disk
            if durable:
                self._tail.append(copy)
                self.appended.append(copy)
            self.stop(reason, durable=durable)
            self._check_usable()
        self._tail.append(copy)
        self.appended.append(copy)
        if force:
            await self._sync()

    async def checkpoint(self, snapshot: Iterable[wal_pb2.WalRecord | Encoded]) -> None:
        self._check_usable()
        # Written in place at once (what was written before is superseded); durable at the sync.
        self._snapshot = [_copy(decoded(item)) for item in snapshot]
        self._tail = []
        await self._sync()
        self.checkpoints += 1

    async def watch(self, interval: float) -> LogStopped:
        """Wait until the log stops and return why; ``interval`` is unused (memory cannot vanish)."""
        if self._state == "new":
            raise RuntimeError("memory log is new, not open")
        await self._stopped_event.wait()
        assert self._failure is not None
        return self._failure

    @property
    def stopped(self) -> LogStopped | None:
        return self._failure

    async def close(self) -> None:
        """Make what was written durable (even while held: closing is the orderly end) and release
        the store. A stopped log is only released; a second close does nothing."""
        if self._state in ("new", "closed"):
            return
        if self._failure is None:
            self._persist()
        self._release()
        self._flowing.set()  # forced appends still held are durable now: let them return

    # ----------------------------------------------------------------- test controls

    def hold(self) -> None:
        """Hold durability back: forced appends and checkpoints wait until ``release``."""
        if self._failure is None:
            self._flowing.clear()

    def release(self) -> None:
        """Let the held forced appends and checkpoints complete."""
        self._flowing.set()

    def stop(self, reason: str, *, durable: bool = False) -> None:
        """Stop the log for good with ``LogStopped(reason)``: waiters and later calls raise it.

        ``durable`` says whether what was written but not yet synced reached the disk anyway
        (a failed fsync leaves that unknown, so tests cover both); by default it is lost.
        """
        if self._failure is not None:
            return
        if durable:
            self._persist()
        else:
            self._snapshot, self._tail = None, []
        self._failure = LogStopped(reason)
        self._stopped_event.set()
        self._flowing.set()

    def stop_at(
        self, match: Callable[[wal_pb2.WalRecord], bool], reason: str, *, durable: bool = False
    ) -> None:
        """Stop the log exactly at the first record ``match`` accepts: its append raises
        ``LogStopped(reason)``, everything written before it is durable, and the record itself
        is durable only with ``durable`` (an fsync that failed having written it)."""
        self._trap = (match, reason, durable)

    def crash(self) -> None:
        """The process dies with the machine: only the durable records stay in the store (what
        was written but not synced is lost, the worst case), the store is released, and this log
        answers nothing more (``LogStopped``), so a new log can open the store."""
        self.stop("the process crashed")
        self._release()

    # ----------------------------------------------------------------- internals

    async def _sync(self) -> None:
        await self._flowing.wait()
        if self._failure is not None:
            raise LogStopped(self._failure.reason)
        self._persist()  # nothing left to do when ``close`` made it durable meanwhile

    def _persist(self) -> None:
        if self._snapshot is not None:
            self.store.records = self._snapshot
            self._snapshot = None
        self.store.records.extend(self._tail)
        self._tail = []

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise LogStopped(self._failure.reason)
        if self._state != "open":
            raise RuntimeError(f"memory log is {self._state}, not open")

    def _release(self) -> None:
        self._state = "closed"
        if self.store.holder is self:
            self.store.holder = None
