"""``EtcdLog``: the transaction log of one coordinator replica, kept in etcd.

Every record is a key (see ``keys``); a record is durable once etcd acknowledged the write, that
is once a quorum of members has it. Each write is one etcd transaction guarded by
compare-and-set: the replica's incarnation tag must still be on its lease-held key, and every
transaction already logged must still be owned by this replica. A replica whose lease expired,
or whose transactions another replica took over, therefore cannot write anything more about
them: the write fails and the log stops (``LogStopped``), as the file WAL stops on a failed
fsync, and the coordinator exits to be restarted.

Group commit: appends queue; a forced append writes everything queued in as few etcd
transactions as etcd's per-transaction operation limit allows, and forced appends arriving while
a write is in flight share the next one. Unforced records are written behind, right after the
append, so other replicas know a transaction (to take it over) well before its decision.

While etcd cannot answer (no quorum, every member unreachable) forced writes retry until it
answers again, so nothing decided is lost and phase two resumes by itself; new transactions are
refused meanwhile with ``UnavailableError``. etcd gives every lease a fresh TTL when a new leader
is elected, so a replica's lease outlives a quorum loss.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.etcd.client import connect, is_outage, read_prefix
from xatm.coordinator.txlog.etcd.keys import Keys
from xatm.coordinator.txlog.etcd.metrics import (
    ETCD_CAS_CONFLICTS,
    ETCD_LEASE_RENEWALS,
    ETCD_METRICS,
    ETCD_WRITE_DURATION,
)
from xatm.coordinator.txlog.interface import Encoded, LogLocked, LogStopped, TxLog, decoded
from xatm.participant.errors import UnavailableError

__all__ = ["EtcdLog", "ReplicaEntry"]

log = logging.getLogger("xatm.coordinator.etcd")

#: Operations per etcd transaction at most: etcd refuses more than 128 (--max-txn-ops).
MAX_OPS = 120
#: Seconds between retries of a write while etcd cannot answer (monotonic).
RETRY_DELAY = 0.2
#: Records waiting for etcd before an append waits for the write: while etcd cannot be reached,
#: phase-two retries would otherwise queue one record each for as long as the outage lasts.
MAX_QUEUED = 10_000


@dataclass
class _Queued:
    seq: int
    gtrid: str
    key: bytes
    value: bytes


@dataclass
class _Group:
    """The operations on one transaction's keys ("" for none), written in one etcd transaction;
    ``fenced`` when it was logged before, so its owner key must still be this replica's."""

    gtrid: str
    ops: list[Any]
    fenced: bool


@dataclass(frozen=True)
class ReplicaEntry:
    """A replica as etcd knows it: ``live`` while its lease holds; ``published`` is what it put
    under ``address/`` (b"" when nothing)."""

    name: str
    live: bool
    published: bytes
    #: Transactions it owns.
    owned: int


def _range_end(prefix: bytes) -> bytes:
    """The end of the key range of every key starting with ``prefix`` (which ends in "/")."""
    return prefix[:-1] + bytes([prefix[-1] + 1])


def _parse(value: bytes) -> wal_pb2.WalRecord:
    record = wal_pb2.WalRecord()
    record.ParseFromString(value)
    return record


def _ordered(kvs: Sequence[Any]) -> list[Any]:
    return sorted(kvs, key=lambda kv: (kv.mod_revision, kv.key))


