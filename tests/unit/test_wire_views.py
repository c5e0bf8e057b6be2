"""The commit answer says of a transaction what its full wire description says."""

from __future__ import annotations

import pytest

from xatm.coordinator.protocol import Branch, Transaction
from xatm.coordinator.server.wire import to_completion, to_info
from xatm.participant.xa import BranchStatus, Phase, TxOutcome, TxStatus, XaCode


def transaction(rolled_back: bool) -> Transaction:
    tx = Transaction(gtrid="n1.t", timeout_ms=5000, begun_at=1_700_000_000.25)
    tx.branches["a"] = Branch("a", "rm-a", "h:1", BranchStatus.COMMITTED, XaCode.XA_OK, Phase.COMMIT, "", 1)
    tx.branches["b"] = Branch(
        "b",
        "rm-b",
        "h:2",
        BranchStatus.PREPARED,
        XaCode.XAER_RMFAIL,
        Phase.COMMIT,
        "down",
        3,
        Phase.COMMIT,
        1_700_000_001.5,
    )
    tx.branches["c"] = Branch("c", "rm-c", "h:3")
    tx.status = TxStatus.ROLLEDBACK if rolled_back else TxStatus.COMMITTING
    if rolled_back:
        tx.rollback_code, tx.rollback_reason = XaCode.XA_RBROLLBACK, "no vote"
    return tx


@pytest.mark.parametrize("rolled_back", [False, True])
def test_the_completion_carries_what_the_description_says(rolled_back: bool) -> None:
    tx = transaction(rolled_back)
    outcome = TxOutcome.TX_ROLLBACK if rolled_back else TxOutcome.TX_HAZARD
    reply = to_completion(tx, outcome)
    info = to_info(tx)
    assert reply.gtrid == info.gtrid == tx.gtrid
    assert reply.outcome == outcome
    assert reply.status == info.status
    assert list(reply.branches) == list(info.branches)
    assert [b.bqual for b in reply.branches] == ["a", "b", "c"]
    assert reply.branches[1].next_retry.ToNanoseconds() == 1_700_000_001_500_000_000
    assert (reply.rollback_code, reply.rollback_reason) == (info.rollback_code, info.rollback_reason)
