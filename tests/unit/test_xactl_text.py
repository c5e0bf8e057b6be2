"""``xactl``'s tables print what participants and clients wrote (reasons, ids) with control
characters escaped: a reason can neither forge a line of the table nor drive the terminal."""

from __future__ import annotations

from typing import Any

from xatm.coordinator.cli.xactl import _show_transaction
from xatm.coordinator.server.views import transaction_view
from xatm.participant.api.v1 import xa_pb2

FORGED = "deadlock\x1b[2J\nb9  rm  127.0.0.1:1  Committed"


def _view(url: str = "127.0.0.1:7000") -> dict[str, Any]:
    """The view ``xactl show`` prints, made the way it makes it: from the wire message."""
    info = xa_pb2.TransactionInfo(
        gtrid="n1.0000000000000000000000000001",
        status=xa_pb2.TRANSACTION_STATUS_ROLLEDBACK,
        timeout_ms=1000,
        rollback_code=xa_pb2.XA_RBROLLBACK,
        rollback_reason=FORGED,
    )
    info.branches.add(
        bqual="b1",
        rm_id="rm",
        endpoint=url,
        status=xa_pb2.BRANCH_STATUS_ROLLEDBACK,
        has_last_code=True,
        last_code=xa_pb2.XA_RBDEADLOCK,
        last_phase=xa_pb2.PHASE_PREPARE,
        last_reason=FORGED,
        attempts=1,
    )
    return transaction_view(info)


def test_reasons_are_shown_escaped_on_their_own_line() -> None:
    text = _show_transaction(_view())
    assert "\x1b" not in text
    assert not [line for line in text.splitlines() if line.startswith("b9")]
    assert "rollback:   XA_RBROLLBACK deadlock\\x1b[2J\\nb9  rm" in text
    assert "  b1: deadlock\\x1b[2J\\nb9  rm  127.0.0.1:1  Committed" in text


def test_table_cells_are_escaped_and_stay_aligned() -> None:
    lines = _show_transaction(_view(url="host\t:1")).splitlines()
    header = next(line for line in lines if line.startswith("BRANCH"))
    row = next(line for line in lines if line.startswith("b1 "))
    assert "host\\t:1" in row and "\t" not in row
    assert row.index("Rolledback") == header.index("STATUS")
