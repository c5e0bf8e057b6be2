"""The transaction-log contract, and what only the etcd log does, against a real etcd."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from tests.etcdcluster import EtcdCluster
from tests.unit import test_txlog_contract as contract
from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.etcd import EtcdLog, parse_store_url
from xatm.coordinator.txlog.etcd import log as etcd_log
from xatm.coordinator.txlog.etcd.client import connect
from xatm.coordinator.txlog.interface import LogStopped, TxLog

_prefixes = itertools.count()


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


@pytest.fixture
def prefix() -> str:
    """A key prefix of this test's own in the session's etcd."""
    return f"/t{next(_prefixes)}/"


def opener_for(cluster: EtcdCluster, prefix: str, replica: str = "n1", ttl: int = 5) -> Callable[[], EtcdLog]:
    return lambda: EtcdLog(parse_store_url(cluster.url), replica, prefix=prefix, lease_ttl=ttl)


async def etcd_call(cluster: EtcdCluster, call: Callable[[Any], Coroutine[Any, Any, Any]]) -> Any:
    """Run ``call(client)`` on a client of its own (another process's view of etcd)."""
    client = connect(parse_store_url(cluster.url), 2.0)
    try:
        return await call(client)
    finally:
        await client.close()


def delete_now(cluster: EtcdCluster, key: bytes) -> None:
    """Delete ``key`` from synchronous code running inside an event loop (a thread of its own)."""
    worker = threading.Thread(target=asyncio.run, args=(etcd_call(cluster, lambda c: c.delete(key)),))
    worker.start()
    worker.join()


CONTRACT = [
    contract.test_records_come_back_in_order_after_a_close,
    contract.test_a_checkpoint_replaces_what_was_logged,
    contract.test_a_second_open_on_the_same_storage_is_refused_until_closed,
    contract.test_a_stopped_log_refuses_everything_and_says_why,
]


@pytest.mark.parametrize("case", CONTRACT, ids=lambda case: case.__name__)
def test_the_log_contract_holds_on_etcd(
    case: Callable[[Callable[[], TxLog]], None],
    etcd_single: EtcdCluster,
    prefix: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def break_next_force(log: TxLog) -> None:
        # What stops an etcd log: its replica key gone (its lease expired), so the next write is fenced.
        assert isinstance(log, EtcdLog)
        delete_now(etcd_single, log.keys.live())

    monkeypatch.setattr(contract, "_break_next_force", break_next_force)
    case(opener_for(etcd_single, prefix))


def begin(gtrid: str) -> wal_pb2.WalRecord:
    return wal_pb2.WalRecord(gtrid=gtrid, begin=wal_pb2.BeginRecord(timeout_ms=1000))


def decide(gtrid: str) -> wal_pb2.WalRecord:
    return wal_pb2.WalRecord(gtrid=gtrid, decision=wal_pb2.DecisionRecord(commit=True))


def test_a_taken_over_transaction_fences_its_old_owner(etcd_cluster: EtcdCluster, prefix: str) -> None:
    """Replica a logs a transaction and loses its lease; b claims it; a's decision write fails."""

    async def scenario() -> None:
        a = opener_for(etcd_cluster, prefix, "a")()
        b = opener_for(etcd_cluster, prefix, "b")()
        await a.open()
        await b.open()
        await a.append(begin("a.01"), force=True)
        assert await b.orphans() == {}
        await etcd_call(etcd_cluster, lambda c: c.delete(a.keys.live()))  # a's lease "expired"
        assert await b.orphans() == {"a": ["a.01"]}
        assert await b.claim("a", "a.01") == [begin("a.01")]
        assert await b.claim("a", "a.01") is None  # claimed once only
        with pytest.raises(LogStopped, match="no longer owns"):
            await a.append(decide("a.01"), force=True)
        await b.append(decide("a.01"), force=True)
        await a.close()
        await b.close()
        again = opener_for(etcd_cluster, prefix, "b")()
        assert await again.open() == [begin("a.01"), decide("a.01")]
        await again.close()

    run(scenario)


def test_decisions_waiting_together_share_one_etcd_transaction(etcd_single: EtcdCluster, prefix: str) -> None:
    async def scenario() -> None:
        log = opener_for(etcd_single, prefix)()
        await log.open()
        for i in range(40):
            await log.append(begin(f"n1.{i:02x}"))
        await log.append(begin("n1.ff"), force=True)
        before = (await log.client.get_prefix(prefix.encode())).header.revision
        await asyncio.gather(*(log.append(decide(f"n1.{i:02x}"), force=True) for i in range(40)))
        after = (await log.client.get_prefix(prefix.encode())).header.revision
        # 80 records in a few transactions, not 40: each write raises the revision by one.
        assert 1 <= after - before <= 3
        await log.close()

    run(scenario)


def test_history_past_retention_leaves_etcd_at_a_checkpoint(etcd_single: EtcdCluster, prefix: str) -> None:
    async def scenario() -> None:
        log = opener_for(etcd_single, prefix)()
        await log.open()
        await log.append(begin("n1.01"))
        await log.append(begin("n1.02"), force=True)
        await log.checkpoint([begin("n1.02")])
        keys = [kv.key for kv in await log.client.get_prefix(prefix.encode())]
        assert not any(b"n1.01" in key for key in keys)
        assert any(b"n1.02" in key for key in keys)
        await log.close()

    run(scenario)


def test_a_record_appended_while_a_checkpoint_waits_is_kept_after_it(
    etcd_single: EtcdCluster, prefix: str
) -> None:
    """The snapshot covers what was appended before the checkpoint call; a record appended while
    the checkpoint waits for a write in flight must land after the snapshot, not vanish in it."""

    async def scenario() -> None:
        log = opener_for(etcd_single, prefix)()
        await log.open()
        await log.append(begin("n1.01"), force=True)
        await log.append(begin("n1.02"))
        in_flight = asyncio.ensure_future(log.append(decide("n1.02"), force=True))
        await asyncio.sleep(0)  # its etcd write is under way
        snapshot = [begin("n1.01"), begin("n1.02"), decide("n1.02")]
        checkpoint = asyncio.ensure_future(log.checkpoint(snapshot))
        await asyncio.sleep(0)
        late = asyncio.ensure_future(log.append(decide("n1.01"), force=True))
        await asyncio.gather(in_flight, checkpoint, late)
        await log.close()
        again = opener_for(etcd_single, prefix)()
        assert await again.open() == [*snapshot, decide("n1.01")]
        await again.close()

    run(scenario)


def test_appends_wait_for_etcd_once_the_queue_is_full(
    etcd_single: EtcdCluster, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While etcd answers nothing, unforced appends stop running ahead past ``MAX_QUEUED``
    records: the appenders wait for the write instead of the queue growing with the outage."""
    monkeypatch.setattr(etcd_log, "MAX_QUEUED", 3)

    async def scenario() -> None:
        log = opener_for(etcd_single, prefix)()
        await log.open()
        member = etcd_single.members[0]
        member.pause()
        try:
            appends = [asyncio.ensure_future(log.append(begin(f"n1.{i:02x}"))) for i in range(10)]
            await asyncio.sleep(0.5)
            returned = sum(task.done() for task in appends)
        finally:
            member.resume()
        await asyncio.gather(*appends)
        # Three go into the queue, the fourth waits for the write (which takes it and the three);
        # three more are queued behind that write, and every later one waits.
        assert returned == 6, f"{returned} of 10 appends returned while etcd answered nothing"
        await log.append(begin("n1.ff"), force=True)
        await log.close()
        reopened = opener_for(etcd_single, prefix)()
        assert [r.gtrid for r in await reopened.open()] == [f"n1.{i:02x}" for i in range(10)] + ["n1.ff"]
        await reopened.close()

    run(scenario)


def test_a_start_up_read_larger_than_one_grpc_message_comes_back_whole(
    etcd_single: EtcdCluster, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The soak's fault: a replica restarted over a keyspace of more than 4 MiB could not start,
    its one range read passing gRPC's receive limit. Reads are paged at one revision."""
    from xatm.coordinator.txlog.etcd import client as etcd_client

    opener = opener_for(etcd_single, prefix)

    async def scenario() -> None:
        log = opener()
        await log.open()
        for n in range(60):
            await log.append(begin(f"g{n:03d}"), force=True)
        await log.close()
        # Six values of 0.9 MiB each under the prefix: more than 4 MiB in all.
        big = prefix.encode() + b"zz-ballast/"
        blob = b"x" * (900 * 1024)
        await etcd_call(
            etcd_single, lambda c: asyncio.gather(*(c.put(big + bytes([65 + i]), blob) for i in range(6)))
        )
        whole = await etcd_call(etcd_single, lambda c: etcd_client.read_prefix(c, prefix.encode()))
        assert sum(len(kv.value) for kv in whole) > 5 * 1024 * 1024
        assert [kv.key for kv in whole] == sorted(kv.key for kv in whole)
        monkeypatch.setattr(etcd_client, "PAGE_KEYS", 7)
        again = opener()
        replayed = await again.open()
        assert [r.gtrid for r in replayed] == [f"g{n:03d}" for n in range(60)]
        await again.close()

    run(scenario)
