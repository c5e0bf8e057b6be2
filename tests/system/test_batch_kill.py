"""A participant killed (SIGKILL) while a batch of phase calls to it is out.

Several transactions deposit into both banks at once. Bank-b holds its answers to the prepare
(or commit) calls after doing the work: its store shows every branch prepared (or committed)
while no answer has reached the coordinator, and then it is killed. Calls that arrive one by one
may each travel alone; the last test makes one batch carry them all for certain (a restarted
coordinator re-drives every commit it owes at once) and kills bank-b while it holds that batch.
Batches travel as messages on the coordinator's stream to each bank, so each kill breaks that
stream with branches in flight on it. Each branch of a broken batch is a failed call of its
own: an unanswered prepare rolls its transaction back, an unanswered commit is retried until
the restarted bank acknowledges it. Either way every transaction ends as its decision says, in
both stores, with nothing left prepared or locked.
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.bank_system import BankSystem
from tests.chaos import eventually, wait_final
from xatm.coordinator.tools.bank._proto import bank_pb2
from xatm.participant.client.initiator import TransactionRolledBack
from xatm.participant.xa import TxStatus

#: Transactions in flight together: fewer than either servicer's worker threads, so every branch
#: reaches the store while the others are held.
N = 4
#: Long enough that no answer leaves bank-b before it is killed.
HOLD = "sleep(60000)"


@pytest.fixture(params=[False, True], ids=["threaded", "aio"])
def system(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BankSystem]:
    # A call may wait for bank-b's held answer until bank-b is killed: no deadline ends it first.
    made = BankSystem(tmp_path, coordinator_env={"XATM_CALL_TIMEOUT": "120"}, aio=request.param)
    yield made
    made.stop()


def _deposit(system: BankSystem, n: int) -> tuple[str, str]:
    """10 into a{n} at bank-a and b{n} at bank-b in one transaction: (gtrid, its outcome)."""
    assert system.bank is not None
    tx = system.bank.tm.begin()
    try:
        with tx:
            system.bank.source.Apply(bank_pb2.ApplyRequest(account=f"a{n}", amount=10), timeout=30)
            system.bank.target.Apply(bank_pb2.ApplyRequest(account=f"b{n}", amount=10), timeout=30)
    except TransactionRolledBack:
        return tx.gtrid, "rolledback"
    return tx.gtrid, "committed"


def _kill_mid_batch(
    system: BankSystem, failpoint: str, held: str, *, restart: bool = True
) -> list[tuple[str, str]]:
    """Deposit N times at once with ``failpoint`` holding bank-b's answers; once bank-b's store
    shows every branch ``held`` ("prepared" or "committed"), SIGKILL bank-b and start it again
    without the failpoint (or, with ``restart=False``, leave everything running). Returns each
    deposit's (gtrid, outcome)."""
    system.start(bank_env={"bank-b": {"XATM_FAILPOINTS": f"{failpoint}={HOLD}"}})
    store = system.stores["bank-b"]

    def all_held() -> bool | None:
        if held == "prepared":
            states = [row[2] for row in store.leftovers().get("branches", [])]  # type: ignore[attr-defined]
            return True if states.count("prepared") == N else None
        balances = store.accounts()
        return True if all(balances.get(f"b{n}") == 10 for n in range(N)) else None

    with ThreadPoolExecutor(N) as pool:
        deposits = [pool.submit(_deposit, system, n) for n in range(N)]
        eventually(f"bank-b to hold {N} {held} branches unanswered", all_held, 60)
        if held == "prepared":
            assert not any(d.done() for d in deposits)  # no prepare answer reached the coordinator
        if restart:
            system.banks["bank-b"].kill()
            system.banks["bank-b"].start()
        return [d.result(timeout=120) for d in deposits]


def _check_end(system: BankSystem, gtrids: list[str], status: TxStatus) -> None:
    # The phase calls went as messages on the coordinator's stream to each bank, never as RPCs.
    assert system.metric("xatm_participant_rpcs_sent_total", method="BatchStream") > 0
    assert system.metric("xatm_participant_rpcs_sent_total", method="Batch") == 0
    for gtrid in gtrids:
        info = wait_final(system, gtrid, 60)
        assert info is not None and TxStatus(info.status) == status, info
    amount = 10 if status == TxStatus.COMMITTED else 0
    for name, prefix in (("bank-a", "a"), ("bank-b", "b")):
        store = system.stores[name]
        eventually(f"{name} to hold no branch", lambda s=store: True if not s.leftovers() else None, 60)
        balances = store.accounts()
        assert [balances.get(f"{prefix}{n}", 0) for n in range(N)] == [amount] * N, name


def test_killed_holding_prepare_answers_every_transaction_rolls_back(system: BankSystem) -> None:
    deposits = _kill_mid_batch(system, "participant.after_prepare", "prepared")
    assert [outcome for _, outcome in deposits] == ["rolledback"] * N
    _check_end(system, [gtrid for gtrid, _ in deposits], TxStatus.ROLLEDBACK)


def test_killed_holding_commit_answers_every_transaction_commits_once(system: BankSystem) -> None:
    deposits = _kill_mid_batch(system, "participant.after_commit", "committed")
    assert [outcome for _, outcome in deposits] == ["committed"] * N
    _check_end(system, [gtrid for gtrid, _ in deposits], TxStatus.COMMITTED)


def test_killed_holding_one_batch_of_redriven_commits_every_transaction_commits_once(
    system: BankSystem,
) -> None:
    """A restarted coordinator re-drives every commit still owed in one pass: the N commits to
    bank-b leave as one batch, which bank-b holds until it is killed."""
    deposits = _kill_mid_batch(system, "participant.after_commit", "committed", restart=False)
    system.coordinator.kill()
    bank_b = system.banks["bank-b"]
    bank_b.kill()
    bank_b.start(extra_env={"XATM_FAILPOINTS": f"participant.after_commit={HOLD}"})
    system.coordinator.start()

    def one_batch_of_all() -> bool | None:
        batches = system.metric("xatm_participant_batch_branches_count")
        small = system.metric("xatm_participant_batch_branches_bucket", le="2.0")
        return True if batches - small >= 1 else None

    eventually("a batch of more than two commits to bank-b", one_batch_of_all, 60)
    bank_b.kill()
    bank_b.start()
    _check_end(system, [gtrid for gtrid, _ in deposits], TxStatus.COMMITTED)
