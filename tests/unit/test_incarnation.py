"""Gtrids name the coordinator start they were made for; an initiator learns a new one after a
restart (the engine's refusal is in tests/component/test_incarnation.py)."""

from __future__ import annotations

from xatm.participant import TransactionManager
from xatm.participant.api.v1 import coordinator_pb2
from xatm.participant.xa import INCARNATION_DIGITS, incarnation_of, new_gtrid, new_incarnation, validate_gtrid


def test_a_gtrid_names_its_incarnation_and_one_of_the_old_form_names_none() -> None:
    start = new_incarnation()
    assert len(start) == INCARNATION_DIGITS and int(start, 16) >= 0
    assert incarnation_of(new_gtrid("n1", start)) == start
    assert incarnation_of(new_gtrid("n1")) is None  # made before incarnations: never refused
    assert incarnation_of("n1.not-hex-" + "0" * 25) is None
    assert incarnation_of("no-dot" + "0" * 36) is None
    # The longest node id still leaves the gtrid within the contract's 64 characters.
    validate_gtrid(new_gtrid("n" * 24, start))


def _begin(node: str, start: str) -> coordinator_pb2.BeginResponse:
    return coordinator_pb2.BeginResponse(
        gtrid=new_gtrid(node, start), timeout_ms=5000, node_id=node, max_timeout_ms=60000, incarnation=start
    )


def test_an_answer_from_another_start_makes_the_next_transaction_begin_at_the_coordinator() -> None:
    tm = TransactionManager("127.0.0.1:1")
    tm._learn(_begin("n1", "0a0b0c0d"), asked_ms=0)
    assert (tm.node_id, tm.incarnation) == ("n1", "0a0b0c0d")
    tm._restarted(coordinator_pb2.CompletionResponse(incarnation="0a0b0c0d"))
    tm._restarted(coordinator_pb2.CompletionResponse())  # an older coordinator says nothing
    assert tm.node_id == "n1"
    tm._restarted(coordinator_pb2.CompletionResponse(incarnation="11223344"))
    assert tm.node_id is None  # the next begin asks the coordinator, and learns the new start
    tm._learn(_begin("n1", "11223344"), asked_ms=0)
    assert (tm.node_id, tm.incarnation) == ("n1", "11223344")


def test_a_coordinator_without_incarnations_gets_gtrids_of_the_old_form() -> None:
    tm = TransactionManager("127.0.0.1:1")
    tm._learn(_begin("n1", ""), asked_ms=0)
    assert (tm.node_id, tm.incarnation) == ("n1", "")
