"""TLS and mutual TLS on both coordinator ports, with certificates made for the test, and the
messages a client gets when only one side speaks TLS."""

from __future__ import annotations

import ssl
import time
import urllib.error
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.admin_support import OK, UNAVAILABLE, rest, xactl
from tests.bank_system import TEST_COORDINATOR_ENV
from tests.certs import Certs
from xatm.coordinator.server import tls
from xatm.coordinator.server.auth import hash_token
from xatm.coordinator.tools.procs import Proc, coordinator_proc

TOKEN = "tls-viewer-token"


def _start(proc: Proc, credentials: grpc.ChannelCredentials | None) -> Proc:
    """Start and wait for health over the coordinator's own transport."""
    proc.start(wait=0)
    deadline = time.monotonic() + 20
    channel = (
        grpc.secure_channel(proc.address, credentials) if credentials else grpc.insecure_channel(proc.address)
    )
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            assert proc.alive, proc.tail()
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5).status == 1:
                    return proc
            except grpc.RpcError:
                assert time.monotonic() < deadline, proc.tail()
                time.sleep(0.05)


@pytest.fixture(scope="module")
def coordinators(tmp_path_factory: pytest.TempPathFactory, certs: Certs) -> Iterator[dict[str, Proc]]:
    """Plaintext, TLS (with an auth file) and mutual-TLS coordinators."""
    root = tmp_path_factory.mktemp("admin-tls")
    (root / "tokens.toml").write_text(
        f'[[tokens]]\nname = "v"\nrole = "viewer"\nsha256 = "{hash_token(TOKEN)}"\n'
    )
    server = {"XATM_TLS_CERT": str(certs.server_cert), "XATM_TLS_KEY": str(certs.server_key)}
    envs = {
        "plain": {},
        "tls": {**server, "XATM_AUTH_FILE": str(root / "tokens.toml")},
        "mtls": {**server, "XATM_TLS_CLIENT_CA": str(certs.ca)},
    }
    client = tls.channel_credentials(certs.ca, certs.client_cert, certs.client_key)
    started: dict[str, Proc] = {}
    try:
        for name, env in envs.items():
            (root / name).mkdir()
            proc = coordinator_proc(root / name / "data", root / name, env={**TEST_COORDINATOR_ENV, **env})
            started[name] = _start(proc, client if env else None)
        yield started
    finally:
        for proc in started.values():
            proc.stop()


def _https(certs: Certs, *, client: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=certs.ca)
    if client:
        context.load_cert_chain(client, key)
    return context


def test_tls_on_grpc_and_http(coordinators: dict[str, Proc], certs: Certs) -> None:
    proc = coordinators["tls"]
    done = xactl(proc.address, "--tls-ca", str(certs.ca), "list", token=TOKEN)
    assert done.returncode == OK, done.stderr
    base = f"https://{proc.http}"
    listed = rest(base, "GET", "/admin/v1/xa-transaction", token=TOKEN, context=_https(certs))
    assert listed.status == 200 and listed.body["transactions"] == []
    assert rest(base, "GET", "/admin/v1/xa-transaction", context=_https(certs)).status == 401
    assert rest(base, "GET", "/healthz", context=_https(certs)).status == 200
    assert "(TLS)" in proc.tail()


def test_plaintext_clients_of_a_tls_coordinator_are_told_to_use_tls(
    coordinators: dict[str, Proc], certs: Certs
) -> None:
    proc = coordinators["tls"]
    done = xactl(proc.address, "list", token=TOKEN)
    assert done.returncode == UNAVAILABLE
    assert f"coordinator at {proc.address} requires TLS (use --tls-ca" in done.stderr
    reply = rest(f"http://{proc.http}", "GET", "/admin/v1/xa-transaction", token=TOKEN)
    assert reply.status == 400 and "requires TLS: use https://" in reply.body["error"]
    assert tls.probe(proc.address) == "tls" and tls.probe(coordinators["plain"].address) == "plaintext"


def test_a_tls_client_of_a_plaintext_coordinator_is_told_to_drop_tls(
    coordinators: dict[str, Proc], certs: Certs
) -> None:
    proc = coordinators["plain"]
    done = xactl(proc.address, "--tls-ca", str(certs.ca), "list")
    assert done.returncode == UNAVAILABLE and "does not use TLS; drop --tls-ca" in done.stderr


def test_mutual_tls_wants_a_client_certificate_from_the_ca(
    coordinators: dict[str, Proc], certs: Certs
) -> None:
    proc = coordinators["mtls"]
    ca = ["--tls-ca", str(certs.ca)]
    good = xactl(
        proc.address, *ca, "--tls-cert", str(certs.client_cert), "--tls-key", str(certs.client_key), "list"
    )
    assert good.returncode == OK, good.stderr
    missing = xactl(proc.address, *ca, "list")
    assert missing.returncode == UNAVAILABLE and "pass --tls-cert and --tls-key" in missing.stderr
    stranger = ["--tls-cert", str(certs.stranger_cert), "--tls-key", str(certs.stranger_key)]
    assert xactl(proc.address, *ca, *stranger, "list").returncode == UNAVAILABLE

    base = f"https://{proc.http}"
    context = _https(certs, client=certs.client_cert, key=certs.client_key)
    assert rest(base, "GET", "/admin/v1/xa-transaction", context=context).status == 200
    for refused in (_https(certs), _https(certs, client=certs.stranger_cert, key=certs.stranger_key)):
        with pytest.raises((urllib.error.URLError, ssl.SSLError, ConnectionError)):
            rest(base, "GET", "/healthz", context=refused)
    assert "(mutual TLS)" in proc.tail()
