"""A coordinator and bank account services as real processes, for end-to-end tests.

Each bank keeps its accounts in a store: an embedded SQLite file (the default) or a database of
a PostgreSQL cluster. A store object names the store on the bank's command line and reads it
directly, beside the running bank, for the end-state checks of the kill -9 tests.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.pgcluster import PgCluster, pg_url
from xatm.coordinator.tools.bank._proto import bank_pb2, bank_pb2_grpc
from xatm.coordinator.tools.bank.transfer import Bank
from xatm.coordinator.tools.demo import bank_proc
from xatm.coordinator.tools.procs import Proc, coordinator_proc
from xatm.participant import intercept_channel
from xatm.participant.api.v1 import coordinator_pb2, coordinator_pb2_grpc, xa_pb2
from xatm.participant.client.context import use
from xatm.participant.xa import TxStatus

#: Fast timings so failures and retries show up within a test's patience.
TEST_COORDINATOR_ENV = {
    "XATM_CALL_TIMEOUT": "1",
    "XATM_RETRY_INITIAL": "0.05",
    "XATM_RETRY_MAX": "0.3",
    "XATM_COMMIT_WAIT": "3",
    "XATM_CHECKPOINT_INTERVAL": "3600",
}
SEEDS = (("bank-a", "alice", 1000), ("bank-b", "bob", 1000))


class Store(Protocol):
    """Where a bank keeps its accounts, read directly (not through the bank) by the checks."""

    def argv(self) -> list[str]:
        """The account service's flags that name this store."""

    def accounts(self) -> dict[str, int]:
        """Every committed balance, by account."""

    def leftovers(self) -> dict[str, object]:
        """Branches and row locks still held in the store; empty once every transaction is final.

        A branch left active would hold its row locks for ever, one left prepared is in doubt.
        """


@dataclass(frozen=True)
class SqliteStore:
    """The embedded store (``--db PATH``), opened read-only."""

    path: Path

    def argv(self) -> list[str]:
        return ["--db", str(self.path)]

    def _read(self, query: str) -> list[tuple[Any, ...]]:
        uri = f"file:{self.path}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=10)) as conn:
            return conn.execute(query).fetchall()

    def accounts(self) -> dict[str, int]:
        return {key: int(value) for key, value in self._read("SELECT key, value FROM kv")}

    def leftovers(self) -> dict[str, object]:
        branches = self._read("SELECT gtrid, bqual, state FROM branches ORDER BY bid")
        ((locks,),) = self._read("SELECT COUNT(*) FROM locks")
        return {"branches": branches, "locks": locks} if branches or locks else {}


@dataclass(frozen=True)
class PgStore:
    """A database of a PostgreSQL cluster (``--store postgresql://...``), table ``accounts``."""

    cluster: PgCluster
    dbname: str

    def argv(self) -> list[str]:
        return ["--store", pg_url(self.cluster, self.dbname)]

    def accounts(self) -> dict[str, int]:
        with self.cluster.connect(self.dbname) as conn:
            return dict(conn.execute("SELECT name, balance FROM accounts").fetchall())

    def leftovers(self) -> dict[str, object]:
        """Prepared transactions of the database (any gid), sessions inside a transaction, and locks
        on ``accounts`` (a prepared transaction's have no pid)."""
        with self.cluster.connect(self.dbname) as conn:
            prepared = conn.execute(
                "SELECT gid FROM pg_prepared_xacts WHERE database = current_database() ORDER BY gid"
            ).fetchall()
            sessions = conn.execute(
                "SELECT pid, state, left(query, 100) FROM pg_stat_activity WHERE datname = current_database()"
                " AND pid <> pg_backend_pid() AND state LIKE 'idle in transaction%'"
            ).fetchall()
            locks = conn.execute(
                "SELECT pid, mode, granted FROM pg_locks WHERE relation = to_regclass('accounts')"
                " AND pid IS DISTINCT FROM pg_backend_pid()"
            ).fetchall()
        found = {"prepared": prepared, "sessions": sessions, "locks": locks}
        return {what: rows for what, rows in found.items() if rows}


