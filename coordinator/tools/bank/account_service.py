"""An account service: one bank's accounts in its own store, joined to global transactions.

    python -m xatm.coordinator.tools.bank.account_service --name bank-a --listen 127.0.0.1:7101 \
        --db /tmp/bank-a.db --coordinator 127.0.0.1:7070 --seed alice=100
    python -m xatm.coordinator.tools.bank.account_service --name bank-a --listen 127.0.0.1:7101 \
        --store postgresql://bank@db:5432/bank_a --coordinator 127.0.0.1:7070 --seed alice=100
    python -m xatm.coordinator.tools.bank.account_service --name bank-b --listen 127.0.0.1:7102 \
        --store mysql://bank@db:3306/bank_b --coordinator 127.0.0.1:7070 --seed bob=100

The accounts live in a ledger: keys of the embedded SQLite store (``--db``), or the table
``accounts(name primary key, balance bigint not null check (balance >= 0))`` of a
PostgreSQL or MySQL/MariaDB database (``--store``). ``Apply`` adds an amount to an account. A change the store
refuses (a debit below zero, a deadlock victim) does not fail the call: like a deferred SQL
constraint, the branch is vetoed and votes that reason at prepare (XA_RBINTEGRITY for
insufficient funds), so the whole transfer rolls back everywhere. Savepoints of the
transaction (``tx.savepoint()``/``tx.rollback_to()``) reach both stores through the stub.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
from concurrent import futures
from typing import TYPE_CHECKING, Any, Protocol, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from xatm.coordinator.tools.bank._proto import bank_pb2, bank_pb2_grpc
from xatm.participant import ParticipantStub
from xatm.participant.agent.server import parse_resource
from xatm.participant.runtime.address import argument
from xatm.participant.runtime.serving import stop_signals, until_signalled
from xatm.participant.stores.base import ResourceManager
from xatm.participant.stores.sqlite import SqliteRM
from xatm.participant.xa import SERVER_OPTIONS, XaCode, XaError, Xid

if TYPE_CHECKING:
    from xatm.participant.stores.mysql import MariaRM
    from xatm.participant.stores.postgresql import PostgresRM

log = logging.getLogger("bank")
#: Seconds between in-doubt resolution passes (the first runs at start-up).
RECOVERY_INTERVAL = float(os.environ.get("XATM_RECOVERY_INTERVAL", "30"))


class Ledger(Protocol):
    """Where a bank keeps its accounts: all that differs between the SQLite and PostgreSQL banks."""

    @property
    def rm(self) -> ResourceManager:
        """The resource manager the stub drives (read-only here, so each ledger may narrow it)."""

    def apply(self, xid: Xid, account: str, amount: int) -> int:
        """Add ``amount`` within the branch and return the new balance; amount 0 only reads.

        A change the store refuses raises ``XaError(XA_RB*)`` with the branch already vetoed.
        """

    def balance(self, account: str) -> int:
        """The committed balance (0 for an unknown account)."""

    def seed(self, account: str, amount: int) -> None:
        """Create the account with ``amount`` unless it exists."""

    def accounts(self) -> dict[str, int]:
        """Every committed balance, by account."""


class SqliteLedger:
    """Accounts as keys of the embedded store; the rule is checked in code and vetoes the branch."""

    def __init__(self, rm: SqliteRM):
        self.rm = rm

    def apply(self, xid: Xid, account: str, amount: int) -> int:
        balance = int(self.rm.get(xid, account) or 0)  # locks the account until the branch ends
        if balance + amount < 0:
            reason = f"insufficient funds in {account}: balance {balance}, amount {amount}"
            self.rm.mark_rollback_only(xid, XaCode.XA_RBINTEGRITY, reason)
            raise XaError(XaCode.XA_RBINTEGRITY, reason)
        if amount:
            self.rm.put(xid, account, balance + amount)
        return balance + amount

    def balance(self, account: str) -> int:
        return int(self.rm.read_committed(account) or 0)

    def seed(self, account: str, amount: int) -> None:
        if self.rm.read_committed(account) is None:
            with self.rm.local() as xid:
                self.rm.put(xid, account, amount)

    def accounts(self) -> dict[str, int]:
        return {key: int(value) for key, value in self.rm.items().items()}


class PostgresLedger:
    """Accounts as rows; the CHECK constraint enforces the rule inside ``rm.guard``, which maps
    its violation to XA_RBINTEGRITY and vetoes the branch."""

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS accounts"
        " (name text PRIMARY KEY, balance bigint NOT NULL CHECK (balance >= 0))"
    )

    def __init__(self, rm: PostgresRM, dsn: str):
        self.rm = rm
        self.dsn = dsn
        self._autocommit(self.SCHEMA)

    def apply(self, xid: Xid, account: str, amount: int) -> int:
        with self.rm.guard(xid) as conn:
            if not amount:  # a plain read takes no lock and writes nothing: the branch stays read-only
                row = conn.execute("SELECT balance FROM accounts WHERE name = %s", (account,)).fetchone()
                return int(row[0]) if row else 0
            # Not INSERT ... ON CONFLICT: the CHECK would test the proposed row (-amount) first.
            row = conn.execute(
                "UPDATE accounts SET balance = balance + %s WHERE name = %s RETURNING balance",
                (amount, account),
            ).fetchone()
            if row is None:
                row = conn.execute(
                    "INSERT INTO accounts (name, balance) VALUES (%s, %s) RETURNING balance",
                    (account, amount),
                ).fetchone()
            return int(row[0])

    def balance(self, account: str) -> int:
        rows = self._autocommit("SELECT balance FROM accounts WHERE name = %s", account)
        return int(rows[0][0]) if rows else 0

    def seed(self, account: str, amount: int) -> None:
        self._autocommit(
            "INSERT INTO accounts VALUES (%s, %s) ON CONFLICT (name) DO NOTHING", account, amount
        )

    def accounts(self) -> dict[str, int]:
        return {
            name: int(balance)
            for name, balance in self._autocommit("SELECT name, balance FROM accounts ORDER BY name")
        }

    def _autocommit(self, query: str, *params: object) -> list[tuple[Any, ...]]:
        """One autocommit statement on a connection of its own (committed state, no branch)."""
        import psycopg

        with psycopg.connect(self.dsn, autocommit=True) as conn:
            cur = conn.execute(query, params or None)
            return cur.fetchall() if cur.description else []


class MariaLedger:
    """Accounts as rows of an InnoDB table; as for PostgreSQL, the CHECK constraint enforces the
    rule inside ``rm.guard``, which maps its violation (error 4025) to XA_RBINTEGRITY."""

    SCHEMA = (
        "CREATE TABLE IF NOT EXISTS accounts (name varchar(255) PRIMARY KEY,"
        " balance bigint NOT NULL CHECK (balance >= 0)) ENGINE=InnoDB"
    )

    def __init__(self, rm: MariaRM):
        self.rm = rm
        self._autocommit(self.SCHEMA)

    def apply(self, xid: Xid, account: str, amount: int) -> int:
        with self.rm.guard(xid) as conn:
            if (
                amount
                and not conn.execute(
                    "UPDATE accounts SET balance = balance + %s WHERE name = %s", (amount, account)
                ).rowcount
            ):
                conn.execute("INSERT INTO accounts (name, balance) VALUES (%s, %s)", (account, amount))
            # A plain read for amount 0 takes no lock and writes nothing: the branch stays read-only.
            row = conn.execute("SELECT balance FROM accounts WHERE name = %s", (account,)).fetchone()
            return int(row[0]) if row else 0

    def balance(self, account: str) -> int:
        rows = self._autocommit("SELECT balance FROM accounts WHERE name = %s", account)
        return int(rows[0][0]) if rows else 0

    def seed(self, account: str, amount: int) -> None:
        self._autocommit("INSERT IGNORE INTO accounts VALUES (%s, %s)", account, amount)

    def accounts(self) -> dict[str, int]:
        rows = self._autocommit("SELECT name, balance FROM accounts")
        return {str(name): int(balance) for name, balance in rows}

    def _autocommit(self, query: str, *params: object) -> list[tuple[Any, ...]]:
        """One autocommit statement on a connection of its own (committed state, no branch)."""
        conn = self.rm.params.connect(autocommit=True)
        try:
            with conn.cursor() as cur:
                cur.execute(query, params or None)
                return list(cur.fetchall()) if cur.description else []
        finally:
            conn.close()


#: Connections a SQL store's resource manager pools for active branches, by default.
POOL_SIZE = 4


def open_ledger(name: str, store: str, *, pool_size: int = POOL_SIZE) -> Ledger:
    """``sqlite:PATH``, ``postgresql://...`` or ``mysql://...``, as ``xatm participant --resource``;
    ``pool_size``: the connections of a SQL store held by active branches at most."""
    resource = parse_resource(store)
    rm = resource.open(name, pool_size=pool_size)
    if isinstance(rm, SqliteRM):
        return SqliteLedger(rm)
    # The SQL RMs are imported only where their drivers are.
    if resource.kind == "mysql":
        return MariaLedger(cast("MariaRM", rm))
    return PostgresLedger(cast("PostgresRM", rm), resource.target)


def apply(ledger: Ledger, xid: Xid, account: str, amount: int) -> int:
    """The business operation, inside a branch: a refused change vetoes the branch, and the call
    answers the committed balance instead of failing, so prepare carries the reason."""
    try:
        return ledger.apply(xid, account, amount)
    except XaError as error:
        if not error.code.is_rollback:
            raise
        log.info("%s: %s; vetoing the branch (%s)", xid.gtrid, error.reason, error.code.name)
        return ledger.balance(account)


class Accounts(bank_pb2_grpc.AccountsServicer):
    """Handlers for a threaded grpc.server."""

    def __init__(self, stub: ParticipantStub, ledger: Ledger):
        self.stub = stub
        self.ledger = ledger

    def Apply(self, request: bank_pb2.ApplyRequest, context: grpc.ServicerContext) -> Any:
        if not request.account:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "account is required")
        with self.stub.branch() as xid:
            return bank_pb2.ApplyResponse(balance=apply(self.ledger, xid, request.account, request.amount))

    def Balance(self, request: bank_pb2.BalanceRequest, context: grpc.ServicerContext) -> Any:
        return bank_pb2.BalanceResponse(balance=self.ledger.balance(request.account))


class AsyncAccounts(bank_pb2_grpc.AccountsServicer):
    """The same handlers for a grpc.aio server; store calls run in worker threads."""

    def __init__(self, stub: ParticipantStub, ledger: Ledger):
        self.stub = stub
        self.ledger = ledger

    async def Apply(self, request: bank_pb2.ApplyRequest, context: grpc.aio.ServicerContext) -> Any:
        if not request.account:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "account is required")
        async with self.stub.abranch() as xid:
            balance = await asyncio.to_thread(apply, self.ledger, xid, request.account, request.amount)
            return bank_pb2.ApplyResponse(balance=balance)

    async def Balance(self, request: bank_pb2.BalanceRequest, context: grpc.aio.ServicerContext) -> Any:
        balance = await asyncio.to_thread(self.ledger.balance, request.account)
        return bank_pb2.BalanceResponse(balance=balance)


def _open(
    name: str, store: str, coordinator: str, listen: str, seed: dict[str, int], pool_size: int
) -> tuple[Ledger, ParticipantStub]:
    ledger = open_ledger(name, store, pool_size=pool_size)
    for account, amount in seed.items():
        ledger.seed(account, amount)
    # A coordinator with an auth file needs a service-role token (env only: argv is visible in ps).
    token = os.environ.get("XATM_TOKEN") or None
    # Coordinator replicas besides ``coordinator`` that initiators may name, as the agent reads them.
    allowed = os.environ.get("XATM_ALLOW_COORDINATORS", "")
    return ledger, ParticipantStub(
        ledger.rm, coordinator=coordinator, advertise=listen, token=token, allowed_coordinators=allowed
    )


async def serve_aio(
    name: str, listen: str, store: str, coordinator: str, seed: dict[str, int], pool_size: int = POOL_SIZE
) -> None:
    ledger, stub = _open(name, store, coordinator, listen, seed, pool_size)
    server = grpc.aio.server(interceptors=[stub.aio_server_interceptor()], options=SERVER_OPTIONS)
    stub.add_to_server(server)
    bank_pb2_grpc.add_AccountsServicer_to_server(AsyncAccounts(stub, ledger), server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    if not server.add_insecure_port(listen):
        raise SystemExit(f"{name}: cannot listen on {listen}")
    await server.start()
    stub.start_recovery(RECOVERY_INTERVAL)
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("%s serving (asyncio) on %s with %s", name, listen, ledger.accounts())
    async with stop_signals() as stop:
        await stop.wait()
        await server.stop(2)
    stub.close()
    ledger.rm.close()


#: Threads serving calls: room for 128 concurrent transfers beside phase-two calls.
SERVING_THREADS = 160


def serve(
    name: str, listen: str, store: str, coordinator: str, seed: dict[str, int], pool_size: int = POOL_SIZE
) -> None:
    ledger, stub = _open(name, store, coordinator, listen, seed, pool_size)
    server = grpc.server(
        # Business calls wait in a thread for one of the pool's connections, which branches hold
        # until phase two: with few threads, waiting calls could take every thread and starve the
        # Prepare and Commit calls that would free a connection.
        futures.ThreadPoolExecutor(max_workers=SERVING_THREADS),
        interceptors=[stub.server_interceptor()],
        options=SERVER_OPTIONS,
    )
    stub.add_to_server(server)
    bank_pb2_grpc.add_AccountsServicer_to_server(Accounts(stub, ledger), server)
    checker = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    if not server.add_insecure_port(listen):
        raise SystemExit(f"{name}: cannot listen on {listen}")
    server.start()
    stub.start_recovery(RECOVERY_INTERVAL)
    checker.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("%s serving on %s with %s", name, listen, ledger.accounts())
    until_signalled()
    server.stop(2).wait()
    stub.close()
    ledger.rm.close()


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, not {text!r}")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description="bank example account service")
    parser.add_argument("--name", required=True)
    # Also the address the coordinator calls back, so no port 0.
    parser.add_argument("--listen", required=True, type=argument(), metavar="HOST:PORT")
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--db", metavar="PATH", help="the accounts in an embedded SQLite store at PATH")
    where.add_argument(
        "--store",
        metavar="URI",
        help="postgresql://USER@HOST:PORT/DBNAME, mysql://USER[:PASSWORD]@HOST:PORT/DBNAME "
        "(or sqlite:PATH) for the accounts",
    )
    parser.add_argument("--coordinator", required=True, type=argument(), metavar="HOST:PORT")
    parser.add_argument("--seed", action="append", default=[], metavar="ACCOUNT=AMOUNT")
    parser.add_argument(
        "--pool-size",
        type=_positive,
        default=POOL_SIZE,
        metavar="N",
        help=f"connections a PostgreSQL or MySQL store keeps for transfers in flight ({POOL_SIZE})",
    )
    parser.add_argument("--aio", action="store_true", help="serve with grpc.aio instead of a thread pool")
    parser.add_argument(
        "--metrics-listen",
        default=None,
        type=argument(listen=True),
        metavar="HOST:PORT",
        help="serve /metrics here",
    )
    args = parser.parse_args()
    if args.metrics_listen:
        start_http_server(args.metrics_listen.port, addr=args.metrics_listen.host)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.name} %(levelname)s %(message)s")
    seed = {k: int(v) for k, _, v in (s.partition("=") for s in args.seed)}
    store = args.store or f"sqlite:{args.db}"
    name, listen, coordinator, pool_size = args.name, str(args.listen), str(args.coordinator), args.pool_size
    if args.aio:
        asyncio.run(serve_aio(name, listen, store, coordinator, seed, pool_size))
    else:
        serve(name, listen, store, coordinator, seed, pool_size)


if __name__ == "__main__":
    main()
