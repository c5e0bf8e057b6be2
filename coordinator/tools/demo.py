"""``xatm demo``: the whole system on one machine, as separate processes, narrated.

A coordinator and two bank account services (each with its own SQLite store) start on free
ports; a transfer commits; a transfer the source cannot cover rolls back everywhere because
the source votes XA_RBINTEGRITY; balances keep their sum. Exit 0 only if all of that held.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc

from xatm.coordinator.tools.bank.transfer import Bank
from xatm.coordinator.tools.procs import Proc, coordinator_proc, free_port, work_dir
from xatm.participant.api.v1 import coordinator_pb2, coordinator_pb2_grpc, xa_pb2
from xatm.participant.xa import CHANNEL_OPTIONS, BranchStatus, TxStatus, XaCode

__all__ = ["add_parser", "run_demo"]

SEED_A, SEED_B = 100, 50
TIME_LIMIT = 30.0


class _Check:
    def __init__(self, say: Callable[[str], None]):
        self.say = say
        self.failures: list[str] = []

    def __call__(self, ok: bool, what: str) -> None:
        self.say(f"   {'ok  ' if ok else 'FAIL'} {what}")
        if not ok:
            self.failures.append(what)


def _status(address: str, gtrid: str) -> xa_pb2.TransactionInfo:
    with grpc.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        return stub.GetStatus(coordinator_pb2.StatusRequest(gtrid=gtrid), timeout=5)


def _describe(info: xa_pb2.TransactionInfo) -> list[str]:
    lines = [f"   transaction {info.gtrid}: {TxStatus(info.status).label}"]
    for b in info.branches:
        code = XaCode(b.last_code).name if b.has_last_code else "-"
        lines.append(f"     branch {b.rm_id:<7} {BranchStatus(b.status).label:<11} last code {code}")
    return lines


def bank_proc(name: str, db: Path, coordinator: str, seed: str, log_dir: Path) -> Proc:
    port = free_port()
    argv = [
        "-m",
        "xatm.coordinator.tools.bank.account_service",
        "--name",
        name,
        "--listen",
        f"127.0.0.1:{port}",
        "--db",
        str(db),
        "--coordinator",
        coordinator,
        "--seed",
        seed,
    ]
    return Proc(name, argv, f"127.0.0.1:{port}", log_dir / f"{name}.log")


def _crash_scene(coord: Proc, bank: Any, say: Callable[[str], None], check: _Check) -> None:
    """Kill the coordinator right after a commit decision is durable; its restart finishes the job."""
    say("\n3. Transfer 10 while the coordinator is set to crash right after its commit decision is on disk")
    coord.stop()
    coord.start(extra_env={"XATM_FAILPOINTS": "coordinator.after_decision=crash"})
    # A restarted coordinator refuses gtrids made for its previous start: begin at it first.
    bank.tm.relearn()
    result = bank.transfer("alice", "bob", 10)
    code = coord.wait_exit(10)
    seen = result.detail.split(";")[0]
    say(f"   the coordinator died (exit {code}) before phase two; the initiator saw: {seen}")
    say("   both banks now hold a prepared branch, its locks and no outcome")
    coord.start()
    say("   coordinator restarted: recovery replays the log, finds the durable decision, re-drives commit")
    gtrid = result.gtrid
    deadline = time.monotonic() + 10
    info = _status(coord.address, gtrid)
    while info.status != TxStatus.COMMITTED and time.monotonic() < deadline:
        time.sleep(0.05)
        info = _status(coord.address, gtrid)
    for line in _describe(info):
        say(line)
    check(info.status == TxStatus.COMMITTED and info.recovered, "recovery committed the transfer by itself")


def run_demo(data_dir: Path, say: Callable[[str], None] = print) -> int:
    started = time.monotonic()
    check = _Check(say)
    with ExitStack() as stack:
        coord = coordinator_proc(data_dir / "coordinator", data_dir)
        say("xatm demo: a coordinator and two bank services, each a separate process")
        stack.callback(coord.stop)
        coord.start()
        say(f"   coordinator  {coord.address}  (gRPC; /metrics on http://{coord.http}/metrics)")
        banks = []
        for name, seed in (("bank-a", f"alice={SEED_A}"), ("bank-b", f"bob={SEED_B}")):
            proc = bank_proc(name, data_dir / f"{name}.db", coord.address, seed, data_dir)
            stack.callback(proc.stop)
            proc.start()
            banks.append(proc)
            say(f"   {name:<12} {proc.address}  ({seed}, SQLite store {data_dir / (name + '.db')})")
        bank = Bank(coord.address, banks[0].address, banks[1].address)
        stack.callback(bank.close)

        say("\n1. Transfer 30 from alice (bank-a) to bob (bank-b): two branches, prepare then commit")
        result = bank.transfer("alice", "bob", 30)
        info = _status(coord.address, result.gtrid)
        for line in _describe(info):
            say(line)
        check(result.committed and info.status == TxStatus.COMMITTED, "the transfer is Committed")
        check(
            all(b.status == BranchStatus.COMMITTED for b in info.branches) and len(info.branches) == 2,
            "both branches are Committed",
        )

        say("\n2. Transfer 500 from alice: more than she has, so bank-a votes no at prepare")
        result = bank.transfer("alice", "bob", 500)
        info = _status(coord.address, result.gtrid)
        for line in _describe(info):
            say(line)
        codes = {b.rm_id: XaCode(b.last_code) for b in info.branches if b.has_last_code}
        check(not result.committed and info.status == TxStatus.ROLLEDBACK, "the transfer is Rolledback")
        check(codes.get("bank-a") == XaCode.XA_RBINTEGRITY, "bank-a voted XA_RBINTEGRITY")
        check(
            all(b.status == BranchStatus.ROLLEDBACK for b in info.branches),
            "every branch is Rolledback (bob was not credited)",
        )

        _crash_scene(coord, bank, say, check)

        alice, bob = bank.balances("alice", "bob")
        say(f"\nBalances: alice {alice}, bob {bob}; sum {alice + bob} (was {SEED_A + SEED_B})")
        check((alice, bob) == (SEED_A - 40, SEED_B + 40), "balances reflect exactly the committed transfers")
        check(alice + bob == SEED_A + SEED_B, "money is conserved")

    elapsed = time.monotonic() - started
    check(elapsed < TIME_LIMIT, f"finished in {elapsed:.1f}s (limit {TIME_LIMIT:.0f}s)")
    if check.failures:
        say(f"\nxatm demo: {len(check.failures)} check(s) failed; logs are in {data_dir}")
        return 1
    say("\nxatm demo: every outcome was as expected")
    return 0


def _main(args: argparse.Namespace) -> int:
    keep = args.data_dir is not None
    try:
        data_dir = work_dir(args.data_dir, "xatm-demo-")
    except ValueError as err:
        print(f"xatm demo: {err}", file=sys.stderr)
        return 2
    try:
        code = run_demo(data_dir)
    except (RuntimeError, TimeoutError, grpc.RpcError) as err:
        print(f"xatm demo: {err}", file=sys.stderr)
        code = 1
    if not keep and code == 0:
        shutil.rmtree(data_dir, ignore_errors=True)
    return code


def add_parser(sub: Any) -> None:
    p = sub.add_parser("demo", help="run the whole system locally and narrate three transfers")
    p.add_argument(
        "--data-dir", default=None, help="keep logs and stores here (default: a temporary directory)"
    )
    p.set_defaults(func=_main)
