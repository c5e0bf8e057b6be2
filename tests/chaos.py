"""Helpers for the kill -9 tests: crash-and-restart, bounded waits, and the end-state checks.

Everything here waits with a deadline and polls; nothing asserts on how long a step took, so
the tests hold on a loaded machine. The checks read the durable truth from both sides: the
coordinator's status of each transaction and the participants' own list of prepared branches.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterable
from typing import TypeVar

import grpc
import psycopg

from tests.bank_system import BankSystem
from xatm.coordinator.tools.procs import Proc
from xatm.participant.api.v1 import (
    admin_pb2,
    admin_pb2_grpc,
    coordinator_pb2,
    coordinator_pb2_grpc,
    participant_pb2,
    participant_pb2_grpc,
    xa_pb2,
)
from xatm.participant.errors import XatmError
from xatm.participant.xa import TxStatus, Xid

#: The exit code of a failpoint armed with ``crash`` (participant/failpoints.py).
CRASH_EXIT = 137
#: Seconds between in-doubt passes, for the banks' resolver and the coordinator's recover scan.
FAST_RECOVERY = {"XATM_RECOVERY_INTERVAL": "1"}
#: Statuses a transaction must leave by itself once every process is up again.
NOT_FINAL = tuple(s for s in TxStatus if not s.is_final)

T = TypeVar("T")


def fast_recovery(system: BankSystem) -> BankSystem:
    """Make every (re)start of the banks and of the coordinator resolve in-doubt branches every second."""
    for proc in [system.coordinator, *system.banks.values()]:
        proc.env.update(FAST_RECOVERY)
    return system


def processes(system: BankSystem) -> dict[str, Proc]:
    return {"coordinator": system.coordinator, **system.banks}


def ensure_running(system: BankSystem, wait: float = 60.0) -> list[str]:
    """Start whatever is down (without failpoints); returns the names restarted."""
    restarted = []
    for name, proc in processes(system).items():
        if not proc.alive:
            proc.start(wait=wait)
            restarted.append(name)
    return restarted


def eventually(what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.1) -> T:
    """Poll ``probe`` until it returns something other than None; AssertionError after ``timeout``.

    ``probe`` may raise grpc.RpcError or XatmError while a process restarts: that is "not yet".
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
            if value is not None:
                return value
        except grpc.RpcError as err:
            last = f"{err.code().name}: {err.details()}"  # type: ignore[attr-defined]
        except XatmError as err:  # the same, through the initiator API
            last = f"{err.status.name}: {err.message}"
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up after {timeout:.0f}s waiting for {what} (last error: {last})")
        time.sleep(interval)


# ------------------------------------------------------------------ reading the durable state


