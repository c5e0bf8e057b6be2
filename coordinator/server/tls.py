"""TLS for the coordinator's two ports and for clients of them.

One setting turns TLS on for both ports: ``tls_cert`` + ``tls_key``. With ``tls_client_ca``
as well, both ports require a client certificate signed by that CA (mutual TLS). Clients
that connect wrongly get a diagnosis from ``probe`` instead of a bare "unavailable".
"""

from __future__ import annotations

import socket
import ssl
from pathlib import Path
from typing import Literal

import grpc

from xatm.coordinator.settings import Settings, SettingsError
from xatm.participant.runtime.address import Address

__all__ = ["channel_credentials", "check", "probe", "server_credentials", "server_ssl_context"]


def check(settings: Settings) -> bool:
    """Whether TLS is on; raises SettingsError for a half-configured or unreadable set of files."""
    if settings.tls_client_ca and not settings.tls_cert:
        raise SettingsError(
            "tls_client_ca needs tls_cert and tls_key: client certificates work only over TLS"
        )
    if bool(settings.tls_cert) != bool(settings.tls_key):
        raise SettingsError("TLS needs both tls_cert and tls_key")
    for name in ("tls_cert", "tls_key", "tls_client_ca"):
        path = getattr(settings, name)
        if path is not None and not Path(path).is_file():
            raise SettingsError(f"{name}: {path} is not a readable file")
    return settings.tls_cert is not None


def server_credentials(settings: Settings) -> grpc.ServerCredentials:
    assert settings.tls_cert and settings.tls_key
    client_ca = settings.tls_client_ca.read_bytes() if settings.tls_client_ca else None
    return grpc.ssl_server_credentials(
        [(settings.tls_key.read_bytes(), settings.tls_cert.read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


def server_ssl_context(settings: Settings) -> ssl.SSLContext:
    assert settings.tls_cert and settings.tls_key
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert, settings.tls_key)
    if settings.tls_client_ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(settings.tls_client_ca)
    return context


def channel_credentials(
    ca: Path | None, cert: Path | None = None, key: Path | None = None
) -> grpc.ChannelCredentials:
    """Client credentials: ``ca`` verifies the server (None: system roots); cert+key for mTLS."""
    return grpc.ssl_channel_credentials(
        root_certificates=ca.read_bytes() if ca else None,
        private_key=key.read_bytes() if key else None,
        certificate_chain=cert.read_bytes() if cert else None,
    )


def probe(address: str, timeout: float = 2.0) -> Literal["tls", "plaintext", "unreachable"]:
    """What listens at ``address``: a TLS server (handshake completes), something else, or nothing.

    Certificates are not checked; this only explains a failed connection to a person.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols(["h2"])
    try:
        where = Address.parse(address)
        sock = socket.create_connection((where.host, where.port), timeout=timeout)
    except (OSError, ValueError):
        return "unreachable"
    try:
        with context.wrap_socket(sock, server_hostname=where.host):
            return "tls"
    except ssl.SSLError as err:
        # A TLS alert (e.g. a client certificate is required) still means the server speaks TLS.
        return "tls" if "ALERT" in (err.reason or "").upper() else "plaintext"
    except OSError:
        return "plaintext"
    finally:
        sock.close()
