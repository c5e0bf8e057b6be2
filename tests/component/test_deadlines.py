"""Transaction deadlines through the engine: one timer for all open transactions, timeouts in
deadline order, no timeout for a transaction that ended first."""

from __future__ import annotations

import asyncio
import logging
import random

import pytest
from prometheus_client import REGISTRY

from tests.component.conftest import Rig, until
from tests.loop_timers import counting_timers
from xatm.participant.xa import Phase, XaCode
from xatm.participant.xa import TxStatus as S


def _timed_out(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The gtrids the engine logged as timed out, in the order it did."""
    lines = [r.getMessage() for r in caplog.records]
    return [line.split()[0] for line in lines if " timed out in " in line and line.endswith("rolling back")]


async def test_transactions_held_open_do_not_arm_a_timer_each(rig: Rig) -> None:
    """Begun and enlisted eagerly, never completed: their deadlines share one loop timer."""
    await rig.start()
    armed = counting_timers(asyncio.get_running_loop())
    txs = [await rig.tx("a", "b", timeout_ms=600_000) for _ in range(300)]
    assert all(tx.status == S.CREATED for tx in txs)
    assert len(armed) <= 1


async def test_timeouts_roll_back_in_deadline_order(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    await rig.start()
    timeouts = list(range(40, 240, 10))
    random.Random(3).shuffle(timeouts)  # shorter timeouts begun after longer ones
    txs = [await rig.tx("a", timeout_ms=ms) for ms in timeouts]
    caplog.set_level(logging.INFO, logger="xatm.coordinator")
    await until("all rolled back", lambda: all(tx.status == S.ROLLEDBACK for tx in txs))
    assert all(tx.rollback_code == XaCode.XA_RBTIMEOUT for tx in txs)
    timed_out = _timed_out(caplog)
    by_deadline = sorted(txs, key=lambda tx: tx.deadline_mono)
    assert timed_out == [tx.gtrid for tx in by_deadline]


async def test_a_transaction_completed_before_its_deadline_is_not_timed_out(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    engine = await rig.start()
    caplog.set_level(logging.INFO, logger="xatm.coordinator")
    done = await rig.tx("a", "b", timeout_ms=60)
    later = await rig.tx("c", timeout_ms=120)
    await engine.commit(done.gtrid)
    await until("the later one timed out", lambda: later.status == S.ROLLEDBACK)
    assert done.status == S.COMMITTED and done.rollback_code is None
    timed_out = _timed_out(caplog)
    assert timed_out == [later.gtrid]
    phases = sorted(c.phase for c in rig.peers.calls if c.xid.gtrid == done.gtrid)
    assert phases == sorted([Phase.PREPARE, Phase.PREPARE, Phase.COMMIT, Phase.COMMIT])
    assert REGISTRY.get_sample_value("xatm_transactions_overdue", {"status": "Created"}) == 0
