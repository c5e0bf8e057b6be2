"""What clients name and accumulate in a transaction is checked and bounded.

A participant's resource manager id, from any source, follows one rule: 1-256 printable
characters. A control character would forge lines in the operator's tables and drive a terminal,
so the engine refuses it wherever a participant names itself, and the agent at start-up. The
savepoints of one transaction are bounded."""

from __future__ import annotations

import pytest

from tests.component.conftest import Rig, endpoint
from xatm.coordinator.engine.core import MAX_SAVEPOINTS
from xatm.participant.agent.server import resolve
from xatm.participant.errors import InvalidArgumentError, ResourceExhaustedError

FORGED = ["rm\nCRITICAL coordinator: forged line", "rm\x00", "rm\x1b[2J", "rm\r"]


@pytest.mark.parametrize("rm_id", FORGED, ids=repr)
async def test_the_engine_refuses_an_rm_id_with_control_characters(rig: Rig, rm_id: str) -> None:
    engine = await rig.start()
    tx = await engine.begin()
    with pytest.raises(InvalidArgumentError, match="control characters"):
        await engine.enlist(tx.gtrid, "b1", rm_id, endpoint("b1"))
    with pytest.raises(InvalidArgumentError, match="control characters"):
        await engine.register_participant(rm_id, endpoint("b1"))
    assert not tx.branches


@pytest.mark.parametrize("rm_id", FORGED, ids=repr)
def test_the_agent_refuses_the_same_rm_ids_at_start_up(rm_id: str) -> None:
    with pytest.raises(InvalidArgumentError, match="--rm-id must hold no control characters"):
        resolve({"rm_id": rm_id, "resource": "sqlite:/nonexistent/kv.db"}, {})


def test_a_printable_rm_id_of_any_script_is_accepted() -> None:
    name = "orders-Ñandú-東京"
    assert resolve({"rm_id": name, "resource": "sqlite:/x.db"}, {}).rm_id == name


async def test_a_transaction_holds_at_most_max_savepoints(rig: Rig) -> None:
    """Each savepoint remembers the branches before it, so their number is bounded per transaction."""
    engine = await rig.start()
    tx = await engine.begin()  # no branch: savepoints cost no participant call
    first = await engine.create_savepoint(tx.gtrid)
    for _ in range(MAX_SAVEPOINTS - 1):
        await engine.create_savepoint(tx.gtrid)
    with pytest.raises(ResourceExhaustedError, match=f"already holds {MAX_SAVEPOINTS} savepoints"):
        await engine.create_savepoint(tx.gtrid)
    assert len(tx.savepoints) == MAX_SAVEPOINTS
    await engine.rollback_to_savepoint(tx.gtrid, first)  # the later ones are released
    assert list(tx.savepoints) == [first]
    assert await engine.create_savepoint(tx.gtrid)
