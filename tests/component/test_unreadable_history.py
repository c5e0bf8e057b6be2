"""A completed transaction whose logged records this version cannot read (a value of a later
version's, say: a log kept across a downgrade) is found when it is read, not at start-up. It must
not take the others down with it: listings show it by what is known without its records, the
recovery scan resolves every other in-doubt branch, and reading it alone fails in one line."""

from __future__ import annotations

import pytest

from tests.component.conftest import Rig, endpoint
from xatm.coordinator.engine.recovery import RecoveryScanner
from xatm.coordinator.journal import CorruptHistory
from xatm.coordinator.server.admin import AdminOps
from xatm.coordinator.server.auth import Caller, Principal, Role
from xatm.participant.xa import Phase, Xid
from xatm.participant.xa import TxStatus as S

#: An XA code no release of this version knows.
LATER = 999


def _from_a_later_version(rig: Rig, gtrid: str) -> None:
    """Make the logged answers of ``gtrid`` carry ``LATER``, as a later version might write them."""
    records = rig.log.store.records
    results = [r for r in records if r.gtrid == gtrid and r.WhichOneof("body") == "branch_result"]
    assert results
    for record in results:
        record.branch_result.code = LATER  # type: ignore[assignment]


async def test_a_listing_shows_the_others_and_the_unreadable_one_by_what_is_known(rig: Rig) -> None:
    engine = await rig.start()
    gtrids = []
    for _ in range(3):
        tx = await rig.tx("a", "b")
        await engine.commit(tx.gtrid)
        gtrids.append(tx.gtrid)
    await rig.stop()
    _from_a_later_version(rig, gtrids[1])
    engine = await rig.restart(crash=False)
    ops = AdminOps(engine)
    caller = Caller(Principal("ops", Role.VIEWER), "127.0.0.1:1", "t1")
    listed = {t.gtrid: t for t in (await ops.list_transactions(caller)).transactions}
    assert set(listed) == set(gtrids)
    assert all(len(listed[g].branches) == 2 for g in (gtrids[0], gtrids[2]))
    unreadable = listed[gtrids[1]]
    assert S(unreadable.status) is S.COMMITTED and not unreadable.branches
    assert "its logged records cannot be read" in unreadable.rollback_reason
    assert [tx.gtrid for tx in engine.registry.transactions()] == gtrids
    with pytest.raises(CorruptHistory, match=f"transaction {gtrids[1]}: .*999"):
        await ops.get(caller, gtrids[1])


async def test_the_recovery_scan_resolves_the_others(rig: Rig) -> None:
    """A committed transaction's branch still prepared at b (its commit answer was lost) is
    recommitted although a branch of an unreadable one at a, scanned first, cannot be resolved."""
    engine = await rig.start()
    unreadable = await rig.tx("a", "c")
    await engine.commit(unreadable.gtrid)
    fine = await rig.tx("b", "d")
    await engine.commit(fine.gtrid)
    await rig.stop()
    _from_a_later_version(rig, unreadable.gtrid)
    engine = await rig.restart(crash=False)
    rig.peers.in_doubt(endpoint("a"), "rm-a", [Xid(unreadable.gtrid, "a")])
    rig.peers.in_doubt(endpoint("b"), "rm-b", [Xid(fine.gtrid, "b")])
    scanner = RecoveryScanner(engine, rig.peers, interval=60, safety=0, call_timeout=1)
    assert sorted(engine.endpoints)[:2] == [endpoint("a"), endpoint("b")]
    before = len(rig.peers.calls)
    counts = await scanner.scan_once()
    assert counts["reapplied"] == 1
    # The fine one is recommitted; the unreadable one's branch is left in doubt, neither
    # committed nor rolled back blindly.
    made = [(c.endpoint, c.phase, c.xid) for c in rig.peers.calls[before:]]
    assert made == [(endpoint("b"), Phase.COMMIT, Xid(fine.gtrid, "b"))]
