"""The coordinator's --store setting: file by default, etcd:// address lists, one-line refusals."""

from __future__ import annotations

import pytest

from xatm.coordinator.settings import SettingsError, resolve
from xatm.coordinator.txlog.etcd import parse_store_url


def test_the_file_wal_stays_the_default() -> None:
    assert resolve({}, environ={}).store == "file"


def test_an_etcd_address_list_is_taken_with_default_ports() -> None:
    settings = resolve({"store": "etcd://h1:2379,h2,10.0.0.3:3379"}, environ={})
    assert parse_store_url(settings.store) == [("h1", 2379), ("h2", 2379), ("10.0.0.3", 3379)]


@pytest.mark.parametrize("bad", ["etcd", "zk://h1:2181", "etcd://h1:x", "etcd://:2379", "etcd://h1:70000"])
def test_a_bad_store_is_refused_naming_the_setting(bad: str) -> None:
    with pytest.raises(SettingsError, match="store") as err:
        resolve({"store": bad}, environ={})
    assert "\n" not in str(err.value)