class EtcdLog(TxLog):
    """The ``TxLog`` of replica ``replica`` (a node id) in the etcd cluster at ``endpoints``.

    ``lease_ttl`` (s) is how long the replica stays owner of its transactions after its last
    keep-alive (another replica takes them over after that); ``timeout`` (s) bounds each etcd
    call. ``prefix`` separates coordinator clusters sharing one etcd. ``wait_for_holder`` (s) is
    how long ``open`` waits for another holder of the replica id to go (a process of the same
    replica killed less than a TTL ago still holds it).
    """

    def __init__(
        self,
        endpoints: list[tuple[str, int]],
        replica: str,
        *,
        prefix: str = "/xatm/",
        lease_ttl: int = 5,
        timeout: float = 2.0,
        wait_for_holder: float = 0.0,
    ):
        ETCD_METRICS.publish()
        self.endpoints = endpoints
        self.replica = replica
        self.keys = Keys(prefix, replica)
        self.lease_ttl = lease_ttl
        self.timeout = timeout
        self.wait_for_holder = wait_for_holder
        self.client: Any = None
        self._lease: Any = None
        self._tag = b""
        self._state = "new"
        self._failure: LogStopped | None = None
        #: Resolved with the reason once the log stops (made at open, inside the event loop).
        self._stopped: asyncio.Future[LogStopped] = asyncio.Future()
        self._seq = itertools.count(1)
        self._queue: list[_Queued] = []
        self._durable = 0
        self._write_lock = asyncio.Lock()
        #: Transactions this replica owns in etcd (an owner key exists for each).
        self._owned: set[str] = set()
        #: Transactions with records written since the last checkpoint.
        self._dirty: set[str] = set()
        #: This replica's audit keys and payloads, oldest first.
        self._audits: list[tuple[bytes, bytes]] = []
        #: False from a failed etcd call until the next successful one.
        self._available = True
        self._keepalive: asyncio.Task[None] | None = None
        self._behind: asyncio.Task[None] | None = None
        #: Set while a checkpoint is being written: flushes wait, so that no record appended
        #: after the snapshot was taken reaches etcd before it (it would be overwritten).
        self._barrier: asyncio.Future[None] | None = None

    @property
    def where(self) -> str:
        return ",".join(f"{host}:{port}" for host, port in self.endpoints)

    @property
    def tag(self) -> bytes:
        """This incarnation's tag on the replica key (the lease id in hex)."""
        return self._tag

    @property
    def available(self) -> bool:
        """Whether the last etcd call answered (False while etcd has no quorum or is unreachable)."""
        return self._available

    # ----------------------------------------------------------------- the TxLog contract

    async def open(self) -> list[wal_pb2.WalRecord]:
        """Register this replica under a new lease and return the records of the transactions
        it owns, and its audit records, in write order.

        Raises LogLocked when a live process holds this replica id (after ``wait_for_holder``),
        ConnectionError when etcd cannot be reached within ``timeout``.
        """
        if self._state != "new":
            raise RuntimeError(f"etcd log is already {self._state}")
        self._stopped = asyncio.get_running_loop().create_future()
        self.client = connect(self.endpoints, self.timeout)
        give_up = time.monotonic() + self.wait_for_holder
        try:
            while True:
                try:
                    records = await self._register()
                    break
                except LogLocked:
                    if time.monotonic() >= give_up:
                        raise
                    await asyncio.sleep(RETRY_DELAY)
        except LogLocked:
            await self.client.close()
            raise
        except Exception as err:
            await self.client.close()
            if is_outage(err):
                raise ConnectionError(f"etcd at {self.where} cannot be reached: {err}") from None
            raise
        self._state = "open"
        self._keepalive = asyncio.get_running_loop().create_task(self._keep_alive())
        return records

    async def append(self, record: wal_pb2.WalRecord, *, force: bool = False) -> None:
        """Queue ``record``; with ``force`` return once it (and all queued before it) is in etcd.

        Raises UnavailableError for a begin record while etcd cannot answer (nothing else is
        refused: decisions and results wait for etcd instead), LogStopped once the log stopped.
        """
        self._check_usable()
        if record.WhichOneof("body") == "begin" and not self._available:
            raise UnavailableError(
                f"etcd at {self.where} has no quorum or cannot be reached: new transactions are "
                "refused until it answers again; decided transactions are finished then"
            )
        value = record.SerializeToString()
        seq = next(self._seq)
        name = f"r{self._tag.decode()}.{seq:012x}"
        if record.WhichOneof("body") == "audit":
            key = self.keys.audit(name)
            self._audits.append((key, value))
            self._queue.append(_Queued(seq, "", key, value))
        else:
            self._queue.append(_Queued(seq, record.gtrid, self.keys.record(record.gtrid, name), value))
            self._dirty.add(record.gtrid)
        if force or len(self._queue) > MAX_QUEUED:
            await self._flush(seq)
        elif self._behind is None:
            self._behind = asyncio.get_running_loop().create_task(self._write_behind())

    async def checkpoint(self, snapshot: Iterable[wal_pb2.WalRecord | Encoded]) -> None:
        """Replace this replica's records by ``snapshot``: each transaction written since the last
        checkpoint is rewritten as its snapshot record, transactions left out (history past
        retention) leave etcd, audit records beyond those kept are deleted.

        Atomic per transaction (its deletions and its snapshot share one etcd transaction), not
        across transactions: replay is per transaction, so a checkpoint cut short leaves each
        transaction either as it was or as the snapshot says.
        """
        self._check_usable()
        # What the snapshot covers is fixed now, before any wait: the records queued so far, the
        # transactions written since the last checkpoint, those owned. Records appended from here
        # on are written after the snapshot (the barrier holds flushes back), so none is lost.
        superseded, self._queue = self._queue, []
        dirty, self._dirty = self._dirty, set()
        owned = set(self._owned)
        previous, self._barrier = self._barrier, asyncio.get_running_loop().create_future()
        barrier = self._barrier
        try:
            if previous is not None:
                await asyncio.shield(previous)
            async with self._write_lock:
                self._check_usable()
                await self._write_snapshot(snapshot, dirty, owned)
        except LogStopped:
            raise
        except BaseException:
            # Not written: what the snapshot was to replace is written as logged instead.
            self._queue = superseded + self._queue
            self._dirty |= dirty
            raise
        else:
            if superseded:
                self._durable = max(self._durable, superseded[-1].seq)
        finally:
            if self._barrier is barrier:
                self._barrier = None
            barrier.set_result(None)

    async def _write_snapshot(
        self, snapshot: Iterable[wal_pb2.WalRecord | Encoded], dirty: set[str], owned: set[str]
    ) -> None:
        by_gtrid: dict[str, list[wal_pb2.WalRecord]] = {}
        audits: list[bytes] = []
        for record in map(decoded, snapshot):
            if record.WhichOneof("body") == "audit":
                audits.append(record.SerializeToString())
            else:
                by_gtrid.setdefault(record.gtrid, []).append(record)
        groups: list[_Group] = []
        for gtrid, records in by_gtrid.items():
            if gtrid in owned and gtrid not in dirty:
                continue  # what etcd holds for it replays to this snapshot already
            # etcd refuses a put inside a range deleted in the same transaction: the logged
            # records ("r...") go, the snapshot ("s0000"...) overwrites the previous one.
            ops = [
                self._op("delete", self.keys.record(gtrid, "r"), end=self.keys.record(gtrid, "s")),
                self._op(
                    "delete",
                    self.keys.record(gtrid, f"s{len(records):04d}"),
                    end=self.keys.record(gtrid, "t"),
                ),
            ]
            for i, record in enumerate(records):
                ops.append(self._op("put", self.keys.record(gtrid, f"s{i:04d}"), record.SerializeToString()))
            if gtrid not in owned:
                ops.append(self._op("put", self.keys.owner(gtrid), b""))
            groups.append(_Group(gtrid, ops, fenced=gtrid in owned))
        gone = owned - by_gtrid.keys()
        for gtrid in gone:
            records_prefix = self.keys.records(gtrid)
            ops = [
                self._op("delete", records_prefix, end=_range_end(records_prefix)),
                self._op("delete", self.keys.owner(gtrid)),
            ]
            groups.append(_Group(gtrid, ops, fenced=True))
        groups += self._audit_groups(audits)
        await self._write_groups(groups)
        self._owned = (self._owned - gone) | by_gtrid.keys()

    async def watch(self, interval: float) -> LogStopped:
        """Wait until the log stops (lease lost, ownership taken, closed under a writer) and
        return why; ``interval`` is unused: the lease keep-alive notices a vanished replica key."""
        if self._state == "new":
            raise RuntimeError("etcd log is new, not open")
        return await self._stopped

    @property
    def stopped(self) -> LogStopped | None:
        return self._failure

    async def close(self) -> None:
        """Write what is queued, revoke the lease (other replicas may then take over what this
        one leaves unfinished) and disconnect. A stopped log only disconnects."""
        if self._state in ("new", "closed"):
            return
        if self._failure is None:
            try:
                await asyncio.wait_for(self._flush(self._last_seq()), 5 * self.timeout)
                await asyncio.wait_for(self._lease.revoke(), self.timeout)
            except (TimeoutError, LogStopped) as err:
                log.warning("etcd log of %s closed without a final write: %s", self.replica, err)
            except Exception as err:
                if not is_outage(err):
                    raise
                log.warning("etcd log of %s closed without a final write: %s", self.replica, err)
        self._state = "closed"
        for task in (self._keepalive, self._behind):
            if task is not None:
                task.cancel()
        await self.client.close()

    # ----------------------------------------------------------------- takeover

    async def orphans(self) -> dict[str, list[str]]:
        """Transactions of replicas that logged but hold no lease now: {replica: [gtrid, ...]}.

        A dead replica with nothing left is struck off the member list. Raises the client's
        error when etcd cannot answer.
        """
        self._check_usable()
        lives = await read_prefix(self.client, self.keys.lives, keys_only=True)
        live = {self.keys.tail(kv.key, self.keys.lives) for kv in lives}
        members = await read_prefix(self.client, self.keys.members, keys_only=True)
        found: dict[str, list[str]] = {}
        for kv in members:
            dead = self.keys.tail(kv.key, self.keys.members)
            if dead in live or dead == self.replica:
                continue
            prefix = self.keys.owned(dead)
            owned = await read_prefix(self.client, prefix, keys_only=True)
            if owned:
                found[dead] = [self.keys.tail(o.key, prefix) for o in owned]
                continue
            t = self.client.transactions
            await self.client.transaction(
                compare=[t.version(self.keys.live(dead)) == 0], success=[t.delete(kv.key)], failure=[]
            )
        return found

    async def claim(self, dead: str, gtrid: str) -> list[wal_pb2.WalRecord] | None:
        """Take ``gtrid`` over from replica ``dead`` (compare-and-set: only while ``dead`` holds no
        lease and still owns it, and this replica still holds its own) and return its records in
        write order; None when another replica claimed it first or ``dead`` came back."""
        self._check_usable()
        t = self.client.transactions
        async with self._write_lock:
            ok, replies = await self.client.transaction(
                compare=[
                    t.version(self.keys.live(dead)) == 0,
                    t.version(self.keys.owner(gtrid, dead)) > 0,
                    t.value(self.keys.live()) == self._tag,
                ],
                success=[
                    t.delete(self.keys.owner(gtrid, dead)),
                    t.put(self.keys.owner(gtrid), b""),
                    t.get(self.keys.records(gtrid), _range_end(self.keys.records(gtrid))),
                ],
                failure=[],
            )
            if not ok:
                ETCD_CAS_CONFLICTS.labels(op="claim").inc()
                return None
            self._owned.add(gtrid)
        kvs = [kv for _, kv in replies[2]]
        return [_parse(kv.value) for kv in _ordered(kvs)]

    # ----------------------------------------------------------------- the replica directory

    async def publish(self, value: bytes) -> None:
        """Put ``value`` (where this replica serves clients) under its lease, beside its replica
        key, so that it disappears with the replica. Raises LogStopped once the log stopped, the
        client's error when etcd cannot answer."""
        self._check_usable()
        t = self.client.transactions
        ok, _ = await self.client.transaction(
            compare=[t.value(self.keys.live()) == self._tag],
            success=[t.put(self.keys.address(), value, lease=self._lease.id)],
            failure=[],
        )
        if not ok:
            raise LogStopped(f"replica {self.replica} lost its etcd lease before publishing its address")

    async def replicas(self, *, count: bool = False) -> list[ReplicaEntry]:
        """Every replica that is alive or still owns transactions, by name, with what it
        published (b"" when nothing) and, with ``count`` (a read of every owner key), how many
        transactions it owns (else 0). Raises the client's error when etcd cannot answer."""
        self._check_usable()
        lives = await read_prefix(self.client, self.keys.lives, keys_only=True)
        live = {self.keys.tail(kv.key, self.keys.lives) for kv in lives}
        members = await read_prefix(self.client, self.keys.members, keys_only=True)
        published = {
            self.keys.tail(kv.key, self.keys.addresses): kv.value
            for kv in await read_prefix(self.client, self.keys.addresses)
        }
        owned: dict[str, int] = {}
        for kv in await read_prefix(self.client, self.keys.all_owners, keys_only=True) if count else []:
            owner = self.keys.tail(kv.key, self.keys.all_owners).partition("/")[0]
            owned[owner] = owned.get(owner, 0) + 1
        names = live | {self.keys.tail(kv.key, self.keys.members) for kv in members}
        return [
            ReplicaEntry(name, name in live, published.get(name, b""), owned.get(name, 0))
            for name in sorted(names)
        ]

    async def owner_of(self, gtrid: str) -> str | None:
        """The replica that owns ``gtrid`` in etcd, or None when none does (never logged, or
        gone past its history retention). Raises the client's error when etcd cannot answer."""
        self._check_usable()
        if gtrid in self._owned:
            return self.replica
        members = await read_prefix(self.client, self.keys.members, keys_only=True)
        names = [self.keys.tail(kv.key, self.keys.members) for kv in members]
        if not names:
            return None
        t = self.client.transactions
        _, replies = await self.client.transaction(
            compare=[], success=[t.get(self.keys.owner(gtrid, name)) for name in names], failure=[]
        )
        return next((name for name, found in zip(names, replies, strict=True) if found), None)

    async def others(self) -> tuple[dict[str, str], list[wal_pb2.WalRecord]]:
        """The transactions other replicas own: ({gtrid: owner}, their records in write order),
        read at one revision each. Raises the client's error when etcd cannot answer."""
        self._check_usable()
        owners: dict[str, str] = {}
        for kv in await read_prefix(self.client, self.keys.all_owners, keys_only=True):
            owner, _, gtrid = self.keys.tail(kv.key, self.keys.all_owners).partition("/")
            if owner != self.replica:
                owners[gtrid] = owner
        kvs = [
            kv
            for kv in await read_prefix(self.client, self.keys.all_records)
            if self.keys.tail(kv.key, self.keys.all_records).rpartition("/")[0] in owners
        ]
        return owners, [_parse(kv.value) for kv in _ordered(kvs)]

    async def records_of(self, gtrid: str) -> list[wal_pb2.WalRecord]:
        """The records of ``gtrid`` in etcd, in write order ([] when it has none)."""
        self._check_usable()
        return [_parse(kv.value) for kv in _ordered(await read_prefix(self.client, self.keys.records(gtrid)))]

    async def other_audits(self) -> list[wal_pb2.WalRecord]:
        """The audit records other replicas logged, in write order."""
        self._check_usable()
        mine = self.keys.audits()
        kvs = [
            kv for kv in await read_prefix(self.client, self.keys.all_audits) if not kv.key.startswith(mine)
        ]
        return [_parse(kv.value) for kv in _ordered(kvs)]

    # ----------------------------------------------------------------- internals

    async def _register(self) -> list[wal_pb2.WalRecord]:
        self._lease = await self.client.lease(self.lease_ttl)
        self._tag = f"{self._lease.id:x}".encode()
        t = self.client.transactions
        ok, replies = await self.client.transaction(
            compare=[t.version(self.keys.live()) == 0],
            success=[
                t.put(self.keys.live(), self._tag, lease=self._lease.id),
                t.put(self.keys.member(), b""),
            ],
            failure=[t.get(self.keys.live())],
        )
        if not ok:
            await self._lease.revoke()
            holder = replies[0][0][0].decode() if replies and replies[0] else "?"
            raise LogLocked(
                f"replica {self.replica} in etcd is held by another live process (lease {holder}); "
                f"it is released when that process stops or {self.lease_ttl}s after it died"
            )
        owned = await read_prefix(self.client, self.keys.owned(), keys_only=True)
        self._owned = {self.keys.tail(kv.key, self.keys.owned()) for kv in owned}
        everything = await read_prefix(self.client, self.keys.all_records)
        mine = [
            kv
            for kv in everything
            if self.keys.tail(kv.key, self.keys.all_records).rpartition("/")[0] in self._owned
        ]
        audits = _ordered(list(await read_prefix(self.client, self.keys.audits())))
        self._audits = [(kv.key, kv.value) for kv in audits]
        return [_parse(kv.value) for kv in _ordered(mine + audits)]

    def _op(self, kind: str, key: bytes, value: bytes = b"", end: bytes | None = None) -> Any:
        """An etcd transaction operation: "put" ``key`` = ``value``, or "delete" ``key`` (up to
        ``end``, exclusive, when given)."""
        t = self.client.transactions
        if kind == "put":
            return t.put(key, value)
        return t.delete(key, end)

    def _audit_groups(self, kept: list[bytes]) -> list[_Group]:
        """Delete the audit records a checkpoint no longer keeps (all, and write ``kept`` anew,
        if they are not the newest of this replica's in order); in groups etcd accepts."""
        mine = [value for _, value in self._audits]
        cut = len(mine) - len(kept)
        if cut >= 0 and kept == mine[cut:]:
            gone, self._audits = self._audits[:cut], self._audits[cut:]
            ops = [self._op("delete", key) for key, _ in gone]
        else:
            ops = [self._op("delete", key) for key, _ in self._audits]
            self._audits = []
            for value in kept:
                key = self.keys.audit(f"r{self._tag.decode()}.{next(self._seq):012x}")
                self._audits.append((key, value))
                ops.append(self._op("put", key, value))
        step = MAX_OPS // 2
        return [_Group("", ops[i : i + step], fenced=False) for i in range(0, len(ops), step)]

    async def _write_behind(self) -> None:
        """Write unforced records soon after they were appended, so that other replicas see a
        transaction (and can take it over) before its decision; a forced append that comes
        first takes them along instead."""
        try:
            while self._queue and self._failure is None and self._state == "open":
                await asyncio.sleep(0)  # the appends of this moment join the write
                await self._flush(self._last_seq())
        except (LogStopped, RuntimeError):
            pass  # the stop is reported by ``watch``; a closed log wrote its queue at close
        finally:
            self._behind = None

    def _last_seq(self) -> int:
        return self._queue[-1].seq if self._queue else self._durable

    async def _flush(self, seq: int) -> None:
        """Return once every record up to ``seq`` is in etcd (group commit: one writer at a time
        takes everything queued)."""
        while self._durable < seq:
            if self._barrier is not None:  # a checkpoint writes first: wait for it
                await asyncio.shield(self._barrier)
                continue
            async with self._write_lock:
                self._check_usable()
                if self._durable >= seq or self._barrier is not None:
                    continue  # done, or wait for the checkpoint at the top
                if not self._queue:
                    raise RuntimeError(f"etcd log: record {seq} is neither queued nor written")
                batch, self._queue = self._queue, []
                groups: dict[str, _Group] = {}
                for item in batch:
                    group = groups.get(item.gtrid)
                    if group is None:
                        owned = item.gtrid in self._owned
                        group = groups[item.gtrid] = _Group(item.gtrid, [], fenced=owned)
                        if item.gtrid and not owned:
                            group.ops.append(self._op("put", self.keys.owner(item.gtrid), b""))
                            self._owned.add(item.gtrid)
                    group.ops.append(self._op("put", item.key, item.value))
                await self._write_groups(list(groups.values()))
                self._durable = batch[-1].seq

    async def _write_groups(self, groups: list[_Group]) -> None:
        """Write ``groups`` in as few etcd transactions as the operation limit allows, a group
        never split."""
        chunk: list[_Group] = []
        size = 0
        for group in groups:
            if not group.ops:
                continue
            if chunk and size + len(group.ops) + 1 > MAX_OPS:
                await self._write(chunk)
                chunk, size = [], 0
            chunk.append(group)
            size += len(group.ops) + 1
        if chunk:
            await self._write(chunk)

    async def _write(self, chunk: list[_Group]) -> None:
        """One etcd transaction, fenced; retried while etcd cannot answer (the operations are
        idempotent puts and deletes, so a retry of a write that was applied after all is harmless).

        Raises LogStopped when a compare fails: this replica lost its lease or a transaction."""
        t = self.client.transactions
        compare = [t.value(self.keys.live()) == self._tag]
        compare += [t.version(self.keys.owner(group.gtrid)) > 0 for group in chunk if group.fenced]
        success = [op for group in chunk for op in group.ops]
        started = time.monotonic()
        while True:
            self._check_usable()
            try:
                ok, _ = await self.client.transaction(compare=compare, success=success, failure=[])
            except Exception as err:
                if not is_outage(err):
                    raise
                self._set_available(False, err)
                await asyncio.sleep(RETRY_DELAY)
                continue
            self._set_available(True)
            ETCD_WRITE_DURATION.observe(time.monotonic() - started)
            if not ok:
                ETCD_CAS_CONFLICTS.labels(op="write").inc()
                self._stop(
                    f"replica {self.replica} no longer owns its transactions in etcd (its lease "
                    "expired or another replica took them over); it acts on none of them any more"
                )
                self._check_usable()
            return

    async def _keep_alive(self) -> None:
        """Renew the lease every third of its TTL; stop the log once etcd says it expired."""
        while self._failure is None:
            await asyncio.sleep(self.lease_ttl / 3)
            started = time.monotonic()
            try:
                reply = await self._lease.refresh()
            except Exception as err:
                if not is_outage(err):
                    log.exception("etcd lease keep-alive of %s failed", self.replica)
                ETCD_LEASE_RENEWALS.labels(result="failed").inc()
                self._set_available(False, err)
                continue
            ETCD_LEASE_RENEWALS.labels(result="ok" if reply is None or reply.TTL > 0 else "expired").inc()
            self._set_available(True)
            if reply is not None and reply.TTL <= 0:
                self._stop(
                    f"the etcd lease of replica {self.replica} expired (no keep-alive for "
                    f"{self.lease_ttl}s, last try took {time.monotonic() - started:.1f}s); other "
                    "replicas take its transactions over"
                )

    def _set_available(self, available: bool, err: BaseException | None = None) -> None:
        if available != self._available:
            if available:
                log.warning("etcd at %s answers again", self.where)
            else:
                log.error("etcd at %s cannot answer (%s); new transactions are refused", self.where, err)
        self._available = available

    def _stop(self, reason: str) -> None:
        if self._failure is None:
            self._failure = LogStopped(reason)
            self._stopped.set_result(self._failure)

    def _check_usable(self) -> None:
        if self._failure is not None:
            raise LogStopped(self._failure.reason)
        if self._state != "open":
            raise RuntimeError(f"etcd log is {self._state}, not open")
