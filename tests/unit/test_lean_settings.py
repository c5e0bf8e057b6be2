"""What lean transactions carry and what their settings accept, in-process.

A participant takes the transaction's deadline from the call's ``xatm-deadline-ms`` metadata (what
remained when it was sent), never from a shorter per-call gRPC deadline; and a bad timeout, address
or resource manager id is refused with one clear error where it is given.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from xatm.participant import ParticipantStub, SqliteRM, TransactionManager
from xatm.participant.agent.server import resolve
from xatm.participant.client.context import DEADLINE_KEY, TxContext, from_metadata, to_metadata, with_deadline
from xatm.participant.errors import InvalidArgumentError
from xatm.participant.runtime.config import UsageError
from xatm.participant.stores.memory import MemoryRM

GTRID = "node.0123456789abcdef0123456789abcdef0123"


def test_a_short_per_call_timeout_does_not_shorten_the_transactions_deadline() -> None:
    sent = TxContext(GTRID, "127.0.0.1:7070", time.monotonic() + 60, reports=True)
    received = from_metadata(to_metadata(sent))
    assert received is not None
    served = with_deadline(received, 10.0)  # the call was made with timeout=10
    assert served.deadline is not None and served.deadline - time.monotonic() > 50


def test_the_call_deadline_is_the_fallback_for_callers_that_send_none() -> None:
    received = from_metadata([("xatm-gtrid", GTRID)])
    assert received is not None and received.deadline is None
    served = with_deadline(received, 10.0)
    assert served.deadline is not None and 9 < served.deadline - time.monotonic() <= 10


@pytest.mark.parametrize("value", ["-1", "1.5", " 5", "", "12345678901", "99999999999", "4294967296", b"5"])
def test_a_malformed_deadline_is_refused(value: str | bytes) -> None:
    with pytest.raises(InvalidArgumentError, match=DEADLINE_KEY):
        from_metadata([("xatm-gtrid", GTRID), (DEADLINE_KEY, value)])


@pytest.mark.parametrize("timeout", [float("nan"), float("inf"), -1, 0, 10**10, "5", True])
def test_a_bad_transaction_timeout_is_one_clear_error(timeout: object) -> None:
    tm = TransactionManager("127.0.0.1:1")
    with pytest.raises(InvalidArgumentError, match="timeout must"):
        tm.begin(timeout=timeout)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="timeout must"):
        TransactionManager("127.0.0.1:1", timeout=timeout)  # type: ignore[arg-type]


@pytest.mark.parametrize("address", ["127.0.0.1:99999", "127.0.0.1", "unix:/tmp/x", ""])
def test_a_bad_coordinator_address_is_refused_at_construction(address: str) -> None:
    with pytest.raises(InvalidArgumentError, match="HOST:PORT"):
        TransactionManager(address)


@pytest.mark.parametrize("advertise", ["0.0.0.0:17150", "[::]:17150", "127.0.0.1", "127.0.0.1:99999"])
def test_a_participant_advertising_what_cannot_be_called_is_refused(advertise: str) -> None:
    with pytest.raises(InvalidArgumentError, match="HOST:PORT"):
        ParticipantStub(MemoryRM("rm"), coordinator="127.0.0.1:7070", advertise=advertise)


def test_a_negative_call_timeout_is_refused() -> None:
    with pytest.raises(InvalidArgumentError, match="call_timeout"):
        ParticipantStub(
            MemoryRM("rm"), coordinator="127.0.0.1:7070", advertise="127.0.0.1:1", call_timeout=-1
        )


@pytest.mark.parametrize("rm_id", ["", "x" * 257, "bad\nid", "tab\there"])
def test_a_bad_rm_id_is_refused_by_every_store(rm_id: str, tmp_path: Path) -> None:
    with pytest.raises(InvalidArgumentError, match="rm_id"):
        MemoryRM(rm_id)
    with pytest.raises(InvalidArgumentError, match="rm_id"):
        SqliteRM(tmp_path / "x.db", rm_id)
    assert SqliteRM(tmp_path / "ok.db", "x" * 256).rm_id == "x" * 256


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        ({"rm_id": ""}, "--rm-id '' must be 1-256"),
        ({"rm_id": "x" * 257}, "--rm-id must be 1-256"),
        ({"advertise": "0.0.0.0:17111"}, "wildcard"),
        ({"advertise": "127.0.0.1"}, "no port"),
    ],
)
def test_the_agent_refuses_bad_identity_settings_at_start_up(flags: dict[str, str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        resolve({**flags, "resource": "sqlite:/nonexistent/kv.db"}, {})


def test_a_resource_manager_that_never_set_its_rm_id_says_so() -> None:
    class Forgetful(MemoryRM):
        def __init__(self) -> None:  # never sets rm_id
            pass

    with pytest.raises(
        InvalidArgumentError, match=r"^Forgetful has no rm_id: set self\.rm_id in its constructor$"
    ):
        _ = Forgetful().rm_id
