"""Stepping a process's wall clock changes what it displays, never when anything times out.

Each end-to-end test puts real processes on a libfaketime clock (tests/faketime.py) and steps
their wall clock by 45 s, forward or back, while transactions are in flight.
"""

from __future__ import annotations

import subprocess
import time
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from examples.bank._proto import bank_pb2
from participant import TransactionManager
from participant.xa import TxStatus
from tests.bank_system import BankSystem
from tests.faketime import FakeClock

STEP = 45

_PROBE = """
import sys, time
for _ in sys.stdin:
    print(time.time(), time.monotonic(), flush=True)
"""


def test_faketime_steps_the_wall_clock_of_a_child_and_not_its_monotonic_clock(tmp_path: Path) -> None:
    clock = FakeClock(tmp_path)
    child = subprocess.Popen(
        [sys.executable, "-c", _PROBE],
        env={**clock.env(), "PATH": "/usr/bin:/bin"},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None

    def read() -> tuple[float, float]:
        child.stdin.write("\n")  # type: ignore[union-attr]
        child.stdin.flush()  # type: ignore[union-attr]
        wall, mono = child.stdout.readline().split()  # type: ignore[union-attr]
        return float(wall), float(mono)

    try:
        wall0, mono0 = read()
        clock.step(STEP)
        wall1, mono1 = read()
        clock.step(-2 * STEP)
        wall2, mono2 = read()
    finally:
        child.stdin.close()
        child.wait(10)
    assert wall1 - wall0 >= STEP and wall2 - wall1 <= -2 * STEP + (mono2 - mono1) + 0.5
    assert mono0 <= mono1 <= mono2 and mono2 - mono0 < STEP  # the monotonic clock never jumped


@pytest.fixture
def stepped(tmp_path: Path) -> Iterator[tuple[BankSystem, FakeClock]]:
    """The bank system with its coordinator on a clock the test steps."""
    clock = FakeClock(tmp_path)
    system = BankSystem(tmp_path, coordinator_env=clock.env()).start()
    try:
        yield system, clock
    finally:
        system.stop()


def test_a_forward_step_does_not_expire_a_young_transaction(stepped: tuple[BankSystem, FakeClock]) -> None:
    system, clock = stepped
    assert system.bank is not None
    tm = TransactionManager(system.coordinator.address)
    try:
        tx = tm.begin(timeout=30)
        with tx:
            system.bank.source.Apply(bank_pb2.ApplyRequest(account="alice", amount=-5), timeout=10)
            system.bank.target.Apply(bank_pb2.ApplyRequest(account="bob", amount=5), timeout=10)
            time.sleep(1)
            clock.step(STEP)
        info = system.status(tx.gtrid)
    finally:
        tm.close()
    assert TxStatus(info.status) == TxStatus.COMMITTED, info
    assert system.balance("bank-a", "alice") == 995 and system.balance("bank-b", "bob") == 1005
