"""TLS settings are checked before anything is served: half a configuration is refused.

The coordinators that serve TLS and mutual TLS are in tests/system/test_admin_tls.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.certs import Certs
from xatm.coordinator.server import tls
from xatm.coordinator.settings import Settings, SettingsError


def test_half_configured_tls_is_refused(certs: Certs, tmp_path: Path) -> None:
    with pytest.raises(SettingsError, match="both tls_cert and tls_key"):
        tls.check(Settings(tls_cert=certs.server_cert))
    with pytest.raises(SettingsError, match="tls_client_ca needs tls_cert"):
        tls.check(Settings(tls_client_ca=certs.ca))
    with pytest.raises(SettingsError, match="not a readable file"):
        tls.check(Settings(tls_cert=tmp_path / "missing.crt", tls_key=certs.server_key))
    assert not tls.check(Settings())
