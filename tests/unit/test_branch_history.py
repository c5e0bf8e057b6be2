"""BranchHistory: every XA code each branch answered, from the records going to (and replayed
from) the log, through a checkpoint and a restart."""

from __future__ import annotations

import asyncio

import pytest

from xatm.coordinator.journal import RecordFactory as R
from xatm.coordinator.protocol import Branch, Transaction
from xatm.coordinator.server.console import history
from xatm.coordinator.server.console.history import BranchHistory
from xatm.coordinator.txlog.memory import LogStore, MemoryLog
from xatm.participant.xa import BranchStatus, Phase, TxStatus, XaCode


def _tx(gtrid: str) -> Transaction:
    tx = Transaction(gtrid=gtrid, timeout_ms=1000, status=TxStatus.COMMITTING)
    tx.branches["b1"] = Branch("b1", "rm-a", "127.0.0.1:1", status=BranchStatus.PREPARED)
    return tx


def test_answers_are_kept_in_order_and_survive_checkpoint_and_restart() -> None:
    store = LogStore()
    tx, other = _tx("n.1"), _tx("n.2")
    branch = tx.branches["b1"]

    async def first_life() -> BranchHistory:
        log = BranchHistory(MemoryLog(store))
        await log.open()
        await log.append(R.branch_result(tx, branch, Phase.PREPARE, XaCode.XA_OK, "", 10.0))
        for attempt in range(3):
            await log.append(
                R.branch_result(
                    tx, branch, Phase.COMMIT, XaCode.XAER_RMFAIL, f"down {attempt}", 11.0 + attempt
                )
            )
        await log.append(R.branch_result(other, other.branches["b1"], Phase.PREPARE, XaCode.XA_OK, "", 12.0))
        # The engine kept only tx (with its last answer): other was dropped, its answers go too.
        branch.last_code, branch.last_phase, branch.last_reason = XaCode.XAER_RMFAIL, Phase.COMMIT, "down 2"
        await log.checkpoint([R.snapshot(tx, 20.0)])
        await log.close()
        return log

    log = asyncio.run(first_life())
    answers = log.answers("n.1")["b1"]
    assert [(a.phase, a.code, a.reason) for a in answers] == [
        (Phase.PREPARE, XaCode.XA_OK, ""),
        (Phase.COMMIT, XaCode.XAER_RMFAIL, "down 0"),
        (Phase.COMMIT, XaCode.XAER_RMFAIL, "down 1"),
        (Phase.COMMIT, XaCode.XAER_RMFAIL, "down 2"),
    ]
    assert not any(a.snapshot for a in answers) and answers[0].time == 10.0
    assert log.answers("n.2") == {}

    async def second_life() -> BranchHistory:
        reopened = BranchHistory(MemoryLog(store))
        list(await reopened.open())  # the snapshot, then what was appended after it
        branch.status = BranchStatus.COMMITTED
        await reopened.append(R.branch_result(tx, branch, Phase.COMMIT, XaCode.XA_OK, "", 30.0))
        await reopened.close()
        return reopened

    reopened = asyncio.run(second_life())
    again = reopened.answers("n.1")["b1"]
    assert [(a.code, a.snapshot) for a in again] == [(XaCode.XAER_RMFAIL, True), (XaCode.XA_OK, False)]
    assert again[-1].status is BranchStatus.COMMITTED


def test_a_branch_retried_for_long_keeps_its_newest_answers_in_bounded_space(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(history, "MAX_ANSWERS", 3)
    monkeypatch.setattr(history, "_TRIM_FROM", 512)
    tx = _tx("n.1")
    branch = tx.branches["b1"]

    async def retried() -> BranchHistory:
        log = BranchHistory(MemoryLog(LogStore()))
        await log.open()
        for attempt in range(100):
            reason = f"down {attempt}"
            await log.append(
                R.branch_result(tx, branch, Phase.COMMIT, XaCode.XAER_RMFAIL, reason, 1.0 + attempt)
            )
            assert len(log._answers["n.1"]) <= 2 * 512
        await log.close()
        return log

    log = asyncio.run(retried())
    assert [(a.reason, a.time) for a in log.answers("n.1")["b1"]] == [
        ("down 97", 98.0),
        ("down 98", 99.0),
        ("down 99", 100.0),
    ]
