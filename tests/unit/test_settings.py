"""One settings loader and one address type for every xatm program, in process: precedence of
the sources, and addresses that parse or are refused in one line.

The programs themselves (exit 2 on a bad setting, the stop-signal helper) are in
tests/system/test_settings.py.
"""

from __future__ import annotations

import ipaddress
import textwrap
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from xatm.coordinator.settings import Settings, SettingsError
from xatm.coordinator.settings import resolve as coordinator_settings
from xatm.participant.agent.server import AgentSettings
from xatm.participant.agent.server import resolve as agent_settings
from xatm.participant.runtime.address import Address, AddressError
from xatm.participant.runtime.config import UsageError, XatmSettings, load

# ------------------------------------------------------------------ precedence


def test_coordinator_flag_beats_env_beats_config_file_beats_default(tmp_path: Path) -> None:
    config = tmp_path / "xatm.toml"
    config.write_text("call_timeout = 7\ncommit_wait = 8\nretry-initial = 0.5\n")
    env = {"XATM_CALL_TIMEOUT": "3", "XATM_COMMIT_WAIT": "4", "XATM_CONFIG": str(config)}
    got = coordinator_settings({"call_timeout": "2", "commit_wait": None}, env)
    assert (got.call_timeout, got.commit_wait, got.retry_initial) == (2.0, 4.0, 0.5)
    assert got.checkpoint_interval == Settings().checkpoint_interval == 30.0
    # --config names the file as well as XATM_CONFIG does, and wins over it.
    other = tmp_path / "other.toml"
    other.write_text("[coordinator]\ncheckpoint_interval = 9\n[participant]\npool_size = 2\n")
    assert coordinator_settings({"config": str(other)}, env).checkpoint_interval == 9.0


def test_agent_flag_beats_env_beats_its_table_of_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "xatm.toml"
    config.write_text(
        textwrap.dedent("""\
            [coordinator]
            call_timeout = 1
            [participant]
            resource = "sqlite:file.db"
            pool_size = 2
            lock_timeout_ms = 100
            recovery_interval = 9
            """)
    )
    env = {"XATM_POOL_SIZE": "3", "XATM_LOCK_TIMEOUT_MS": "200", "XATM_CALL_TIMEOUT": "not for the agent"}
    got = agent_settings({"config": str(config), "pool_size": "4"}, env)
    assert (got.resource, got.pool_size, got.lock_timeout_ms) == ("sqlite:file.db", 4, 200)
    assert got.recovery_interval == 9.0 and got.listen == "127.0.0.1:7080"


def test_settings_built_directly_ignore_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XATM_CALL_TIMEOUT", "1")
    assert Settings().call_timeout == 5.0
    assert Settings(call_timeout=2).call_timeout == 2.0
    with pytest.raises(ValueError, match="must be > 0"):
        Settings(call_timeout=0)


def test_a_bad_value_is_found_even_when_a_higher_source_overrides_it() -> None:
    with pytest.raises(SettingsError, match=r"^XATM_CALL_TIMEOUT must be > 0, not -1\.0$"):
        coordinator_settings({"call_timeout": "2"}, {"XATM_CALL_TIMEOUT": "-1"})


@pytest.mark.parametrize(
    ("flags", "env", "message"),
    [
        ({"default_timeout": "1000"}, {}, "--default-timeout (1000 s) is above --max-timeout (600 s)"),
        ({}, {"XATM_MAX_TIMEOUT": "30"}, "--default-timeout (60 s) is above --max-timeout (30 s)"),
        ({"retry_initial": "9"}, {}, "--retry-initial (9 s) is above --retry-max (5 s)"),
    ],
)
def test_settings_that_contradict_each_other_are_refused(
    flags: dict[str, str], env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError, match=f"^{message.replace('(', '[(]').replace(')', '[)]')}"):
        coordinator_settings(flags, env)


def test_bounds_in_order_across_sources_are_accepted() -> None:
    got = coordinator_settings({"default_timeout": "1000"}, {"XATM_MAX_TIMEOUT": "2000"})
    assert (got.default_timeout, got.max_timeout) == (1000.0, 2000.0)


