"""The crash matrix: kill -9 at every protocol boundary, restart, and check the outcome.

For each failpoint on the commit and rollback paths, the process that owns it is restarted with
the failpoint armed as ``crash`` (os._exit at once: no cleanup, like kill -9), a transfer runs
into it, and the process is restarted without it. Then, within a bounded wait:

* the transaction is final and every branch agrees with the durable decision — the coordinator's
  status when it knows the gtrid, presumed abort (nothing applied) when it has no record;
* no bank holds a prepared branch (the Participant service's Recover answers nothing);
* both accounts hold exactly the balances of that outcome, so money is conserved;
* what the initiator was told is true: "committed" is Committed, "rolledback" is rolled back;
* the stores themselves, read directly beside the running banks, agree: those balances, and all
  the money in both stores the same as before the case;
* the accounts are usable again (their locks were released): a follow-up transfer commits,
  and neither store keeps a branch or a row lock once everything is final.

A last test kills the coordinator after a checkpoint that ran between its durable commit
decision and phase two: the checkpoint must keep the decision.

One coordinator and two banks serve the whole matrix (restarting only the process a case
crashes); each case works on accounts of its own, so no case can see another's money.

Here the banks keep their accounts in SQLite files. tests/system/test_pg_crash_matrix.py runs the same
cases (``CASES``, ``run_case``, ``checkpoint_case``) with both banks on PostgreSQL: only the
function that builds the system differs (``Build``), and each store is read through its
``tests.bank_system.Store``.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest

from tests.bank_system import BankSystem
from tests.chaos import (
    CRASH_EXIT,
    eventually,
    fast_recovery,
    logs,
    prepared_xids,
    processes,
    store_accounts,
    store_total,
    wait_final,
    wait_no_prepared,
    wait_quiescent,
    wait_stores_clean,
)
from xatm.coordinator.tools.bank._proto import bank_pb2, bank_pb2_grpc
from xatm.participant import TransactionRolledBack, XatmError, intercept_channel
from xatm.participant.client.context import use
from xatm.participant.client.initiator import (
    Transaction,
    TransactionError,
    TransactionOutcomeUnknown,
)
from xatm.participant.xa import BranchStatus, TxStatus

SEED = 1000
AMOUNT = 100
#: The timeout of the transactions the "timeout" scenario lets expire (long enough for two calls).
TX_TIMEOUT = 3.0
#: Bound of every wait in a case: generous, since colleagues load the same two cores.
PATIENCE = 60.0
#: Timeout of a case's transaction. A branch the crashed coordinator forgot stays locked at its
#: participant until the transaction's deadline has passed (plus its call timeout): well within
#: PATIENCE, so that the follow-up transfer on the same accounts can commit.
CASE_TIMEOUT = 10.0


# ------------------------------------------------------------------ scenarios


@dataclass
class Run:
    """One case's transaction as the initiator lived it."""

    system: BankSystem
    src: str  # account in bank-a
    dst: str  # account in bank-b
    gtrid: str = ""
    #: What the initiator was told: committed, rolledback or unknown.
    seen: str = ""
    detail: str = ""
    error: BaseException | None = None
    _stubs: dict[str, bank_pb2_grpc.AccountsStub] = field(default_factory=dict)

    def apply(self, bank: str, account: str, amount: int) -> None:
        """Business call inside the active transaction (the context travels in metadata)."""
        if bank not in self._stubs:
            channel = grpc.insecure_channel(self.system.banks[bank].address)
            self.system._channels.append(channel)
            self._stubs[bank] = bank_pb2_grpc.AccountsStub(intercept_channel(channel))
        self._stubs[bank].Apply(bank_pb2.ApplyRequest(account=account, amount=amount), timeout=10)

    def begin(self, timeout: float | None = CASE_TIMEOUT) -> Transaction:
        assert self.system.bank is not None
        tx = self.system.bank.tm.begin(timeout=timeout)
        self.gtrid = tx.gtrid
        return tx

    def commit(self, tx: Transaction) -> None:
        try:
            tx.commit()
            self.seen, self.detail = "committed", "committed"
        except TransactionRolledBack as err:
            self.seen, self.detail = "rolledback", str(err)
        except TransactionOutcomeUnknown as err:
            self.seen, self.detail = "unknown", str(err)
        except TransactionError as err:
            self.seen, self.detail = f"outcome {err.outcome.name}", str(err)
        except XatmError as err:
            self.seen, self.detail = "unknown", f"{err.status.name}: {err.message}"

    def rollback(self, tx: Transaction) -> None:
        try:
            tx.rollback()
            self.seen, self.detail = "rolledback", "rolled back by the initiator"
        except XatmError as err:
            self.seen, self.detail = "unknown", f"{err.status.name}: {err.message}"