def coordinator_status(address: str, gtrid: str) -> xa_pb2.TransactionInfo:
    """The coordinator's view of a transaction (GetStatus)."""
    with grpc.insecure_channel(address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        return stub.GetStatus(coordinator_pb2.StatusRequest(gtrid=gtrid), timeout=5)


def wait_status(address: str, gtrid: str, wanted: TxStatus, timeout: float = 20.0) -> xa_pb2.TransactionInfo:
    """Poll until the transaction has status ``wanted``; AssertionError with its info after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        info = coordinator_status(address, gtrid)
        if info.status == wanted:
            return info
        if time.monotonic() > deadline:
            raise AssertionError(f"{gtrid} is {TxStatus(info.status).label}, not {wanted.label}:\n{info}")
        time.sleep(0.05)


class BankSystem:
    def __init__(
        self,
        root: Path,
        *,
        coordinator_env: dict[str, str] | None = None,
        aio: bool = False,
        seeds: tuple[tuple[str, str, int], ...] = SEEDS,
        stores: Mapping[str, Store] | None = None,
    ):
        """``stores``: where each bank keeps its accounts (default: a SQLite file ``root/NAME.db``)."""
        self.root = root
        self.seeds = seeds
        self.coordinator = coordinator_proc(
            root / "coordinator", root, env={**TEST_COORDINATOR_ENV, **(coordinator_env or {})}
        )
        self.banks: dict[str, Proc] = {}
        self.stores: dict[str, Store] = {}
        for name, account, amount in seeds:
            db = root / f"{name}.db"
            store = self.stores[name] = (stores or {}).get(name) or SqliteStore(db)
            proc = bank_proc(name, db, self.coordinator.address, f"{account}={amount}", root)
            at = proc.argv.index("--db")
            proc.argv[at : at + 2] = store.argv()
            if aio:
                proc.argv.append("--aio")
            self.banks[name] = proc
        self._channels: list[grpc.Channel] = []
        self.bank: Bank | None = None

    def start(self, bank_env: dict[str, dict[str, str]] | None = None) -> BankSystem:
        self.coordinator.start()
        for name, proc in self.banks.items():
            proc.start(extra_env=(bank_env or {}).get(name))
        a, b = (self.banks[name].address for name, _, _ in self.seeds[:2])
        self.bank = Bank(self.coordinator.address, a, b)
        return self

    def stop(self) -> None:
        if self.bank is not None:
            self.bank.close()
        for channel in self._channels:
            channel.close()
        for proc in [*self.banks.values(), self.coordinator]:
            proc.stop()

    # ------------------------------------------------------------ clients

    def accounts(self, name: str) -> bank_pb2_grpc.AccountsStub:
        channel = grpc.insecure_channel(self.banks[name].address)
        self._channels.append(channel)
        return bank_pb2_grpc.AccountsStub(intercept_channel(channel))

    def apply(self, name: str, account: str, amount: int) -> int:
        return (
            self.accounts(name)
            .Apply(bank_pb2.ApplyRequest(account=account, amount=amount), timeout=10)
            .balance
        )

    def balance(self, name: str, account: str) -> int:
        """The committed balance, read outside any transaction the calling thread may hold."""
        with use(None):
            return self.accounts(name).Balance(bank_pb2.BalanceRequest(account=account), timeout=10).balance

    def total(self) -> int:
        return sum(self.balance(name, account) for name, account, _ in self.seeds)

    def status(self, gtrid: str) -> xa_pb2.TransactionInfo:
        return coordinator_status(self.coordinator.address, gtrid)

    def wait_status(self, gtrid: str, wanted: TxStatus, timeout: float = 20.0) -> xa_pb2.TransactionInfo:
        return wait_status(self.coordinator.address, gtrid, wanted, timeout)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of the coordinator's /metrics, keyed by (name, sorted labels)."""
        with urllib.request.urlopen(f"http://{self.coordinator.http}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)