def tx_info(system: BankSystem, gtrid: str) -> xa_pb2.TransactionInfo | None:
    """The coordinator's record of ``gtrid``; None when it has none (presumed abort)."""
    with grpc.insecure_channel(system.coordinator.address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        try:
            return stub.GetStatus(coordinator_pb2.StatusRequest(gtrid=gtrid), timeout=5)
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.NOT_FOUND:  # type: ignore[attr-defined]
                return None
            raise


class _Absent:
    """Stands for "the coordinator has no record" in a poll, where None means "not yet"."""


ABSENT = _Absent()


def wait_final(system: BankSystem, gtrid: str, timeout: float) -> xa_pb2.TransactionInfo | None:
    """Wait until ``gtrid`` is final at the coordinator (or unknown there); returns its record."""

    def probe() -> xa_pb2.TransactionInfo | _Absent | None:
        info = tx_info(system, gtrid)
        if info is None:
            return ABSENT
        return info if TxStatus(info.status).is_final else None

    found = eventually(f"{gtrid} to reach a final status", probe, timeout)
    return None if isinstance(found, _Absent) else found


def list_transactions(system: BankSystem, statuses: Iterable[TxStatus] = ()) -> list[xa_pb2.TransactionInfo]:
    """Every transaction the coordinator holds (Admin ListTransactions, all pages)."""
    found: list[xa_pb2.TransactionInfo] = []
    token = ""
    with grpc.insecure_channel(system.coordinator.address) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        while True:
            request = admin_pb2.ListTransactionsRequest(
                statuses=[int(s) for s in statuses], page_size=1000, page_token=token
            )
            reply = admin.ListTransactions(request, timeout=10)
            found.extend(reply.transactions)
            token = reply.next_page_token
            if not token:
                return found


def prepared_xids(address: str) -> list[Xid]:
    """What the participant at ``address`` holds prepared (its Recover RPC, every formatID)."""
    with grpc.insecure_channel(address) as channel:
        stub = participant_pb2_grpc.ParticipantStub(channel)
        reply = stub.Recover(participant_pb2.RecoverRequest(format_id=0), timeout=5)
    return [Xid(x.gtrid, x.bqual, x.format_id) for x in reply.xids]


def wait_no_prepared(system: BankSystem, timeout: float) -> None:
    """Every bank's store holds no prepared branch (all in-doubt branches were resolved)."""

    def probe() -> bool | None:
        left = {name: prepared_xids(proc.address) for name, proc in system.banks.items()}
        return True if not any(left.values()) else None

    try:
        eventually("no prepared branch in any bank", probe, timeout, interval=0.2)
    except AssertionError as err:
        left = {name: prepared_xids(proc.address) for name, proc in system.banks.items()}
        raise AssertionError(f"{err}; still prepared: {left}") from None


def wait_stores_clean(system: BankSystem, timeout: float) -> None:
    """No bank store holds a branch or a lock any more (each store read directly, beside its bank)."""

    def probe() -> bool | None:
        try:
            return True if not any(store.leftovers() for store in system.stores.values()) else None
        except (sqlite3.OperationalError, psycopg.OperationalError):  # busy (a bank checkpointing its
            return None  # SQLite WAL) or unreachable for a moment (a PostgreSQL restart)

    try:
        eventually("no branch or lock left in the bank stores", probe, timeout, interval=0.2)
    except AssertionError as err:
        left = {name: store.leftovers() for name, store in system.stores.items()}
        raise AssertionError(f"{err}; left: {left}") from None


def store_accounts(system: BankSystem, timeout: float = 30.0) -> dict[str, dict[str, int]]:
    """Every committed balance of every bank, read from the stores themselves."""

    def probe() -> dict[str, dict[str, int]] | None:
        try:
            return {name: store.accounts() for name, store in system.stores.items()}
        except (sqlite3.OperationalError, psycopg.OperationalError):  # busy or restarting: not yet
            return None

    return eventually("the stores to be readable", probe, timeout, interval=0.2)


def store_total(system: BankSystem) -> int:
    """All the money in all the stores."""
    return sum(sum(accounts.values()) for accounts in store_accounts(system).values())


def wait_quiescent(system: BankSystem, timeout: float) -> list[xa_pb2.TransactionInfo]:
    """Wait until the coordinator drives nothing any more; returns every transaction it holds."""

    def probe() -> list[xa_pb2.TransactionInfo] | None:
        txs = list_transactions(system)
        return txs if not any(TxStatus(tx.status) in NOT_FINAL for tx in txs) else None

    try:
        return eventually("every transaction to reach a final status", probe, timeout, interval=0.25)
    except AssertionError as err:
        stuck = [
            f"{tx.gtrid} {TxStatus(tx.status).label}"
            for tx in list_transactions(system)
            if TxStatus(tx.status) in NOT_FINAL
        ]
        raise AssertionError(f"{err}; not final: {stuck[:20]} ({len(stuck)} in all)") from None


def logs(system: BankSystem, lines: int = 40) -> str:
    """The tail of every process log, for failure messages."""
    return "\n".join(f"----- {name} -----\n{proc.tail(lines)}" for name, proc in processes(system).items())
