"""``FileWal``: the embedded write-ahead log, the default ``TxLog`` backend."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.file.framing import (
    SEGMENT_HEADER_SIZE,
    SegmentHeader,
    check_payload,
    encode_segment_header,
)
from xatm.coordinator.txlog.file.lock import DirLock
from xatm.coordinator.txlog.file.metrics import WAL_METRICS, WAL_RECORDS, WAL_TORN_TAIL
from xatm.coordinator.txlog.file.scan import LogScan, Span, SpanRecords, Tail, TornTail, close_spans
from xatm.coordinator.txlog.file.segment import (
    TEMP_SUFFIX,
    Hook,
    create_segment,
    fsync_dir,
    fsync_fd,
    list_segments,
    write_all,
)
from xatm.coordinator.txlog.file.writer import CheckpointBody, SegmentWriter, write_checkpoint_body
from xatm.coordinator.txlog.interface import Encoded, LogMissing, LogStopped, TxLog

__all__ = ["DEFAULT_MAX_QUEUED", "DEFAULT_SEGMENT_BYTES", "FileWal"]

log = logging.getLogger(__name__)

DEFAULT_SEGMENT_BYTES = 64 << 20
DEFAULT_MAX_QUEUED = 10_000
MIN_SEGMENT_BYTES = 1024
#: Written, synced and removed at start-up: a disk that cannot take this much refuses the start
#: instead of stopping the log at its first few writes.
PROBE_BYTES = 64 << 10
PROBE_NAME = "write-probe.tmp"


@dataclass(slots=True)
class _Append:
    payload: bytes
    body: str
    force: bool
    future: asyncio.Future[None] | None


@dataclass(slots=True, eq=False)
class _Mark:
    """Where a checkpoint was taken: appends after it are kept to follow its snapshot."""

    #: Index of the first record after the mark in the writer's kept records (set by the writer).
    start: int = 0


@dataclass(slots=True)
class _Install:
    """Install the checkpoint taken at ``mark`` (or give it up: no ``body``; ``error`` stops the log)."""

    mark: _Mark
    body: CheckpointBody | None
    future: asyncio.Future[None] | None
    error: Exception | None = None


@dataclass(slots=True)
class _Close:
    future: asyncio.Future[None]


@dataclass(slots=True)
class _Check:
    """Wakes the writer while idle so it checks that the log's files are still in place."""


_Op = _Append | _Mark | _Install | _Close | _Check


def _body(record: wal_pb2.WalRecord) -> str:
    return record.WhichOneof("body") or "none"


