"""Which coordinators a participant stub may call, in process (the end-to-end cases with a real
coordinator, agent and trap are in tests/system/test_coordinator_trust.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from xatm.participant import ParticipantStub, TxContext
from xatm.participant.agent.server import UsageError, resolve
from xatm.participant.errors import InvalidArgumentError, PermissionDeniedError, ResourceExhaustedError
from xatm.participant.stores.memory import MemoryRM
from xatm.participant.stub import _MAX_CHANNELS


@pytest.fixture
def stubs() -> Iterator[list[ParticipantStub]]:
    made: list[ParticipantStub] = []
    yield made
    for stub in made:
        stub.close()


def _stub(made: list[ParticipantStub], **kw: object) -> ParticipantStub:
    made.append(ParticipantStub(MemoryRM("rm"), advertise="127.0.0.1:1", **kw))  # type: ignore[arg-type]
    return made[-1]


def _dial(stub: ParticipantStub, coordinator: str) -> str:
    return stub._coordinator(TxContext("g.1", coordinator))[0]


def test_configured_replicas_and_allowed_entries_are_trusted(stubs: list[ParticipantStub]) -> None:
    stub = _stub(
        stubs,
        coordinator="127.0.0.1:7070,127.0.0.2:7070",
        token="t",
        allowed_coordinators="10.0.0.0/8, [fd00::1]:7070,Coord.internal",
    )
    for named in (
        "127.0.0.2:7070,127.0.0.1:7070",
        "127.0.0.1:7070",
        "10.1.2.3:9",
        "[fd00::1]:7070",
        "coord.internal:1",
        "",
    ):
        _dial(stub, named)
    for named in ("127.0.0.1:7071", "127.0.0.1:7070,evil:7070", "11.0.0.1:7070", "[fd00::1]:7071", "c3:7070"):
        with pytest.raises(PermissionDeniedError, match="not among the coordinators") as refused:
            _dial(stub, named)
        assert "t" not in refused.value.message.split()
    assert len(stub._coordinators) == 6  # the five named, and the configured list for ""


def test_without_coordinators_a_token_is_never_sent_to_a_named_one(stubs: list[ParticipantStub]) -> None:
    with pytest.raises(PermissionDeniedError, match="trusts no coordinator"):
        _dial(_stub(stubs, token="secret"), "127.0.0.1:7070")
    assert _dial(_stub(stubs), "127.0.0.1:7070") == "127.0.0.1:7070"


def test_an_open_stub_keeps_a_bounded_number_of_channels(stubs: list[ParticipantStub]) -> None:
    stub = _stub(stubs)
    for port in range(1, _MAX_CHANNELS + 1):
        _dial(stub, f"127.0.0.1:{port}")
    _dial(stub, "127.0.0.1:1")  # one it has
    with pytest.raises(ResourceExhaustedError, match=f"{_MAX_CHANNELS} coordinators"):
        _dial(stub, "127.0.0.2:1")
    assert len(stub._coordinators) == _MAX_CHANNELS


@pytest.mark.parametrize("allowed", ["10.0.0.0/33", "host:port", "a b"])
def test_a_malformed_allow_list_is_refused(stubs: list[ParticipantStub], allowed: str) -> None:
    with pytest.raises(InvalidArgumentError, match="allowed_coordinators"):
        _stub(stubs, coordinator="c:1", allowed_coordinators=allowed)


def test_the_agent_takes_allow_coordinators_from_flag_env_and_file(tmp_path: Path) -> None:
    base = {"XATM_RESOURCE": "sqlite:a.db"}
    assert resolve({}, base).allow_coordinators == ""
    assert resolve({"allow_coordinators": "c:1"}, base).allow_coordinators == "c:1"
    assert resolve({}, {**base, "XATM_ALLOW_COORDINATORS": "10.0.0.0/8"}).allow_coordinators == "10.0.0.0/8"
    config = tmp_path / "xatm.toml"
    config.write_text('[participant]\nallow_coordinators = ["c1:7070", "10.0.0.0/8"]\n')
    assert resolve({"config": str(config)}, base).allow_coordinators == "c1:7070,10.0.0.0/8"
    with pytest.raises(UsageError, match="allow"):
        resolve({"allow_coordinators": "c:99999"}, base)


def test_a_coordinator_that_is_not_host_port_is_refused_as_such(stubs: list[ParticipantStub]) -> None:
    with pytest.raises(InvalidArgumentError, match=r"^coordinator 'c' must be HOST:PORT"):
        _stub(stubs, coordinator="c")
