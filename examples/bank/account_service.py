"""An account service: one bank's accounts in its own SQLite store, joined to global transactions.

    python -m examples.bank.account_service --name bank-a --listen 127.0.0.1:7101 \
        --db /tmp/bank-a.db --coordinator 127.0.0.1:7070 --seed alice=100

``Apply`` adds an amount to an account. A debit that would go below zero is not refused on the
spot: like a deferred SQL constraint, the branch is vetoed and votes XA_RBINTEGRITY at prepare,
so the whole transfer rolls back everywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import threading
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from prometheus_client import start_http_server

from examples.bank._proto import bank_pb2, bank_pb2_grpc
from participant import ParticipantStub
from participant.sqlite_rm import SqliteRM
from participant.xa import XaCode, Xid

log = logging.getLogger("bank")
#: Seconds between in-doubt resolution passes (the first runs at start-up).
RECOVERY_INTERVAL = float(os.environ.get("XATM_RECOVERY_INTERVAL", "30"))


def apply(rm: SqliteRM, xid: Xid, account: str, amount: int) -> int:
    """The business rule, inside a branch. Amount 0 only reads (and locks): a read-only branch."""
    balance = int(rm.get(xid, account) or 0)
    if balance + amount < 0:
        reason = f"insufficient funds in {account}: balance {balance}, amount {amount}"
        log.info("%s: %s; vetoing the branch", xid.gtrid, reason)
        rm.mark_rollback_only(xid, XaCode.XA_RBINTEGRITY, reason)
        return balance
    if amount:
        rm.put(xid, account, balance + amount)
    return balance + amount


class Accounts(bank_pb2_grpc.AccountsServicer):
    """Handlers for a threaded grpc.server."""

    def __init__(self, stub: ParticipantStub, rm: SqliteRM):
        self.stub = stub
        self.rm = rm

    def Apply(self, request: bank_pb2.ApplyRequest, context: grpc.ServicerContext) -> Any:
        if not request.account:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "account is required")
        with self.stub.branch() as xid:
            return bank_pb2.ApplyResponse(balance=apply(self.rm, xid, request.account, request.amount))

    def Balance(self, request: bank_pb2.BalanceRequest, context: grpc.ServicerContext) -> Any:
        return bank_pb2.BalanceResponse(balance=int(self.rm.read_committed(request.account) or 0))


class AsyncAccounts(bank_pb2_grpc.AccountsServicer):
    """The same handlers for a grpc.aio server; store calls run in worker threads."""

    def __init__(self, stub: ParticipantStub, rm: SqliteRM):
        self.stub = stub
        self.rm = rm

    async def Apply(self, request: bank_pb2.ApplyRequest, context: grpc.aio.ServicerContext) -> Any:
        if not request.account:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "account is required")
        async with self.stub.abranch() as xid:
            balance = await asyncio.to_thread(apply, self.rm, xid, request.account, request.amount)
            return bank_pb2.ApplyResponse(balance=balance)

    async def Balance(self, request: bank_pb2.BalanceRequest, context: grpc.aio.ServicerContext) -> Any:
        balance = await asyncio.to_thread(self.rm.read_committed, request.account)
        return bank_pb2.BalanceResponse(balance=int(balance or 0))


def _open(
    name: str, db: str, coordinator: str, listen: str, seed: dict[str, int]
) -> tuple[SqliteRM, ParticipantStub]:
    rm = SqliteRM(db, rm_id=name)
    for account, amount in seed.items():
        if rm.read_committed(account) is None:
            with rm.local() as xid:
                rm.put(xid, account, amount)
    return rm, ParticipantStub(rm, coordinator=coordinator, advertise=listen)


async def serve_aio(name: str, listen: str, db: str, coordinator: str, seed: dict[str, int]) -> None:
    rm, stub = _open(name, db, coordinator, listen, seed)
    server = grpc.aio.server(interceptors=[stub.aio_server_interceptor()])
    stub.add_to_server(server)
    bank_pb2_grpc.add_AccountsServicer_to_server(AsyncAccounts(stub, rm), server)
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    if not server.add_insecure_port(listen):
        raise SystemExit(f"{name}: cannot listen on {listen}")
    await server.start()
    stub.start_recovery(RECOVERY_INTERVAL)
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("%s serving (asyncio) on %s with %s", name, listen, rm.items())
    done = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, done.set)
    await done.wait()
    await server.stop(2)
    stub.close()
    rm.close()


def serve(name: str, listen: str, db: str, coordinator: str, seed: dict[str, int]) -> None:
    rm, stub = _open(name, db, coordinator, listen, seed)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), interceptors=[stub.server_interceptor()])
    stub.add_to_server(server)
    bank_pb2_grpc.add_AccountsServicer_to_server(Accounts(stub, rm), server)
    checker = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    if not server.add_insecure_port(listen):
        raise SystemExit(f"{name}: cannot listen on {listen}")
    server.start()
    stub.start_recovery(RECOVERY_INTERVAL)
    checker.set("", health_pb2.HealthCheckResponse.SERVING)
    log.info("%s serving on %s with %s", name, listen, rm.items())
    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    signal.signal(signal.SIGINT, lambda *_: done.set())
    done.wait()
    server.stop(2).wait()
    stub.close()
    rm.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="bank example account service")
    parser.add_argument("--name", required=True)
    parser.add_argument("--listen", required=True)
    parser.add_argument("--db", required=True)
    parser.add_argument("--coordinator", required=True)
    parser.add_argument("--seed", action="append", default=[], metavar="ACCOUNT=AMOUNT")
    parser.add_argument("--aio", action="store_true", help="serve with grpc.aio instead of a thread pool")
    parser.add_argument("--metrics-listen", default=None, metavar="HOST:PORT", help="serve /metrics here")
    args = parser.parse_args()
    if args.metrics_listen:
        host, _, port = args.metrics_listen.rpartition(":")
        start_http_server(int(port), addr=host)
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.name} %(levelname)s %(message)s")
    seed = {k: int(v) for k, _, v in (s.partition("=") for s in args.seed)}
    if args.aio:
        asyncio.run(serve_aio(args.name, args.listen, args.db, args.coordinator, seed))
    else:
        serve(args.name, args.listen, args.db, args.coordinator, seed)


if __name__ == "__main__":
    main()