class FileWal(TxLog):
    """Segmented append-only files in ``data_dir/wal``, locked by ``data_dir/LOCK``.

    Ordering: every call puts one operation on a FIFO queue that a single writer thread
    drains, so records land in the order the calls started, and a checkpoint sits exactly
    where it was called. Appends made during one pass of the event loop reach the queue
    together, at the end of the pass (one lock and one wake-up of the writer for all of them).

    Group commit: the writer takes everything queued, frames it into one write, and if any
    of it was appended with ``force`` issues one fsync that serves every waiter in the batch;
    unforced records ride along. While that fsync runs, new calls queue up for the next batch.

    Checkpoints do not hold appends up: the snapshot is serialised, written and synced beside
    the log by a worker thread while appends go on into the current segment, which keeps what
    is appended meanwhile. Only then does the writer, in order, append those records to the
    snapshot's file, sync it and rename it to be the new base segment (a few small writes and
    fsyncs), and delete the older segments.

    ``append(force=False)`` returns once the record is queued: it reaches the OS within the
    writer's next pass and the disk with the next fsync (a forced append, a checkpoint, a
    rollover or ``close``). It waits for the write only when more than ``max_queued`` records
    are pending, which bounds memory under a slow disk.

    The log stops for good (``LogStopped``) when a write or fsync fails (after a failed fsync
    the page cache can no longer be trusted, so it is never retried), or when the open segment or
    the lock file is no longer the file at its name (deleted, replaced, its directory removed):
    checked before every batch and, through ``watch``, while idle. Waiters get the error, later
    calls raise it, and the coordinator must restart, which replays what reached the disk.

    ``failpoint``, when given, is called with a failpoint's name where the log may be made to fail
    or stall (``wal.before_fsync``, before each fsync); the coordinator passes its failpoints.

    With ``must_exist`` (the data dir shows that a log was created in it), ``open()`` refuses a
    missing or empty log with ``LogMissing`` instead of starting a new one.
    """

    def __init__(
        self,
        data_dir: Path | str,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        node: str = "",
        max_queued: int = DEFAULT_MAX_QUEUED,
        must_exist: bool = False,
        failpoint: Hook | None = None,
    ) -> None:
        if segment_bytes < MIN_SEGMENT_BYTES:
            raise ValueError(f"segment_bytes must be at least {MIN_SEGMENT_BYTES}, got {segment_bytes}")
        WAL_METRICS.publish()
        self.data_dir = Path(data_dir)
        self.wal_dir = self.data_dir / "wal"
        #: What ``open()`` cut off the end of the log, if anything.
        self.torn_tail: TornTail | None = None
        self._segment_bytes = segment_bytes
        self._max_queued = max_queued
        self._must_exist = must_exist
        self._hook = failpoint
        self._lock = DirLock(self.data_dir, node)
        self._cond = threading.Condition()
        self._queue: list[_Op] = []
        self._state = "new"
        self._failure: LogStopped | None = None
        self._failed: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writer: SegmentWriter | None = None
        self._thread: threading.Thread | None = None
        #: Appended during this loop pass, not yet handed to the writer; the loop hands them
        #: over at ``_handoff``'s next turn.
        self._pending: list[_Append] = []
        self._handoff: asyncio.AbstractEventLoop | None = None
        self._checkpoints = 0
        # The writer's own (its thread only): the checkpoints taken and not yet installed, and
        # the records written since the oldest of them, which go after its snapshot.
        self._marks: list[_Mark] = []
        self._kept: list[bytes] = []

    @property
    def fsync_count(self) -> int:
        """fsyncs the writer issued since ``open()`` (records, new segments, directory entries).

        Group commit keeps this far below the number of forced appends under concurrency.
        """
        return self._writer.fsync_count if self._writer else 0

    async def open(self) -> Iterable[wal_pb2.WalRecord]:
        """Check the whole log (checksums, segment chain, HEAD), cut a torn tail, start the writer;
        returns the records, read and parsed one at a time as they are iterated (once).

        The log is usable at once: iterating reads only what was there at open. Damage found by
        the check raises here; a record whose checksum holds but which does not parse raises
        ``LogCorrupt`` from the iteration.
        """
        if self._state != "new":
            raise RuntimeError(f"write-ahead log {self.wal_dir} is already {self._state}")
        self._state = "opening"
        try:
            spans = await asyncio.to_thread(self._open_sync)
        except BaseException:
            self._state = "new"
            raise
        self._loop = asyncio.get_running_loop()
        self._failed = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="xatm-wal-writer", daemon=True)
        self._thread.start()
        self._state = "open"
        return SpanRecords(spans)

    async def append(self, record: wal_pb2.WalRecord, *, force: bool = False) -> None:
        payload = check_payload(record.SerializeToString())
        self._check_usable()
        loop = asyncio.get_running_loop()
        wait = force or len(self._pending) + len(self._queue) >= self._max_queued
        future = loop.create_future() if wait else None
        self._pending.append(_Append(payload, _body(record), force, future))
        if self._handoff is not loop:
            if self._handoff is not None:  # scheduled on a loop that is gone: hand over now
                self._hand_off()
            self._handoff = loop
            loop.call_soon(self._hand_off)
        if future is not None:
            await future

    def _hand_off(self) -> None:
        """Give the writer everything appended during this loop pass, in one go."""
        self._handoff = None
        with self._cond:
            self._move_pending()
            self._cond.notify()

    def _move_pending(self) -> None:
        """Queue the pending appends (under ``_cond``); after a stop, fail their waiters."""
        pending, self._pending = self._pending, []
        if self._failure is not None:
            _settle([op.future for op in pending], self._failure)
        else:
            self._queue += pending

    async def checkpoint(self, snapshot: Iterable[wal_pb2.WalRecord | Encoded]) -> None:
        """Take a checkpoint here: ``snapshot`` is consumed on a worker thread (so it must not
        read anything the event loop changes meanwhile) and written beside the log while
        appends go on; then the writer installs it as the new base segment, followed by what
        was appended since this call. Returns once that is durable.

        An I/O error writing the snapshot stops the log; an error raised by ``snapshot`` itself,
        or a cancelled call, leaves the log as it was (the snapshot file is deleted).
        """
        mark = _Mark()
        self._submit(mark)
        self._checkpoints += 1
        name = f"checkpoint-{self._checkpoints}"
        work = asyncio.get_running_loop().run_in_executor(
            None, write_checkpoint_body, self.wal_dir, name, snapshot, self._hook
        )
        install = _Install(mark, None, asyncio.get_running_loop().create_future())
        try:
            install.body = await asyncio.shield(work)
        except OSError as exc:
            install.error = LogStopped(f"checkpoint to {self.wal_dir} failed: {_describe(exc)}")
        except BaseException:
            # Cancelled (the body is discarded when its thread finishes), or the snapshot failed.
            work.add_done_callback(_discard_body)
            self._give_up(mark)
            raise
        try:
            self._submit(install)
        except BaseException:
            if install.body is not None:
                install.body.discard()
            raise
        assert install.future is not None
        await install.future

    def _give_up(self, mark: _Mark) -> None:
        """Tell the writer that the checkpoint at ``mark`` will not come (nothing to do once stopped)."""
        with contextlib.suppress(LogStopped, RuntimeError):
            self._submit(_Install(mark, None, None))

    @property
    def stopped(self) -> LogStopped | None:
        return self._failure

    async def watch(self, interval: float) -> LogStopped:
        if self._failed is None:
            raise RuntimeError(f"write-ahead log {self.wal_dir} is {self._state}, not open")
        while self._failure is None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._failed.wait(), interval)
            with self._cond:
                # Queued under load too: the lock file is looked at only on these passes.
                if self._failure is None and self._state == "open":
                    self._move_pending()
                    self._queue.append(_Check())
                    self._cond.notify()
        return self._failure

    async def close(self) -> None:
        """Flush, fsync, stop the writer and release the lock; a second close does nothing.

        A stopped log is only released: nothing more can be made durable."""
        if self._state in ("new", "closed"):
            return
        future = asyncio.get_running_loop().create_future()
        try:
            if self._failure is None:
                self._submit(_Close(future))
                self._state = "closed"
                await future
        finally:
            self._state = "closed"
            if self._thread is not None:
                await asyncio.to_thread(self._thread.join)
            self._lock.release()

    def _submit(self, op: _Op) -> None:
        with self._cond:
            self._check_usable()
            self._move_pending()  # what was appended before ``op`` goes before it
            self._queue.append(op)
            self._cond.notify()

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise LogStopped(self._failure.reason)
        if self._state != "open":
            raise RuntimeError(f"write-ahead log {self.wal_dir} is {self._state}, not open")

    # --- start-up (runs in a worker thread: it reads and may truncate files) ---

    def _open_sync(self) -> list[Span]:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except OSError as exc:
            raise LogStopped(f"cannot lock {self._lock.path}: {_describe(exc)}") from exc
        try:
            if self._must_exist and not (self.wal_dir.is_dir() and list_segments(self.wal_dir)):
                raise LogMissing(
                    str(self.wal_dir), 0, "no log segments, although this data dir has held a log"
                )
            self.wal_dir.mkdir(exist_ok=True)
            scan = LogScan(self.wal_dir)
            spans = scan.verify()
            try:
                if scan.damage is not None:
                    raise scan.damage.error()
                self._probe()
                self._tidy(scan)
                tail = scan.tail or self._create_log()
                self._writer = SegmentWriter(self.wal_dir, tail, self._segment_bytes, self._hook)
            except BaseException:
                close_spans(spans)
                raise
        except OSError as exc:
            self._lock.release()
            raise LogStopped(f"cannot open {self.wal_dir}: {_describe(exc)}") from exc
        except BaseException:
            self._lock.release()
            raise
        return spans

    def _probe(self) -> None:
        """Write and sync ``PROBE_BYTES``, then remove them: a full or read-only disk fails here."""
        path = self.wal_dir / PROBE_NAME
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(fd, bytes(PROBE_BYTES), 0)
            os.fsync(fd)  # not ``fsync_fd``: no log record is synced, so no failpoint or latency sample
        finally:
            os.close(fd)
            path.unlink()

    def _tidy(self, scan: LogScan) -> None:
        """Cut a torn tail; delete what a crash left behind (temp files, superseded segments)."""
        torn = scan.torn_tail
        if torn is not None:
            log.warning(
                "write-ahead log: cutting torn tail of %s at offset %d (%d bytes: %s)",
                torn.path,
                torn.offset,
                torn.nbytes,
                torn.detail,
            )
            WAL_TORN_TAIL.inc()
            fd = os.open(torn.path, os.O_WRONLY)
            try:
                os.ftruncate(fd, torn.offset)
                fsync_fd(fd, self._hook)
            finally:
                os.close(fd)
            self.torn_tail = torn
        leftovers = [*self.wal_dir.glob(f"*{TEMP_SUFFIX}"), *scan.stale]
        for path in leftovers:
            log.info("write-ahead log: removing %s, left by an interrupted segment switch", path.name)
            path.unlink()
        if leftovers:
            fsync_dir(self.wal_dir)

    def _create_log(self) -> Tail:
        header = encode_segment_header(SegmentHeader(seq=1, seed=0, base=True))
        return Tail(1, create_segment(self.wal_dir, 1, header), SEGMENT_HEADER_SIZE, 0)

    # --- the writer thread ---

    def _run(self) -> None:
        writer = self._writer
        assert writer is not None  # opened before the thread starts
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                batch, self._queue = self._queue, []
            try:
                # The lock file only matters to the next start, so the idle check's pass suffices.
                checking = any(isinstance(op, _Check) for op in batch)
                problem = writer.vanished() or (self._lock.lost() if checking else None)
                if problem is not None:
                    raise LogStopped(problem)
                if not self._process(writer, batch):
                    return
            except Exception as exc:
                self._stop(writer, batch, exc)
                return
            del batch  # not kept alive, records and all, while the writer waits for more

    def _stop(self, writer: SegmentWriter, batch: list[_Op], exc: Exception) -> None:
        """Fail every waiter and every later call with the one ``LogStopped`` naming ``exc``."""
        if isinstance(exc, LogStopped):
            failure = exc
        elif isinstance(exc, OSError):
            failure = LogStopped(f"write to {self.wal_dir} failed: {_describe(exc)}")
        else:  # not an I/O error: a defect, so keep the traceback for whoever fixes it
            log.exception("write-ahead log: unexpected error in the writer")
            failure = LogStopped(f"write to {self.wal_dir} failed: {exc!r}")
        with self._cond:
            self._failure = failure
            batch += self._queue
            self._queue = []
        for op in batch:
            if isinstance(op, _Install) and op.body is not None:
                op.body.discard()
        _settle([getattr(op, "future", None) for op in batch], failure)
        if self._loop is not None and self._failed is not None:
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody is watching any more
                self._loop.call_soon_threadsafe(self._failed.set)
        with contextlib.suppress(OSError):  # the failure above is the one to report
            writer.close()

    def _process(self, writer: SegmentWriter, batch: list[_Op]) -> bool:
        """Handle one drained batch; False once the log is closed."""
        group: list[_Append] = []
        for op in batch:
            if isinstance(op, _Append):
                group.append(op)
                continue
            if isinstance(op, _Check):
                continue
            self._commit(writer, group)
            group = []
            if isinstance(op, _Mark):
                op.start = len(self._kept)
                self._marks.append(op)
            elif isinstance(op, _Install):
                self._install(writer, op)
            else:
                writer.sync()
                writer.close()
                _settle([op.future], None)
                return False
        self._commit(writer, group)
        return True

    def _install(self, writer: SegmentWriter, op: _Install) -> None:
        self._marks.remove(op.mark)
        kept = self._kept[op.mark.start :]
        if not self._marks:
            self._kept = []
        if op.error is not None:
            raise op.error
        if op.body is not None:
            writer.install(op.body, kept)
            _count(op.body.counts)
        _settle([op.future], None)

    def _commit(self, writer: SegmentWriter, group: list[_Append]) -> None:
        """One write for the group, and one fsync if anyone in it needs durability."""
        if not group:
            return
        payloads = [op.payload for op in group]
        writer.write(payloads)
        if self._marks:  # a checkpoint is being written: these records go after its snapshot
            self._kept += payloads
        if any(op.force for op in group):
            writer.sync()
            # Unlinked between the batch's first look and this fsync, the segment took the records
            # with it: nobody in the group may be told they are durable.
            problem = writer.vanished()
            if problem is not None:
                raise LogStopped(problem)
        _count(collections.Counter(op.body for op in group))
        _settle([op.future for op in group], None)