# ------------------------------------------------------------------ the address type


@pytest.mark.parametrize(
    ("text", "host", "port"),
    [
        ("127.0.0.1:7070", "127.0.0.1", 7070),
        ("[::1]:1", "::1", 1),
        ("[::]:65535", "::", 65535),
        ("coord.default.svc.cluster.local:7070", "coord.default.svc.cluster.local", 7070),
        ("agent_orders:7080", "agent_orders", 7080),
    ],
)
def test_an_address_parses_into_host_and_port(text: str, host: str, port: int) -> None:
    address = Address.parse(text)
    assert (address.host, address.port, str(address)) == (host, port, text)


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("no-port", "no port"),
        (":7070", "no host"),
        ("::1:7070", "an IPv6 address goes in brackets, as [::1]:7070"),
        ("[::1:7070", "unclosed bracket"),
        ("[db]:7070", "brackets hold an IPv6 address"),
        ("host:0", "port must be a number from 1 to 65535"),
        ("host:65536", "port must be a number from 1 to 65535"),
        ("host:+80", "port must be a number from 1 to 65535"),
        ("host:\u0663", "port must be a number from 1 to 65535"),  # an Arabic-Indic digit passes str.isdigit
        ("host:", "port must be a number from 1 to 65535"),
        ("ho\x00st:80", "no spaces or control characters allowed"),
        ("host:80\n", "no spaces or control characters allowed"),
        ("-host:80", "malformed host"),
        ("a/b:80", "malformed host"),
    ],
)
def test_a_malformed_address_is_one_line_naming_what_is_wrong(text: str, why: str) -> None:
    with pytest.raises(AddressError) as caught:
        Address.parse(text)
    assert str(caught.value) == f"{text!r} must be HOST:PORT ({why})"


def test_port_0_is_only_for_listening() -> None:
    assert Address.parse("127.0.0.1:0", listen=True).port == 0
    with pytest.raises(AddressError):
        Address.parse("127.0.0.1:0")


_HOSTS = st.one_of(
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(lambda ip: ipaddress.IPv6Address(ip).compressed),
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,40}", fullmatch=True),
)


@settings(max_examples=300, deadline=None)
@given(host=_HOSTS, port=st.integers(1, 65535))
def test_every_address_survives_printing_and_parsing(host: str, port: int) -> None:
    address = Address(host, port)
    assert Address.parse(str(address)) == address


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=60))
def test_any_text_parses_or_fails_with_one_line(text: str) -> None:
    try:
        address = Address.parse(text)
    except AddressError as err:
        assert "\n" not in str(err) and "must be HOST:PORT" in str(err)
    else:
        assert 1 <= address.port <= 65535 and address.host
        assert all(c.isprintable() and not c.isspace() for c in str(address))


# ------------------------------------------------------------------ TOML's true is not a number


def _numeric(cls: type[XatmSettings]) -> list[str]:
    return [name for name, field in cls.model_fields.items() if field.annotation in (int, float)]


@pytest.mark.parametrize("cls", [Settings, AgentSettings])
def test_true_in_the_config_file_is_refused_for_every_number(tmp_path: Path, cls: type[XatmSettings]) -> None:
    """Found by a newcomer: ``max_branches = true`` started a coordinator with one branch allowed."""
    names = _numeric(cls)
    assert len(names) >= 3
    for name in names:
        config = tmp_path / f"{name}.toml"
        config.write_text(f"[{cls.section}]\n{name} = true\n")
        with pytest.raises(UsageError) as caught:
            load(cls, {"config": str(config)}, {})
        assert str(caught.value) == f"config file {config}: {name} must be a number, not true"


def test_true_is_still_true_for_a_switch(tmp_path: Path) -> None:
    switches = [name for name, field in Settings.model_fields.items() if field.annotation is bool]
    config = tmp_path / "switches.toml"
    config.write_text("[coordinator]\n" + "".join(f"{name} = true\n" for name in switches))
    got = load(Settings, {"config": str(config)}, {})
    assert switches and all(getattr(got, name) is True for name in switches)