def transfer(run: Run) -> None:
    """The bank example's transfer of AMOUNT from bank-a to bank-b: commits unless a crash intervenes."""
    assert run.system.bank is not None
    result = run.system.bank.transfer(run.src, run.dst, AMOUNT, timeout=CASE_TIMEOUT)
    run.gtrid, run.seen, run.detail = result.gtrid, result.outcome, result.detail


def refused(run: Run) -> None:
    """A transfer bank-a cannot cover: bank-a votes XA_RBINTEGRITY, prepared bank-b is rolled back."""
    assert run.system.bank is not None
    result = run.system.bank.transfer(run.src, run.dst, SEED * 5, timeout=CASE_TIMEOUT)
    run.gtrid, run.seen, run.detail = result.gtrid, result.outcome, result.detail


def refused_by_b(run: Run) -> None:
    """bank-b votes no (its debit cannot be covered), so prepared bank-a gets the rollback."""
    tx = run.begin()
    with use(tx.context):
        run.apply("bank-a", run.src, -AMOUNT)
        run.apply("bank-b", run.dst, -SEED * 5)
    run.commit(tx)


def initiator_rollback(run: Run) -> None:
    """Both branches do their work, then the initiator rolls back (active branches are rolled back)."""
    tx = run.begin()
    with use(tx.context):
        run.apply("bank-a", run.src, -AMOUNT)
        run.apply("bank-b", run.dst, AMOUNT)
    run.rollback(tx)


def timeout(run: Run) -> None:
    """Both branches do their work, the initiator stalls, the transaction timeout rolls it back."""
    tx = run.begin(timeout=TX_TIMEOUT)
    with use(tx.context):
        run.apply("bank-a", run.src, -AMOUNT)
        run.apply("bank-b", run.dst, AMOUNT)
    deadline = time.monotonic() + PATIENCE
    while time.monotonic() < deadline:
        try:
            if TxStatus(tx.status().status) != TxStatus.CREATED:
                break
        except XatmError:
            break  # the coordinator crashed at its rollback
        time.sleep(0.1)
    run.commit(tx)  # too late: the answer must be a rollback (or unknown while the coordinator is down)


#: Scenario -> (its function, the balance changes (src, dst) if it committed).
SCENARIOS: dict[str, tuple[Callable[[Run], None], tuple[int, int]]] = {
    "transfer": (transfer, (-AMOUNT, AMOUNT)),
    "refused": (refused, (-SEED * 5, SEED * 5)),
    "refused_by_b": (refused_by_b, (-AMOUNT, -SEED * 5)),
    "initiator_rollback": (initiator_rollback, (-AMOUNT, AMOUNT)),
    "timeout": (timeout, (-AMOUNT, AMOUNT)),
}


@dataclass(frozen=True)
class Case:
    failpoint: str
    process: str  # the process armed, crashed and restarted: coordinator, bank-a or bank-b
    scenario: str
    #: The only outcome the protocol allows here; None when either is right (as the log decides).
    expect: str | None

    @property
    def id(self) -> str:
        suffix = "" if self.scenario == "transfer" else f"-{self.scenario}"
        return f"{self.failpoint}@{self.process}{suffix}"


