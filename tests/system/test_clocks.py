"""Stepping a process's wall clock changes what it displays, never when anything times out.

Real processes on a libfaketime clock (tests/faketime.py) have their wall clock stepped by 45 s,
forward or back, while transactions are in flight. The pure pieces, on a stepped clock injected
in place of the ``time`` module they read, are in tests/unit/test_clocks.py.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import sys
import time
from pathlib import Path

from tests.bank_system import BankSystem
from tests.chaos import eventually, tx_info, wait_final
from tests.conftest import REPO
from tests.faketime import STEP, FakeClock
from xatm.coordinator.tools.bank._proto import bank_pb2
from xatm.coordinator.txlog.file import read_records
from xatm.coordinator.txlog.interface import LogCorrupt
from xatm.participant.client.context import use
from xatm.participant.client.initiator import TransactionRolledBack
from xatm.participant.xa import TxStatus, XaCode

_PROBE = """
import sys, time
for _ in sys.stdin:
    print(time.time(), time.monotonic(), flush=True)
"""


def test_faketime_steps_the_wall_clock_of_a_child_and_not_its_monotonic_clock(tmp_path: Path) -> None:
    clock = FakeClock(tmp_path)
    child = subprocess.Popen(
        [sys.executable, "-c", _PROBE],
        env=clock.env(),
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
    assert wall1 - wall0 >= STEP and wall1 - wall2 >= STEP  # jumped forward, then back
    assert mono0 <= mono1 <= mono2 and mono2 - mono0 < STEP  # while the monotonic clock ran on


# ------------------------------------------------------------------ real processes


def _system(tmp_path: Path, clock: FakeClock, **env: str) -> BankSystem:
    """The bank system with its coordinator on ``clock``."""
    return BankSystem(tmp_path, coordinator_env={**clock.env(), **env}).start()


def test_a_forward_step_does_not_expire_a_young_transaction(tmp_path: Path) -> None:
    """A 30 s transaction, 1 s old, commits although the coordinator's clock jumped 45 s ahead."""
    clock = FakeClock(tmp_path)
    system = _system(tmp_path, clock)
    assert system.bank is not None
    try:
        tx = system.bank.tm.begin(timeout=30)
        with contextlib.suppress(TransactionRolledBack), tx:  # the status below says why
            system.bank.source.Apply(bank_pb2.ApplyRequest(account="alice", amount=-5), timeout=10)
            system.bank.target.Apply(bank_pb2.ApplyRequest(account="bob", amount=5), timeout=10)
            time.sleep(1)
            clock.step(STEP)
        info = tx_info(system, tx.gtrid)
        assert info is not None and TxStatus(info.status) == TxStatus.COMMITTED, info
        assert system.balance("bank-a", "alice") == 995 and system.balance("bank-b", "bob") == 1005
    finally:
        system.stop()


def test_a_backward_step_neither_holds_off_a_timeout_nor_hides_it_as_overdue(tmp_path: Path) -> None:
    """Stepped 45 s back, a 3 s transaction still times out, and counts as overdue while stuck."""
    clock = FakeClock(tmp_path)
    system = _system(tmp_path, clock)
    assert system.bank is not None
    bank_a = system.banks["bank-a"].popen
    assert bank_a is not None
    try:
        tx = system.bank.tm.begin(timeout=3)
        with use(tx.context):
            system.bank.source.Apply(bank_pb2.ApplyRequest(account="alice", amount=-5), timeout=10)
        bank_a.send_signal(signal.SIGSTOP)  # its rollback cannot finish: the transaction is stuck
        clock.step(-STEP)
        eventually(
            "the timed-out transaction to count as overdue",
            lambda: True if system.metric("xatm_transactions_overdue", status="Rollingback") == 1 else None,
            timeout=30,
        )
        bank_a.send_signal(signal.SIGCONT)
        info = wait_final(system, tx.gtrid, timeout=30)
        assert info is not None and TxStatus(info.status) == TxStatus.ROLLEDBACK, info
        assert XaCode(info.rollback_code) == XaCode.XA_RBTIMEOUT, info
        assert system.balance("bank-a", "alice") == 1000
    finally:
        bank_a.send_signal(signal.SIGCONT)
        system.stop()


