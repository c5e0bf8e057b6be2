"""Randomized soak: concurrent transfers while random processes are killed with SIGKILL.

Several initiator threads move random amounts between accounts of bank-a and bank-b through the
bank example (some amounts exceed all the money there is, so they must be refused), while a chaos
loop SIGKILLs the coordinator, bank-a or bank-b at random instants and restarts it. Afterwards,
within a bounded wait, every transaction is final, no store holds a prepared branch, every branch
agrees with its transaction's outcome, every transfer the initiator saw commit is Committed, and
each account holds exactly its seed plus the committed transfers: money is conserved.

    XATM_SOAK_SECONDS=90   seconds of chaos (default 90)
    XATM_SOAK_SEED=1234    replay the same random choices (default: a fresh seed, always printed)

The seed fixes the choices (accounts, amounts, victims, pauses), not the timing between processes.
"""

from __future__ import annotations

import collections
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from tests.bank_system import BankSystem
from tests.chaos import (
    ensure_running,
    eventually,
    fast_recovery,
    list_transactions,
    logs,
    processes,
    tx_info,
    wait_final,
    wait_no_prepared,
    wait_quiescent,
    wait_stores_clean,
)
from xatm.coordinator.tools.bank.transfer import Bank
from xatm.participant import XatmError
from xatm.participant.xa import BranchStatus, TxStatus

SOAK_SECONDS = float(os.environ.get("XATM_SOAK_SECONDS", "90"))
SOAK_SEED = int(os.environ["XATM_SOAK_SEED"]) if os.environ.get("XATM_SOAK_SEED") else None
INITIATORS = 4
ACCOUNTS = {"bank-a": ("a0", "a1", "a2"), "bank-b": ("b0", "b1", "b2")}
OPENING = 100
#: More than all the money in the soak's accounts: such a transfer must never commit.
TOO_MUCH = OPENING * sum(len(a) for a in ACCOUNTS.values()) + 1
TX_TIMEOUT = 5.0
#: Bound of each wait after the chaos stops.
SETTLE = 120.0


@dataclass
class Attempt:
    src_bank: str
    src: str
    dst_bank: str
    dst: str
    amount: int
    #: committed / rolledback / heuristic / unknown (TransferResult.outcome); "aborted" when a business call
    #: failed (the initiator rolled back, commit was never asked); "not begun" when begin failed.
    seen: str
    gtrid: str = ""
    detail: str = ""


class Initiator(threading.Thread):
    """Transfers in a loop until told to stop; records every attempt."""

    def __init__(self, index: int, system: BankSystem, seed: int, stop: threading.Event):
        super().__init__(name=f"initiator-{index}", daemon=True)
        self.rng = random.Random(seed * 1000 + index)
        self.system = system
        self.stop = stop
        self.attempts: list[Attempt] = []
        self.crash: BaseException | None = None

    def run(self) -> None:
        a, b = (self.system.banks[name].address for name in ("bank-a", "bank-b"))
        coordinator = self.system.coordinator.address
        clients = {
            ("bank-a", "bank-b"): Bank(coordinator, a, b),
            ("bank-b", "bank-a"): Bank(coordinator, b, a),
        }
        try:
            while not self.stop.is_set():
                self.attempts.append(self._one(clients))
        except BaseException as err:  # reported by the test
            self.crash = err
        finally:
            for client in clients.values():
                client.close()

    def _one(self, clients: dict[tuple[str, str], Bank]) -> Attempt:
        rng = self.rng
        src_bank, dst_bank = rng.choice(list(clients))
        src, dst = rng.choice(ACCOUNTS[src_bank]), rng.choice(ACCOUNTS[dst_bank])
        amount = TOO_MUCH + rng.randrange(100) if rng.random() < 0.1 else rng.randint(1, 60)
        attempt = Attempt(src_bank, src, dst_bank, dst, amount, seen="")
        try:
            result = clients[(src_bank, dst_bank)].transfer(src, dst, amount, timeout=TX_TIMEOUT)
        except XatmError as err:  # begin failed: the coordinator is down or restarting
            attempt.seen, attempt.detail = "not begun", f"{err.status.name}: {err.message}"
        except grpc.RpcError as err:  # Apply failed; the block rolled back, commit was never asked
            attempt.seen = "aborted"
            attempt.detail = f"{err.code().name}: {err.details()}"  # type: ignore[attr-defined]
        else:
            attempt.seen, attempt.gtrid, attempt.detail = result.outcome, result.gtrid, result.detail
        if attempt.seen != "committed":
            time.sleep(0.05)  # do not spin while a process is down
        return attempt