C, R = "committed", "rolledback"
BANKS = ("bank-a", "bank-b")
CASES = [
    # Commit path: a transfer that commits unless the crash prevents the decision.
    Case("coordinator.before_prepare", "coordinator", "transfer", R),
    Case("coordinator.after_prepare", "coordinator", "transfer", R),
    Case("coordinator.before_decision", "coordinator", "transfer", R),
    Case("coordinator.after_decision", "coordinator", "transfer", C),
    Case("coordinator.between_phase_two", "coordinator", "transfer", C),
    # The decision reached the OS but not the disk: either outcome, as long as it is the log's.
    Case("wal.before_fsync", "coordinator", "transfer", None),
    *(Case("participant.prepare", bank, "transfer", R) for bank in BANKS),
    *(Case("participant.after_prepare", bank, "transfer", R) for bank in BANKS),
    *(Case("participant.commit", bank, "transfer", C) for bank in BANKS),
    *(Case("participant.after_commit", bank, "transfer", C) for bank in BANKS),
    # Rollback path: a vote no, an initiator rollback, a transaction timeout.
    Case("coordinator.before_rollback", "coordinator", "refused", R),
    Case("coordinator.before_rollback", "coordinator", "initiator_rollback", R),
    Case("coordinator.before_rollback", "coordinator", "timeout", R),
    Case("coordinator.between_phase_two", "coordinator", "initiator_rollback", R),
    Case("participant.rollback", "bank-a", "refused_by_b", R),  # a prepared branch
    Case("participant.rollback", "bank-b", "refused", R),  # a prepared branch
    Case("participant.rollback", "bank-a", "initiator_rollback", R),  # an active branch
    Case("participant.rollback", "bank-b", "timeout", R),  # an active branch
]


# ------------------------------------------------------------------ the shared system

#: Builds a system (not started) in a fresh directory, with extra coordinator settings: what
#: differs between the SQLite and the PostgreSQL matrix is where its banks keep their accounts.
Build = Callable[[Path, dict[str, str]], BankSystem]


def sqlite_system(root: Path, coordinator_env: dict[str, str]) -> BankSystem:
    return BankSystem(root, coordinator_env=coordinator_env)


class SharedSystem:
    """One system for the module; replaced by a fresh one after a case fails (no cascades)."""

    def __init__(self, root: Path, build: Build):
        self.root = root
        self.build = build
        self.system: BankSystem | None = None
        self.broken = False
        self._generation = itertools.count()

    def get(self) -> BankSystem:
        if self.system is not None and self.broken:
            self.close()
        if self.system is None:
            root = self.root / f"system{next(self._generation)}"
            root.mkdir()
            self.system = fast_recovery(self.build(root, {})).start()
            self.broken = False
        return self.system

    def close(self) -> None:
        if self.system is not None:
            for proc in processes(self.system).values():
                proc.kill()
            self.system.stop()
            self.system = None


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedSystem]:
    holder = SharedSystem(tmp_path_factory.mktemp("crash-matrix"), sqlite_system)
    yield holder
    holder.close()


_accounts = itertools.count()


def _ready(system: BankSystem) -> None:
    """Everything runs, nothing is in flight, and every channel works (a read-only transfer commits)."""
    for name, proc in processes(system).items():
        assert proc.alive, f"{name} is down before the case:\n{logs(system)}"
    wait_quiescent(system, PATIENCE)
    wait_no_prepared(system, PATIENCE)
    assert system.bank is not None
    bank = system.bank
    eventually(
        "a read-only transfer to commit",
        lambda: True if bank.transfer("alice", "bob", 0).committed else None,
        PATIENCE,
        interval=0.3,
    )


def _reconnect(system: BankSystem, bank: str, failpoint: str, src: str, dst: str) -> None:
    """Wait until the coordinator reaches the restarted bank again, without passing its failpoint.

    While the bank was down the coordinator's recover scan failed to connect, so its channel
    may sit in gRPC's reconnect backoff and fail calls at once for a while. A probe transaction
    that the armed verb never sees proves the channel is back: one branch (one-phase commit, no
    prepare, no rollback) when prepare or rollback is armed, two read-only branches (prepare
    only, no phase two) when commit is.
    """
    assert system.bank is not None
    tm = system.bank.tm
    account = src if bank == "bank-a" else dst
    one_phase = failpoint.split(".")[1] not in ("commit", "after_commit")
    stub = Run(system, src, dst)

    def probe() -> bool | None:
        if one_phase:
            tx = tm.begin(timeout=PATIENCE / 4)
            try:
                with use(tx.context):
                    stub.apply(bank, account, 0)
            except grpc.RpcError:
                run = Run(system, src, dst)
                run.rollback(tx)  # nothing can be armed on a rollback that reaches no branch
                raise
            tx.commit()
            gtrid = tx.gtrid
        else:
            result = system.bank.transfer(src, dst, 0)  # type: ignore[union-attr]
            if not result.committed:
                return None
            gtrid = result.gtrid
        info = wait_final(system, gtrid, PATIENCE)
        return True if info is not None and info.status == TxStatus.COMMITTED else None

    eventually(f"the coordinator to reach {bank} again", probe, PATIENCE, interval=0.2)


