"""A commit answer claims only what is known: real processes, failing participants, a slow decision.

``TX_OK`` means committed (one-phase: the branch said XA_OK; two-phase: the decision is durable).
A branch that rolled back its work is ``TX_ROLLBACK``. Anything not known when the commit wait
ends is ``TX_HAZARD`` beside a non-final status (outcome unknown yet), and whatever the system
later settles on agrees with the data in the stores.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.bank_system import BankSystem
from tests.chaos import wait_final
from xatm.participant import TransactionError, XatmError
from xatm.participant.errors import Status
from xatm.participant.xa import TxOutcome, TxStatus, XaCode

#: A short commit wait so an unknown outcome is answered quickly; call_timeout stays 1 s.
FAST = {"XATM_COMMIT_WAIT": "1"}
FINAL = (TxStatus.COMMITTED, TxStatus.ROLLEDBACK, TxStatus.HEURISTICALLY_COMPLETED)


@pytest.fixture
def systems(tmp_path: Path) -> Iterator[list[BankSystem]]:
    started: list[BankSystem] = []
    yield started
    for system in started:
        system.stop()


def _start(systems: list[BankSystem], root: Path, bank_a_failpoints: str = "", **env: str) -> BankSystem:
    system = BankSystem(root, coordinator_env={**FAST, **env})
    systems.append(system)
    bank_env = {"bank-a": {"XATM_FAILPOINTS": bank_a_failpoints}} if bank_a_failpoints else None
    return system.start(bank_env)


def _one_branch_commit(system: BankSystem) -> tuple[str, TransactionError | None]:
    """alice += 50 on bank-a alone (one-phase), committed by leaving the block."""
    assert system.bank is not None
    tm = system.bank.tm
    gtrid = ""
    try:
        with tm.begin() as tx:
            gtrid = tx.gtrid
            system.apply("bank-a", "alice", 50)
    except TransactionError as error:
        return gtrid, error
    return gtrid, None


def _settled(system: BankSystem, gtrid: str, timeout: float = 30.0) -> TxStatus:
    """Wait until the transaction is final, then check the store agrees with its status."""
    info = wait_final(system, gtrid, timeout)
    assert info is not None, f"{gtrid} is unknown to the coordinator"
    status = TxStatus(info.status)
    balance = system.balance("bank-a", "alice")
    if status == TxStatus.COMMITTED:
        assert balance == 1050
    elif status == TxStatus.ROLLEDBACK:
        assert balance == 1000
    else:
        # Only an honest "unknown" may end heuristic here, never a claimed commit.
        assert {XaCode(b.last_code) for b in info.branches} == {XaCode.XA_HEURHAZ}
    assert system.stores["bank-a"].leftovers() == {}
    return status


@pytest.mark.parametrize("code", ["XAER_RMERR", "XA_RBROLLBACK"])
def test_one_phase_failure_that_rolled_back_answers_rollback(
    systems: list[BankSystem], tmp_path: Path, code: str
) -> None:
    system = _start(systems, tmp_path, f"participant.commit=return({code})")
    gtrid, error = _one_branch_commit(system)
    assert error is not None and error.outcome == TxOutcome.TX_ROLLBACK
    info = system.status(gtrid)
    assert TxStatus(info.status) == TxStatus.ROLLEDBACK
    assert XaCode(info.rollback_code) == XaCode[code]
    assert _settled(system, gtrid) == TxStatus.ROLLEDBACK


@pytest.mark.parametrize(
    "failpoint",
    [
        "participant.commit=crash",
        "participant.commit=error(UNAVAILABLE)",
        "participant.commit=return(XAER_RMFAIL)",
    ],
)
def test_one_phase_commit_not_acknowledged_is_unknown_not_ok(
    systems: list[BankSystem], tmp_path: Path, failpoint: str
) -> None:
    """The participant dies or keeps failing before it commits: the answer must not be TX_OK."""
    system = _start(systems, tmp_path, failpoint)
    gtrid, error = _one_branch_commit(system)
    assert error is not None, "commit claimed TX_OK although the branch never said XA_OK"
    assert error.outcome == TxOutcome.TX_HAZARD
    assert error.transaction_status == TxStatus.COMMITTING
    if not failpoint.endswith("crash"):
        assert system.balance("bank-a", "alice") == 1000  # the failpoint stood before the RM
    # The participant comes back healthy: the retried one-phase commit settles it truthfully.
    bank = system.banks["bank-a"]
    bank.kill()
    bank.start()
    _settled(system, gtrid)


def test_one_phase_commit_acknowledged_late_is_unknown_then_settled_truthfully(
    systems: list[BankSystem], tmp_path: Path
) -> None:
    """A participant slower than the call deadline answers after the commit answer was given.

    Whether the slow call or a retry reaches the store first decides between Committed and an
    honest XA_HEURHAZ; ``_settled`` checks the store agrees with either."""
    system = _start(systems, tmp_path, "participant.commit=1*sleep(2500)")
    gtrid, error = _one_branch_commit(system)
    assert error is not None and error.outcome == TxOutcome.TX_HAZARD
    assert _settled(system, gtrid) in FINAL


def test_two_phase_answer_before_a_durable_decision_is_unknown(
    systems: list[BankSystem], tmp_path: Path
) -> None:
    """Prepared is not committed: if the coordinator dies now, presumed abort rolls back."""
    system = _start(systems, tmp_path, XATM_FAILPOINTS="coordinator.before_decision=sleep(8000)")
    assert system.bank is not None
    with pytest.raises(TransactionError) as raised, system.bank.tm.begin() as tx:
        system.apply("bank-a", "alice", -100)
        system.apply("bank-b", "bob", 100)
    assert raised.value.outcome == TxOutcome.TX_HAZARD
    assert raised.value.status in (TxStatus.PREPARING, TxStatus.PREPARED)
    # The coordinator dies before its decision reached the log: presumed abort, as answered.
    system.coordinator.kill()
    system.coordinator.start(extra_env={"XATM_FAILPOINTS": ""})
    info = system.wait_status(tx.gtrid, TxStatus.ROLLEDBACK)
    assert info.recovered
    assert (system.balance("bank-a", "alice"), system.balance("bank-b", "bob")) == (1000, 1000)


def test_a_heuristic_failpoint_is_acted_out_at_the_store(systems: list[BankSystem], tmp_path: Path) -> None:
    """return(XA_HEURRB) at a two-phase commit rolls bank-a's branch back for real: the answer
    (TX_MIXED) and the stores agree, and no resolver commits the branch later."""
    system = _start(systems, tmp_path, "participant.commit=return(XA_HEURRB)")
    assert system.bank is not None
    with pytest.raises(TransactionError) as raised, system.bank.tm.begin() as tx:
        system.apply("bank-a", "alice", -100)
        system.apply("bank-b", "bob", 100)
    assert raised.value.outcome == TxOutcome.TX_MIXED
    info = wait_final(system, tx.gtrid, 30)
    assert info is not None and TxStatus(info.status) == TxStatus.HEURISTICALLY_COMPLETED
    assert (system.balance("bank-a", "alice"), system.balance("bank-b", "bob")) == (1000, 1100)
    assert system.stores["bank-a"].leftovers() == {}


def test_a_one_phase_heuristic_commit_failpoint_commits(systems: list[BankSystem], tmp_path: Path) -> None:
    system = _start(systems, tmp_path, "participant.commit=return(XA_HEURCOM)")
    gtrid, error = _one_branch_commit(system)
    assert error is None  # a heuristic commit agreeing with the commit is TX_OK
    info = wait_final(system, gtrid, 30)
    assert info is not None and TxStatus(info.status) == TxStatus.HEURISTICALLY_COMPLETED
    assert system.balance("bank-a", "alice") == 1050
    assert system.stores["bank-a"].leftovers() == {}


def test_a_commit_whose_reply_is_lost_says_the_outcome_is_unknown(
    systems: list[BankSystem], tmp_path: Path
) -> None:
    """The coordinator dies after its decision is durable: the initiator cannot know, and says so."""
    system = _start(systems, tmp_path, XATM_FAILPOINTS="coordinator.after_decision=crash")
    assert system.bank is not None
    with pytest.raises(XatmError) as raised, system.bank.tm.begin() as tx:
        system.apply("bank-a", "alice", -100)
        system.apply("bank-b", "bob", 100)
    assert not isinstance(raised.value, TransactionError)
    assert raised.value.status == Status.UNAVAILABLE
    assert f"the outcome of the commit of {tx.gtrid} is unknown" in raised.value.message
    system.coordinator.kill()
    system.coordinator.start(extra_env={"XATM_FAILPOINTS": ""})
    system.wait_status(tx.gtrid, TxStatus.COMMITTED)
    assert (system.balance("bank-a", "alice"), system.balance("bank-b", "bob")) == (900, 1100)