def _chaos(system: BankSystem, rng: random.Random, seconds: float) -> collections.Counter[str]:
    """SIGKILL a random process at a random instant, restart it after a random pause; repeat."""
    kills: collections.Counter[str] = collections.Counter()
    victims = processes(system)
    end = time.monotonic() + seconds
    while True:
        pause = rng.uniform(0.3, 3.0)
        if time.monotonic() + pause >= end:
            time.sleep(max(0.0, end - time.monotonic()))
            return kills
        time.sleep(pause)
        name = rng.choice(sorted(victims))
        victims[name].kill()
        kills[name] += 1
        time.sleep(rng.choice((0.0, rng.uniform(0.0, 1.5))))
        victims[name].start(wait=SETTLE)


@pytest.mark.timeout(int(SOAK_SECONDS + 5 * SETTLE))
def test_soak(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    seed = SOAK_SEED if SOAK_SEED is not None else random.SystemRandom().randrange(2**32)
    with capsys.disabled():
        print(f"\nsoak: seed={seed} (XATM_SOAK_SEED), {SOAK_SECONDS:.0f}s of chaos (XATM_SOAK_SECONDS)")

    system = fast_recovery(BankSystem(tmp_path, coordinator_env={"XATM_CHECKPOINT_INTERVAL": "5"}))
    for bank, accounts in ACCOUNTS.items():
        for account in accounts:
            system.banks[bank].argv += ["--seed", f"{account}={OPENING}"]
    system.start()
    try:
        _soak(system, seed, capsys)
    finally:
        system.stop()


def _soak(system: BankSystem, seed: int, capsys: pytest.CaptureFixture[str]) -> None:
    opening = {(bank, account): OPENING for bank, accounts in ACCOUNTS.items() for account in accounts}
    assert _balances(system) == opening

    stop = threading.Event()
    initiators = [Initiator(i, system, seed, stop) for i in range(INITIATORS)]
    for initiator in initiators:
        initiator.start()
    started = time.monotonic()
    try:
        kills = _chaos(system, random.Random(seed), SOAK_SECONDS)
    finally:
        stop.set()
        for initiator in initiators:
            initiator.join(SETTLE)
    chaos_seconds = time.monotonic() - started
    for initiator in initiators:
        assert not initiator.is_alive(), f"{initiator.name} is stuck\n{logs(system)}"
        assert initiator.crash is None, f"{initiator.name} failed: {initiator.crash!r}"
    attempts = [a for initiator in initiators for a in initiator.attempts]

    # Everything is up; the coordinator and the banks finish whatever was in flight by themselves.
    ensure_running(system, wait=SETTLE)
    transactions = wait_quiescent(system, SETTLE)
    wait_no_prepared(system, SETTLE)

    # The outcome of every transfer, as the coordinator durably decided it (none: presumed abort).
    outcomes: dict[str, TxStatus | None] = {}
    for attempt in attempts:
        if attempt.gtrid:
            info = tx_info(system, attempt.gtrid)
            outcomes[attempt.gtrid] = None if info is None else TxStatus(info.status)
    counts = collections.Counter(a.seen for a in attempts)
    resolved = collections.Counter(
        (outcomes[a.gtrid] or TxStatus.ROLLEDBACK).label for a in attempts if a.seen == "unknown"
    )
    with capsys.disabled():
        print(
            f"soak: seed={seed}; {chaos_seconds:.0f}s of chaos; transfers attempted {len(attempts)}: "
            f"committed {counts['committed']}, rolled back {counts['rolledback']}, "
            f"unknown {counts['unknown']} (then {dict(resolved)}), heuristic {counts['heuristic']}, "
            f"aborted in the business phase {counts['aborted']}, not begun {counts['not begun']}; "
            f"kills: {', '.join(f'{name} {kills[name]}' for name in sorted(processes(system)))}; "
            f"coordinator holds {len(transactions)} transactions"
        )

    # What the initiators were told is what happened.
    for attempt in attempts:
        outcome = outcomes.get(attempt.gtrid)
        assert attempt.seen != "heuristic", f"seed {seed}: a heuristic outcome: {attempt}"
        if attempt.seen == "committed":
            assert outcome == TxStatus.COMMITTED, f"seed {seed}: told committed, but {outcome}: {attempt}"
        elif attempt.seen == "rolledback":
            assert outcome in (None, TxStatus.ROLLEDBACK), f"seed {seed}: told rolled back: {attempt}"
        elif attempt.seen == "unknown":
            assert outcome in (None, TxStatus.COMMITTED, TxStatus.ROLLEDBACK), f"seed {seed}: {attempt}"
        if attempt.amount >= TOO_MUCH:
            assert outcome != TxStatus.COMMITTED, f"seed {seed}: an impossible transfer committed: {attempt}"

    # Every transaction is final, with each branch agreeing with it; nothing is heuristic.
    for tx in list_transactions(system):
        status = TxStatus(tx.status)
        assert status in (TxStatus.COMMITTED, TxStatus.ROLLEDBACK), f"seed {seed}: {status.label}: {tx}"
        wanted = BranchStatus.COMMITTED if status == TxStatus.COMMITTED else BranchStatus.ROLLEDBACK
        assert all(BranchStatus(b.status) == wanted for b in tx.branches), f"seed {seed}: {tx}"

    # Each account holds its opening balance plus exactly the committed transfers.
    expected = dict(opening)
    for attempt in attempts:
        if attempt.gtrid and outcomes[attempt.gtrid] == TxStatus.COMMITTED:
            expected[(attempt.src_bank, attempt.src)] -= attempt.amount
            expected[(attempt.dst_bank, attempt.dst)] += attempt.amount
    actual = _balances(system)
    assert actual == expected, f"seed {seed}: balances {actual}, expected {expected}"
    assert sum(actual.values()) == sum(opening.values())
    assert min(actual.values()) >= 0

    # No lock outlived its transaction: every account takes part in a transfer again.
    for src, dst in zip(ACCOUNTS["bank-a"], ACCOUNTS["bank-b"], strict=True):
        _transfer_commits(system, src, dst, seed)
    assert _balances(system) == expected
    wait_quiescent(system, SETTLE)
    wait_no_prepared(system, SETTLE)
    wait_stores_clean(system, SETTLE)  # not a branch, not a row lock left behind


def _balances(system: BankSystem) -> dict[tuple[str, str], int]:
    return {
        (bank, account): system.balance(bank, account)
        for bank, accounts in ACCOUNTS.items()
        for account in accounts
    }


def _transfer_commits(system: BankSystem, src: str, dst: str, seed: int) -> None:
    """A read-only transfer (amount 0, so balances stay) between the two accounts commits."""
    assert system.bank is not None
    bank = system.bank

    def probe() -> bool | None:
        result = bank.transfer(src, dst, 0)
        if result.outcome == "unknown":
            info = wait_final(system, result.gtrid, SETTLE)
            return True if info is not None and info.status == TxStatus.COMMITTED else None
        return True if result.committed else None

    try:
        eventually(f"a transfer between {src} and {dst} to commit", probe, SETTLE, interval=0.3)
    except AssertionError as err:
        raise AssertionError(f"seed {seed}: {err}\n{logs(system)}") from None