def _follow_up(system: BankSystem, src: str, dst: str) -> None:
    """Transfer 1 from ``src`` to ``dst`` until one attempt commits (an attempt whose answer was
    lost counts if the coordinator committed it), within PATIENCE."""
    assert system.bank is not None
    deadline = time.monotonic() + PATIENCE
    attempts = []
    while time.monotonic() < deadline:
        try:
            result = system.bank.transfer(src, dst, 1)
        except grpc.RpcError as err:  # a business call failed (a channel still reconnecting): no commit
            attempts.append(f"{err.code().name}: {err.details()}")  # type: ignore[attr-defined]
            time.sleep(0.3)
            continue
        except XatmError as err:  # begin failed: nothing was begun
            attempts.append(f"begin: {err.status.name}: {err.message}")
            time.sleep(0.3)
            continue
        attempts.append(f"{result.outcome}: {result.detail[:200]}")
        if result.committed:
            return
        if result.outcome == "unknown":
            info = wait_final(system, result.gtrid, PATIENCE)
            if info is not None and info.status == TxStatus.COMMITTED:
                return
        time.sleep(0.3)
    raise AssertionError(f"no follow-up transfer on {src}, {dst} committed: {attempts[-5:]}\n{logs(system)}")


def _balances(system: BankSystem, src: str, dst: str) -> tuple[int, int]:
    """The balances as the banks answer them; the stores, read directly, must hold the same."""
    balances = system.balance("bank-a", src), system.balance("bank-b", dst)
    stored = store_accounts(system)
    assert (stored["bank-a"].get(src), stored["bank-b"].get(dst)) == balances, (balances, stored)
    return balances


# ------------------------------------------------------------------ the matrix


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_crash(shared: SharedSystem, case: Case) -> None:
    run_case(shared, case)


#: A look at the system while the crashed process is down, before its restart.
WhileDown = Callable[[BankSystem, Case], None]


def run_case(shared: SharedSystem, case: Case, while_down: WhileDown | None = None) -> None:
    """One case on the shared system; a failed case makes the next one start a fresh system."""
    system = shared.get()
    try:
        _run_case(system, case, while_down)
    except BaseException:
        shared.broken = True
        raise


def _run_case(system: BankSystem, case: Case, while_down: WhileDown | None) -> None:
    n = next(_accounts)
    src, dst = f"a{n}", f"b{n}"
    system.apply("bank-a", src, SEED)  # outside a transaction: a local commit opens the account
    system.apply("bank-b", dst, SEED)
    _ready(system)
    before = system.total()
    money = store_total(system)

    # Arm: restart the process with its failpoint set to crash.
    victim = processes(system)[case.process]
    victim.stop()
    victim.start(extra_env={"XATM_FAILPOINTS": f"{case.failpoint}=crash"})
    if victim is system.coordinator and system.bank is not None:
        # A new start (incarnation) refuses gtrids made for the last one: the initiator, which
        # has not talked to it yet, learns it with a Begin first, as after its first refusal.
        system.bank.tm.node_id = None
    if case.process in system.banks:
        _reconnect(system, case.process, case.failpoint, src, dst)

    scenario, deltas = SCENARIOS[case.scenario]
    run = Run(system, src, dst)

    def drive() -> None:
        try:
            scenario(run)
        except BaseException as err:  # reported by the main thread
            run.error = err

    initiator = threading.Thread(target=drive, name=f"initiator-{case.id}", daemon=True)
    initiator.start()

    # The failpoint fires: the process dies at once, with the failpoint's exit code.
    try:
        code = victim.wait_exit(PATIENCE)
    except Exception:
        pytest.fail(f"{case.process} never reached {case.failpoint}; run={run}\n{logs(system)}")
    assert code == CRASH_EXIT, f"{case.process} exited {code}, not by the failpoint\n{victim.tail()}"
    assert f"failpoint {case.failpoint}: crash" in victim.tail(200)
    if while_down is not None:
        while_down(system, case)

    # Restart without the failpoint and let recovery finish the job.
    victim.start(wait=PATIENCE)
    initiator.join(PATIENCE)
    assert not initiator.is_alive(), f"the initiator is stuck: {run}\n{logs(system)}"
    if run.error is not None:
        raise AssertionError(f"the initiator failed: {run.error!r}\n{logs(system)}") from run.error
    assert run.gtrid and run.seen in (C, R, "unknown"), run

    info = wait_final(system, run.gtrid, PATIENCE)
    if info is None:
        outcome = R  # no record at all: presumed abort
    else:
        status = TxStatus(info.status)
        assert status in (TxStatus.COMMITTED, TxStatus.ROLLEDBACK), f"{status.label}: {info}"
        outcome = C if status == TxStatus.COMMITTED else R
        wanted = BranchStatus.COMMITTED if outcome == C else BranchStatus.ROLLEDBACK
        assert len(info.branches) == 2, info
        assert all(BranchStatus(b.status) == wanted for b in info.branches), info

    if case.expect is not None:
        assert outcome == case.expect, f"{case.id} ended {outcome}, expected {case.expect}: {run}\n{info}"
    if run.seen in (C, R):
        assert outcome == run.seen, f"the initiator was told {run.seen} but it {outcome}: {run}\n{info}"

    print(f"{case.id}: the initiator was told {run.seen}; the transaction {outcome}")
    wait_no_prepared(system, PATIENCE)
    expected = (SEED + deltas[0], SEED + deltas[1]) if outcome == C else (SEED, SEED)
    assert _balances(system, src, dst) == expected, f"{outcome}: {run}"
    assert system.total() == before
    assert store_total(system) == money, "money was created or lost in the stores"

    # The accounts are usable again: every lock the branches held was released.
    _follow_up(system, src, dst)
    assert _balances(system, src, dst) == (expected[0] - 1, expected[1] + 1)
    wait_quiescent(system, PATIENCE)
    wait_no_prepared(system, PATIENCE)
    wait_stores_clean(system, PATIENCE)  # not a branch, not a row lock left behind
    assert store_total(system) == money


