"""The participant endpoint rule and ``--allow-participants``, in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from xatm.coordinator.server.endpoints import EndpointPolicy
from xatm.coordinator.settings import SettingsError, resolve
from xatm.participant.errors import InvalidArgumentError, PermissionDeniedError


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
