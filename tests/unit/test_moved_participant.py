"""A phase-two answer that arrives after its branch was closed (by a report or an operator) does
not overwrite the closing record when the log is replayed.

Participants that move, resolve their branch or never come back, on real processes, are in
tests/system/test_moved_participant.py.
"""

from __future__ import annotations

from xatm.coordinator import protocol as sm
from xatm.coordinator.journal import RecordFactory as R
from xatm.coordinator.journal import replay
from xatm.participant.xa import BranchStatus as B
from xatm.participant.xa import Phase, XaCode


def test_a_late_answer_does_not_overwrite_the_record_that_closed_the_branch() -> None:
    # A phase-two call still out when the branch was closed (by a report or an operator) answers
    # later; replay must keep the closing result, not the late one.
    tx = sm.Transaction(gtrid="n1.late", timeout_ms=1000)
    sm.enlist(tx, "b0", "rm0", "127.0.0.1:1")
    branch = tx.branches["b0"]
    branch.status = B.PREPARED
    records = [R.decision(tx, 2.0)]  # carries the transaction: nothing of it is logged before
    branch.status = B.HEURISTICALLY_COMPLETED
    records.append(R.branch_result(tx, branch, Phase.COMMIT, XaCode.XA_HEURCOM, "resolved", 3.0))
    records.append(R.late_result(tx, "b0", Phase.COMMIT, XaCode.XAER_RMFAIL, "UNAVAILABLE", 4.0))
    replayed = replay(records)["n1.late"].branches["b0"]
    assert (replayed.status, replayed.last_code, replayed.last_reason) == (
        B.HEURISTICALLY_COMPLETED,
        XaCode.XA_HEURCOM,
        "resolved",
    )
