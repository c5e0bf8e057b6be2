"""A participant that never answers again is forgotten once no branch waits for it any more."""

from __future__ import annotations

import asyncio

from prometheus_client import REGISTRY

from tests.component.conftest import Rig, endpoint, until, with_settings
from tests.component.fakes import UNREACHABLE_REASON, Answer
from xatm.participant.xa import Phase, XaCode
from xatm.participant.xa import TxStatus as S

DEAD = endpoint("b")


def _unreachable() -> float | None:
    return REGISTRY.get_sample_value("xatm_unreachable_participants")


@with_settings(commit_wait=0.2, unreachable_summary_interval=0.2)
async def test_a_dead_endpoint_leaves_the_table_when_its_branches_are_resolved(rig: Rig) -> None:
    engine = await rig.start()
    rig.peers.answer(DEAD, Phase.COMMIT, Answer(XaCode.XAER_RMFAIL, UNREACHABLE_REASON))
    txs = [await rig.tx("a", "b") for _ in range(3)]
    await asyncio.gather(*(engine.commit(tx.gtrid) for tx in txs))
    await until("the dead endpoint counted", lambda: _unreachable() == 1)
    assert DEAD in engine.phase_two.reachability.down

    # The operator closes every branch at the dead endpoint; it never answers again.
    for tx in txs:
        await engine.resolve_branch(tx.gtrid, "b", True, "participant decommissioned")
    await until("every transaction final", lambda: all(tx.status.is_final for tx in txs))
    assert {tx.status for tx in txs} <= {S.COMMITTED, S.HEURISTICALLY_COMPLETED}
    await until("the dead endpoint forgotten", lambda: _unreachable() == 0)
    assert DEAD not in engine.phase_two.reachability.down
