"""An account service: one bank's accounts in its own SQLite store, joined to global transactions.

    python -m examples.bank.account_service --name bank-a --listen 127.0.0.1:7101 \
        --db /tmp/bank-a.db --coordinator 127.0.0.1:7070 --seed alice=100

``Apply`` adds an amount to an account. A debit that would go below zero is not refused on the
spot: like a deferred SQL constraint, the branch is vetoed and votes XA_RBINTEGRITY at prepare,
so the whole transfer rolls back everywhere.
"""

from __future__ import annotations

import argparse
import logging
import signal
import threading
from concurrent import futures

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from examples.bank._proto import bank_pb2, bank_pb2_grpc
from participant import ParticipantStub
from participant.sqlite_rm import SqliteRM
from participant.xa import XaCode

log = logging.getLogger("bank")


class Accounts(bank_pb2_grpc.AccountsServicer):
    def __init__(self, stub: ParticipantStub, rm: SqliteRM):
        self.stub = stub
        self.rm = rm

    def Apply(self, request: bank_pb2.ApplyRequest, context: grpc.ServicerContext) -> bank_pb2.ApplyResponse:
        if not request.account:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "account is required")
        with self.stub.branch() as xid:
            balance = int(self.rm.get(xid, request.account) or 0)
            if balance + request.amount < 0:
                reason = (
                    f"insufficient funds in {request.account}: balance {balance}, amount {request.amount}"
                )
                log.info("%s: %s; vetoing the branch", xid.gtrid, reason)
                self.rm.mark_rollback_only(xid, XaCode.XA_RBINTEGRITY, reason)
                return bank_pb2.ApplyResponse(balance=balance)
            self.rm.put(xid, request.account, balance + request.amount)
            return bank_pb2.ApplyResponse(balance=balance + request.amount)

    def Balance(
        self, request: bank_pb2.BalanceRequest, context: grpc.ServicerContext
    ) -> bank_pb2.BalanceResponse:
        return bank_pb2.BalanceResponse(balance=int(self.rm.read_committed(request.account) or 0))


def serve(name: str, listen: str, db: str, coordinator: str, seed: dict[str, int]) -> None:
    rm = SqliteRM(db, rm_id=name)
    for account, amount in seed.items():
        if rm.read_committed(account) is None:
            with rm.local() as xid:
                rm.put(xid, account, amount)
    stub = ParticipantStub(rm, coordinator=coordinator, advertise=listen)
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), interceptors=[stub.server_interceptor()])
    stub.add_to_server(server)
    bank_pb2_grpc.add_AccountsServicer_to_server(Accounts(stub, rm), server)
    checker = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    if not server.add_insecure_port(listen):
        raise SystemExit(f"{name}: cannot listen on {listen}")
    server.start()
    recovered = getattr(stub, "recover_in_doubt", None)
    if recovered is not None:
        recovered()
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
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format=f"%(asctime)s {args.name} %(levelname)s %(message)s")
    seed = {k: int(v) for k, _, v in (s.partition("=") for s in args.seed)}
    serve(args.name, args.listen, args.db, args.coordinator, seed)


if __name__ == "__main__":
    main()
