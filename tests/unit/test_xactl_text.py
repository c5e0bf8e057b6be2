"""``xactl``'s tables print what participants and clients wrote (reasons, ids) with control
characters escaped: a reason can neither forge a line of the table nor drive the terminal."""

from __future__ import annotations

from typing import Any

from xatm.coordinator.cli.xactl import _show_transaction

FORGED = "deadlock\x1b[2J\nb9  rm  127.0.0.1:1  Committed"


def _view(**changes: Any) -> dict[str, Any]:
    branch = {
        "branchId": "b1",
        "rmId": "rm",
        "url": "127.0.0.1:7000",
        "status": "Rolledback",
        "returnCode": "XA_RBDEADLOCK",
        "phase": "prepare",
        "reason": FORGED,
        "attempts": 1,
        "nextRetry": None,
        "unreachableSince": None,
        "endpointFailures": 0,
    }
    view = {
        "txid": "n1.0000000000000000000000000001",
        "status": "Rolledback",
        "decision": "rollback",
        "begunAt": "2026-01-01T00:00:00Z",
        "ageSeconds": 1.0,
        "timeoutMs": 1000,
        "deadline": "2026-01-01T00:00:01Z",
        "completedAt": None,
        "rollbackCode": "XA_RBROLLBACK",
        "rollbackReason": FORGED,
        "branches": [branch],
    }
    return {**view, **changes}


def test_reasons_are_shown_escaped_on_their_own_line() -> None:
    text = _show_transaction(_view())
    assert "\x1b" not in text
    assert not [line for line in text.splitlines() if line.startswith("b9")]
    assert "rollback:   XA_RBROLLBACK deadlock\\x1b[2J\\nb9  rm" in text
    assert "  b1: deadlock\\x1b[2J\\nb9  rm  127.0.0.1:1  Committed" in text


def test_table_cells_are_escaped_and_stay_aligned() -> None:
    view = _view()
    view["branches"][0]["url"] = "host\t:1"
    lines = _show_transaction(view).splitlines()
    header = next(line for line in lines if line.startswith("BRANCH"))
    row = next(line for line in lines if line.startswith("b1 "))
    assert "host\\t:1" in row and "\t" not in row
    assert row.index("Rolledback") == header.index("STATUS")
