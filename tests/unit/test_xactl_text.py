"""``xactl``'s tables print what participants and clients wrote (reasons, ids) with control
characters escaped: a reason can neither forge a line of the table nor drive the terminal."""

from __future__ import annotations

import time
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


def test_a_retry_time_already_passed_reads_as_a_call_out() -> None:
    """The backoff's time stays in the view while its call waits for an answer: shown as such,
    not as a time in the past under NEXT RETRY."""
    info = xa_pb2.TransactionInfo(
        gtrid="n1.0000000000000000000000000002", status=xa_pb2.TRANSACTION_STATUS_COMMITTING
    )
    past = info.branches.add(bqual="b1", rm_id="rm", endpoint="127.0.0.1:1", attempts=3)
    past.next_retry.FromSeconds(int(time.time()) - 5)
    later = info.branches.add(bqual="b2", rm_id="rm", endpoint="127.0.0.1:1", attempts=3)
    later.next_retry.FromSeconds(int(time.time()) + 60)
    lines = _show_transaction(transaction_view(info)).splitlines()
    rows = {line.split()[0]: line for line in lines if line.startswith("b")}
    assert "calling (since " in rows["b1"]
    assert "calling" not in rows["b2"] and later.next_retry.ToJsonString() in rows["b2"]
