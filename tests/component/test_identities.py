"""A participant's resource manager id, from any source, follows one rule: 1-256 printable
characters. A control character would forge lines in the coordinator's log and in the operator's
tables, so the engine refuses it wherever a participant names itself, and the agent at start-up."""

from __future__ import annotations

import pytest

from tests.component.conftest import Rig, endpoint
from xatm.participant.agent.server import resolve
from xatm.participant.errors import InvalidArgumentError

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