def test_checkpoint_between_decision_and_phase_two_keeps_the_decision(tmp_path: Path) -> None:
    checkpoint_case(tmp_path, sqlite_system)


def checkpoint_case(root: Path, build: Build) -> None:
    """kill -9 after a checkpoint that ran while a durable commit decision was not yet applied.

    The coordinator checkpoints every 0.2 s and sleeps at ``coordinator.after_decision``, so
    checkpoints run while the decision is on disk but the transaction still reads Prepared in
    memory. The checkpoint replaces the log: it must keep the decision, or the restarted
    coordinator presumes abort for a transaction it had decided to commit.
    """
    env = {"XATM_CHECKPOINT_INTERVAL": "0.2"}
    system = fast_recovery(build(root, env)).start()
    try:
        coordinator = system.coordinator
        coordinator.stop()
        coordinator.start(extra_env={"XATM_FAILPOINTS": "coordinator.after_decision=sleep(120000)"})
        decisions = "xatm_phase_duration_seconds_count"
        before = system.metric(decisions, phase="decision")
        money = store_total(system)
        run = Run(system, "alice", "bob")
        initiator = threading.Thread(target=transfer, args=(run,), daemon=True)
        initiator.start()

        # The decision is durable (its write returned); the engine now sleeps before phase two.
        eventually(
            "the commit decision to be durable",
            lambda: True if system.metric(decisions, phase="decision") > before else None,
            PATIENCE,
        )
        wal = root / "coordinator" / "wal"

        def newest() -> int:
            return max(int(p.stem) for p in wal.glob("*.wal"))

        seen = newest()
        eventually("a checkpoint after the decision", lambda: True if newest() > seen else None, PATIENCE)
        held = {name: len(prepared_xids(proc.address)) for name, proc in system.banks.items()}
        assert held == {"bank-a": 1, "bank-b": 1}, "phase two must not have begun yet"
        coordinator.kill()

        coordinator.start(wait=PATIENCE)
        initiator.join(PATIENCE)
        # Unknown, or committed when the initiator's Commit, asked again, reached the restarted
        # coordinator: never anything else.
        assert run.seen in ("unknown", "committed"), run
        info = wait_final(system, run.gtrid, PATIENCE)
        assert info is not None and TxStatus(info.status) == TxStatus.COMMITTED, info
        assert all(BranchStatus(b.status) == BranchStatus.COMMITTED for b in info.branches), info
        wait_no_prepared(system, PATIENCE)
        assert _balances(system, "alice", "bob") == (SEED - AMOUNT, SEED + AMOUNT)
        wait_stores_clean(system, PATIENCE)
        assert store_total(system) == money
    finally:
        system.stop()