def _describe(exc: OSError) -> str:
    """``No space left on device (ENOSPC)``: the text people read and the name they search for."""
    name = errno.errorcode.get(exc.errno or 0)
    text = exc.strerror or str(exc)
    return f"{text} ({name})" if name else text


def _count(counts: collections.Counter[str]) -> None:
    for body, n in counts.items():
        WAL_RECORDS.labels(type=body).inc(n)


def _discard_body(work: asyncio.Future[CheckpointBody]) -> None:
    """Delete the file of a checkpoint given up while its body was being written."""
    if not work.cancelled() and work.exception() is None:
        work.result().discard()


def _settle(futures: Iterable[asyncio.Future[None] | None], exc: Exception | None) -> None:
    """Complete waiters from the writer thread: one loop wake-up per batch, not per record."""
    by_loop: dict[asyncio.AbstractEventLoop, list[asyncio.Future[None]]] = collections.defaultdict(list)
    for future in futures:
        if future is not None:
            by_loop[future.get_loop()].append(future)
    for loop, waiting in by_loop.items():
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody is waiting any more
            loop.call_soon_threadsafe(_resolve, waiting, exc)


def _resolve(futures: list[asyncio.Future[None]], exc: Exception | None) -> None:
    for future in futures:
        if not future.done():
            if exc is None:
                future.set_result(None)
            else:
                future.set_exception(exc)
