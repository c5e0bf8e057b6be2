"""The participant endpoint rule and ``--allow-participants``, in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from xatm.coordinator.server import endpoints
from xatm.coordinator.server.endpoints import EndpointPolicy
from xatm.coordinator.settings import SettingsError, resolve
from xatm.participant.errors import InvalidArgumentError, PermissionDeniedError
from xatm.participant.runtime.address import Address


@pytest.mark.parametrize(
    "endpoint",
    ["unix:7070", "UNIX:7070", "dns:53", "unix:/run/x.sock", "0.0.0.0:1", "[::]:1", "h:0", "h:65536"],
)
def test_what_grpc_would_not_dial_as_a_host_is_malformed(endpoint: str) -> None:
    with pytest.raises(InvalidArgumentError, match="endpoint"):
        EndpointPolicy().check(endpoint)


def test_the_allow_list_matches_networks_and_names_as_written() -> None:
    policy = EndpointPolicy.from_setting("10.0.0.0/8, fd00::/8 ,db.internal,192.168.1.7")
    for endpoint in ("10.2.3.4:1", "[fd00::5]:7000", "DB.internal:7000", "192.168.1.7:80"):
        assert policy.check(endpoint) == endpoint
    for endpoint in ("11.0.0.1:1", "[::1]:7000", "db.internal.evil:7000", "192.168.1.8:80"):
        with pytest.raises(PermissionDeniedError, match="--allow-participants"):
            policy.check(endpoint)


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "db internal", "a:b", "unix:", "-"])
def test_a_bad_allow_list_entry_is_a_usage_error(entry: str) -> None:
    with pytest.raises(SettingsError, match="--allow-participants"):
        resolve({"allow_participants": f"10.0.0.0/8,{entry}"}, environ={})


def test_a_toml_list_is_accepted(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[coordinator]\nallow_participants = ["10.0.0.0/8", "db.internal"]\n')
    settings = resolve({"config": str(config)}, environ={})
    assert EndpointPolicy.from_setting(settings.allow_participants).check("db.internal:1")


def test_an_endpoint_is_parsed_once_and_a_refused_one_every_time(monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[str] = []
    real = endpoints.Address.parse

    def counting(text: str) -> Address:
        parsed.append(text)
        return real(text)

    monkeypatch.setattr(endpoints.Address, "parse", staticmethod(counting))
    policy = EndpointPolicy.from_setting("10.0.0.0/8")
    for _ in range(3):
        assert policy.check("10.0.0.1:7000") == "10.0.0.1:7000"
        with pytest.raises(PermissionDeniedError):
            policy.check("11.0.0.1:7000")
    assert parsed == ["10.0.0.1:7000"] + ["11.0.0.1:7000"] * 3


def test_the_endpoints_remembered_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(endpoints, "PASSED_KEPT", 10)
    policy = EndpointPolicy()
    for port in range(1, 26):
        policy.check(f"h:{port}")
        assert len(policy._passed) <= 10