def _checkpointed(system: BankSystem, gtrid: str) -> bool | None:
    """True once a checkpoint wrote ``gtrid``'s snapshot: the checkpoint ran after it completed."""
    try:
        records = list(read_records(system.root / "coordinator"))
    except (FileNotFoundError, LogCorrupt):  # a checkpoint swapped segments mid-read
        return None
    snapshots = {r.gtrid for _, _, r in records if r.WhichOneof("body") == "snapshot"}
    return True if gtrid in snapshots else None


def test_a_forward_step_or_a_restart_does_not_drop_fresh_history(tmp_path: Path) -> None:
    """Retention counts on the monotonic clock; what the log rebuilt counts from the restart.

    Retention (20 s) is shorter than the step, and long enough for the checks in between.
    """
    clock = FakeClock(tmp_path)
    system = _system(tmp_path, clock, XATM_CHECKPOINT_INTERVAL="0.3", XATM_HISTORY_RETENTION="20")
    assert system.bank is not None
    try:
        kept = system.bank.transfer("alice", "bob", 1)
        assert kept.committed, kept
        clock.step(STEP)  # ``kept`` completed 45 s ago by the wall clock, past retention
        for attempt in ("after the step", "after a restart"):
            if attempt == "after a restart":
                system.coordinator.stop()
                system.coordinator.start()
                # The manager saw its connection drop: it learns the new start at once.
                assert system.bank.transfer("alice", "bob", 1).committed
            marker = system.bank.transfer("alice", "bob", 1)
            assert marker.committed, marker
            gtrid = marker.gtrid
            eventually(f"a checkpoint {attempt}", lambda g=gtrid: _checkpointed(system, g), timeout=30)
            info = tx_info(system, kept.gtrid)
            assert info is not None and TxStatus(info.status) == TxStatus.COMMITTED, f"history lost {attempt}"
        # Retention still ends rebuilt history, counted from the restart.
        eventually(
            "rebuilt history to pass retention", lambda: tx_info(system, kept.gtrid) is None or None, 60
        )
    finally:
        system.stop()


_CLIENT = """
import sys
from xatm.coordinator.tools.bank._proto import bank_pb2
from xatm.coordinator.tools.bank.transfer import Bank

bank = Bank(*sys.argv[1:4])
tx = bank.tm.begin(timeout=30)
print("begun", flush=True)
sys.stdin.readline()  # the test steps this process's clock meanwhile
with tx:
    bank.source.Apply(bank_pb2.ApplyRequest(account="alice", amount=-5), timeout=10)
    bank.target.Apply(bank_pb2.ApplyRequest(account="bob", amount=5), timeout=10)
print(tx.gtrid, flush=True)
"""


def test_an_initiator_stepped_forward_keeps_its_transaction_deadline(tmp_path: Path) -> None:
    """The deadline an initiator caps its calls at is its own monotonic clock's, not its wall clock's."""
    clock = FakeClock(tmp_path)
    system = BankSystem(tmp_path).start()
    addresses = [system.coordinator.address, system.banks["bank-a"].address, system.banks["bank-b"].address]
    client = subprocess.Popen(
        [sys.executable, "-c", _CLIENT, *addresses],
        env={**clock.env(), "PYTHONPATH": str(REPO)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert client.stdout is not None and client.stdin is not None
        assert client.stdout.readline().strip() == "begun"
        clock.step(STEP)
        out, err = client.communicate("go\n", timeout=60)
        assert client.returncode == 0, err[-2000:]
        info = tx_info(system, out.strip())
        assert info is not None and TxStatus(info.status) == TxStatus.COMMITTED, info
    finally:
        if client.poll() is None:
            client.kill()
            client.wait()
        system.stop()
