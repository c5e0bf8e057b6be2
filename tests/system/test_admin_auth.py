"""Tokens and roles, error mapping, audit and the OpenAPI document, against one real coordinator
started with an auth file (transactions are begun with the service token; no banks needed).

Auth files alone are checked in process in tests/unit/test_admin_auth.py.
"""

from __future__ import annotations

import http.client
import json
import re
import secrets
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from openapi_spec_validator import validate
from schemathesis.config import SchemathesisConfig

from tests.admin_support import (
    CREDENTIALS,
    INVALID,
    NOT_FOUND,
    OK,
    admin_actions,
    rest,
    xactl,
    xactl_json,
)
from tests.bank_system import TEST_COORDINATOR_ENV
from tests.conftest import REPO
from xatm.coordinator.server.auth import hash_token
from xatm.coordinator.server.http import OPENAPI_PATH, document
from xatm.coordinator.tools.procs import Proc, coordinator_proc, free_port
from xatm.participant import TransactionManager
from xatm.participant.api.v1 import admin_pb2, admin_pb2_grpc, coordinator_pb2, coordinator_pb2_grpc
from xatm.participant.client.context import use
from xatm.participant.xa import TxStatus

OPS, VIEWER, SERVICE = (f"{who}-{secrets.token_urlsafe(24)}" for who in ("ops", "view", "svc"))
TOKENS = {"ops": ("operator", OPS), "watcher": ("viewer", VIEWER), "svc": ("service", SERVICE)}
COLLECTION = "/admin/v1/xa-transaction"
UNKNOWN = "n0.0000000000000000000000000000"


def _auth_file(path: Path) -> Path:
    path.write_text(
        "".join(
            f'[[tokens]]\nname = "{name}"\nrole = "{role}"\nsha256 = "{hash_token(token)}"\n\n'
            for name, (role, token) in TOKENS.items()
        )
    )
    return path


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    root = tmp_path_factory.mktemp("admin-auth")
    env = {**TEST_COORDINATOR_ENV, "XATM_AUTH_FILE": str(_auth_file(root / "tokens.toml"))}
    proc = coordinator_proc(root / "data", root, env=env).start()
    yield proc
    proc.stop()


def _begin(coordinator: Proc) -> str:
    with TransactionManager(coordinator.address, token=SERVICE) as tm, use(None):  # held open, not active
        return tm.begin(timeout=300).gtrid


def _status(coordinator: Proc, gtrid: str) -> TxStatus:
    with grpc.insecure_channel(coordinator.address) as channel:
        info = coordinator_pb2_grpc.CoordinatorStub(channel).GetStatus(
            coordinator_pb2.StatusRequest(gtrid=gtrid), metadata=[("authorization", f"Bearer {SERVICE}")]
        )
    return TxStatus(info.status)


@pytest.mark.parametrize(
    ("command", "method", "token", "exit_code", "http"),
    [
        ("show", "GET", OPS, NOT_FOUND, 404),
        ("rollback", "DELETE", OPS, NOT_FOUND, 404),
        ("commit", "PUT", OPS, NOT_FOUND, 404),
        ("rollback", "DELETE", None, CREDENTIALS, 401),
        ("commit", "PUT", "not-a-token", CREDENTIALS, 401),
        ("rollback", "DELETE", VIEWER, CREDENTIALS, 403),
        ("commit", "PUT", VIEWER, CREDENTIALS, 403),
        ("show", "GET", SERVICE, CREDENTIALS, 403),
        ("show", "GET", VIEWER, OK, 200),
    ],
    ids=["unknown-show", "unknown-rollback", "unknown-commit", "no-token", "bad-token", "viewer-rollback",
         "viewer-commit", "service-show", "viewer-show"],
)  # fmt: skip
def test_cli_and_rest_map_errors_alike(
    coordinator: Proc, command: str, method: str, token: str | None, exit_code: int, http: int
) -> None:
    gtrid = UNKNOWN if exit_code == NOT_FOUND else _begin(coordinator)
    done = xactl(coordinator.address, command, gtrid, *(["--yes"] if method != "GET" else []), token=token)
    assert done.returncode == exit_code, done.stderr
    reply = rest(f"http://{coordinator.http}", method, f"{COLLECTION}/{gtrid}", token=token)
    assert reply.status == http, reply.body
    assert reply.body["traceId"] == reply.headers["X-Trace-Id"]
    if http == 200:
        return
    message = reply.body["error"]
    assert set(reply.body) == {"error", "traceId"} and "\n" not in message
    assert message in done.stderr and "Traceback" not in done.stderr
    if http == 401:
        assert (
            reply.headers["WWW-Authenticate"].startswith("Bearer") and "--token or XATM_TOKEN" in done.stderr
        )
    elif http == 403:
        assert "has role" in message and "use a token with role" in message
    else:
        assert message == f"unknown transaction {gtrid}"
    if gtrid != UNKNOWN:
        assert _status(coordinator, gtrid) is TxStatus.CREATED


def test_malformed_ids_are_400_and_exit_2(coordinator: Proc) -> None:
    for command in (["show"], ["rollback", "--yes"], ["commit", "--yes"], ["forget"]):
        done = xactl(coordinator.address, command[0], "bad!id", *command[1:], token=OPS)
        assert done.returncode == INVALID and "malformed gtrid 'bad!id'" in done.stderr
    for bad in ("bad!id", "x" * 65, "semi;colon", "sp%20ace"):
        for method in ("GET", "PUT", "DELETE"):
            reply = rest(f"http://{coordinator.http}", method, f"{COLLECTION}/{bad}", token=OPS)
            assert reply.status == 400 and "malformed gtrid" in reply.body["error"]


def test_the_coordinator_service_needs_the_service_role(coordinator: Proc) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    begin = coordinator_pb2.BeginRequest()
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        for token, code in (
            (None, grpc.StatusCode.UNAUTHENTICATED),
            (OPS, grpc.StatusCode.PERMISSION_DENIED),
        ):
            with pytest.raises(grpc.RpcError) as err:
                stub.Begin(begin, metadata=[("authorization", f"Bearer {token}")] if token else [], timeout=5)
            assert err.value.code() == code
        assert stub.Begin(begin, metadata=[("authorization", f"Bearer {SERVICE}")], timeout=5).gtrid
        # Probes and tooling stay open.
        health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        listing = reflection_pb2_grpc.ServerReflectionStub(channel).ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=5
        )
        names = {s.name for reply in listing for s in reply.list_services_response.service}
        assert "xatm.v1.Admin" in names
    base = f"http://{coordinator.http}"
    assert rest(base, "GET", "/healthz").status == 200
    assert rest(base, "GET", "/metrics").status == 200
    assert rest(base, "GET", COLLECTION).status == 401
    assert rest(base, "GET", COLLECTION, token=SERVICE).status == 403


def test_wrong_verbs_paths_and_bodies(coordinator: Proc) -> None:
    base = f"http://{coordinator.http}"
    for method, path, allow in (
        ("PATCH", COLLECTION, "GET"),
        ("GET", f"{COLLECTION}/bulk", "POST"),
        ("POST", f"{COLLECTION}/{UNKNOWN}", "GET, PUT, DELETE"),
        ("DELETE", "/metrics", "GET"),
    ):
        reply = rest(base, method, path, token=OPS)
        assert (reply.status, reply.headers["Allow"]) == (405, allow) and reply.body["traceId"]
    assert rest(base, "GET", "/admin/v2/xa-transaction", token=OPS).status == 404
    assert rest(base, "GET", f"{COLLECTION}?colour=red", token=OPS).status == 400
    assert rest(base, "GET", f"{COLLECTION}?limit=0", token=OPS).status == 400
    assert rest(base, "POST", f"{COLLECTION}/bulk", token=OPS, body={"txids": [UNKNOWN] * 2}).body[
        "results"
    ] == [
        {"txid": UNKNOWN, "forgotten": False, "error": f"unknown transaction {UNKNOWN}", "code": "NOT_FOUND"}
    ]
    assert rest(base, "POST", f"{COLLECTION}/bulk", token=VIEWER, body={"txids": [UNKNOWN]}).status == 403
    # A refused request with a body leaves its keep-alive connection usable.
    connection = http.client.HTTPConnection(coordinator.http, timeout=10)
    statuses = []
    for method, body in (("PATCH", b'{"txids": []}'), ("GET", None)):
        connection.request(method, COLLECTION, body, {"Authorization": f"Bearer {OPS}"})
        response = connection.getresponse()
        response.read()
        statuses.append(response.status)
    # An oversized one is refused from its headers alone.
    connection.putrequest("POST", f"{COLLECTION}/bulk")
    connection.putheader("Content-Length", str(2 << 20))
    connection.endheaders()
    statuses.append(connection.getresponse().status)
    connection.close()
    assert statuses == [405, 200, 413]


def test_audit_names_actor_trace_and_result_and_survives_a_restart(coordinator: Proc) -> None:
    base = f"http://{coordinator.http}"
    gtrid = _begin(coordinator)
    ok_before = admin_actions(coordinator.http, "force_rollback", "ok")
    done = rest(
        base, "DELETE", f"{COLLECTION}/{gtrid}?reason=stuck", token=OPS, headers={"X-Trace-Id": "t-ok-1"}
    )
    assert done.status == 200 and done.body["traceId"] == "t-ok-1" == done.headers["X-Trace-Id"]
    assert done.body["transactionStatus"] == "Rolledback" and done.body["status"] == "TX_OK"
    again = rest(base, "DELETE", f"{COLLECTION}/{gtrid}", token=OPS)
    assert again.status == 412
    assert xactl(coordinator.address, "rollback", gtrid, "--yes", token=VIEWER).returncode == CREDENTIALS
    assert admin_actions(coordinator.http, "force_rollback", "ok") == ok_before + 1
    assert admin_actions(coordinator.http, "force_rollback", "permission_denied") >= 1

    def mine() -> list[dict[str, str]]:
        listed = xactl_json(coordinator.address, "audit", "--limit", "1000", token=VIEWER)
        return [r for r in listed["records"] if r["txid"] == gtrid]

    records = mine()
    assert [(r["actor"], r["result"], r["traceId"], r["peer"].split()[0]) for r in records] == [
        ("ops", "ok", "t-ok-1", "http"),
        ("ops", "refused: FAILED_PRECONDITION", again.body["traceId"], "http"),
        ("watcher", "refused: PERMISSION_DENIED", records[2]["traceId"], "grpc"),
    ]
    assert (
        "reason: stuck" in records[0]["detail"]
        and "is Rolledback; rollback is allowed" in records[1]["detail"]
    )
    assert {r["action"] for r in records} == {"force_rollback"}

    coordinator.stop()
    coordinator.start()
    assert mine() == records


def test_list_and_audit_pages(coordinator: Proc) -> None:
    begun = [_begin(coordinator) for _ in range(3)]
    metadata = [("authorization", f"Bearer {VIEWER}")]
    with grpc.insecure_channel(coordinator.address) as channel:
        admin = admin_pb2_grpc.AdminStub(channel)
        seen, token = [], ""
        while True:
            page = admin.ListTransactions(
                admin_pb2.ListTransactionsRequest(statuses=[1], page_size=2, page_token=token),
                metadata=metadata,
            )
            assert len(page.transactions) <= 2
            seen += [t.gtrid for t in page.transactions]
            if not (token := page.next_page_token):
                break
        assert seen[-3:] == begun and len(seen) == len(set(seen))
        newest = admin.ListAudit(admin_pb2.ListAuditRequest(page_size=1), metadata=metadata)
        older = admin.ListAudit(
            admin_pb2.ListAuditRequest(page_size=1000, page_token=newest.next_page_token), metadata=metadata
        )
        everything = admin.ListAudit(admin_pb2.ListAuditRequest(page_size=1000), metadata=metadata)
        assert list(older.records) + list(newest.records) == list(everything.records)
        with pytest.raises(grpc.RpcError) as err:
            admin.ListAudit(admin_pb2.ListAuditRequest(page_token="x"), metadata=metadata)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert xactl(coordinator.address, "list", "--status", "Nope", token=VIEWER).returncode == INVALID


def test_openapi_document_is_valid_and_served(coordinator: Proc) -> None:
    validate(document())
    served = rest(f"http://{coordinator.http}", "GET", OPENAPI_PATH, token=VIEWER)
    assert served.status == 200 and served.body == json.loads(json.dumps(document()))
    assert rest(f"http://{coordinator.http}", "GET", OPENAPI_PATH).status == 401
    assert set(document()["paths"]) >= {COLLECTION, f"{COLLECTION}/{{gtrid}}", f"{COLLECTION}/bulk"}


SCHEMA = schemathesis.openapi.from_dict(
    document(), config=SchemathesisConfig.from_dict({"auth": {"openapi": {"bearer": {"bearer": OPS}}}})
)


@SCHEMA.parametrize()
@settings(
    max_examples=30, deadline=None, suppress_health_check=list(HealthCheck), database=None, derandomize=True
)
def test_rest_api_never_answers_5xx(case: schemathesis.Case, coordinator: Proc) -> None:
    case.call_and_validate(
        base_url=f"http://{coordinator.http}",
        timeout=30,
    )


def _start_with_auth_file(auth_file: Path, root: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "xatm", "coordinator", "--auth-file", str(auth_file),
         "--data-dir", str(root / "data"), "--listen", f"127.0.0.1:{free_port()}",
         "--http-listen", f"127.0.0.1:{free_port()}"],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
    )  # fmt: skip


def test_a_bad_auth_file_stops_start_up(tmp_path: Path) -> None:
    (tmp_path / "tokens.toml").write_text('[[tokens]]\nname = "a"\nrole = "root"\nsha256 = "00"\n')
    done = _start_with_auth_file(tmp_path / "tokens.toml", tmp_path)
    assert done.returncode == 2 and "role must be one of viewer, operator, service" in done.stderr
    missing = _start_with_auth_file(tmp_path / "none.toml", tmp_path)
    assert missing.returncode == 2, missing.stderr  # a bad setting, as a malformed flag is
    said = f"xatm coordinator: auth file {tmp_path / 'none.toml'}: No such file or directory"
    assert missing.stderr.strip() == said


def test_the_role_is_judged_before_the_input_and_malformed_input_is_400(coordinator: Proc) -> None:
    base = f"http://{coordinator.http}"
    resolve = f"{COLLECTION}/{UNKNOWN}/branches/b1/resolve"
    # A viewer learns that it may not, not what is wrong with what it sent.
    assert rest(base, "POST", resolve, token=VIEWER, body={"outcome": "gone"}).status == 403
    assert rest(base, "POST", f"{COLLECTION}/bulk", token=VIEWER, body={"ids": []}).status == 403
    for method, path, body in (
        ("POST", resolve, {"outcome": "gone", "reason": "x"}),
        ("POST", resolve, {"outcome": "committed"}),
        ("POST", resolve, {"outcome": "committed", "reason": "x", "extra": 1}),
        ("POST", f"{COLLECTION}/bulk", {"txids": "not-a-list"}),
        ("GET", f"{COLLECTION}?limit=many", None),
        ("GET", f"{COLLECTION}?limit=1&limit=2", None),
    ):
        reply = rest(base, method, path, token=OPS, body=body)
        assert reply.status == 400, (path, body, reply.body)
        assert set(reply.body) == {"error", "traceId"} and "\n" not in reply.body["error"]
    connection = http.client.HTTPConnection(coordinator.http, timeout=10)
    connection.request("POST", resolve, b"{not json", {"Authorization": f"Bearer {OPS}"})
    response = connection.getresponse()
    assert response.status == 400 and set(json.loads(response.read())) == {"error", "traceId"}
    connection.close()


def test_http_events_go_through_the_coordinator_log_one_line_each(coordinator: Proc) -> None:
    with socket.create_connection(coordinator.http.rsplit(":", 1)) as garbage:  # not HTTP at all
        garbage.sendall(b"\x00\x01 nonsense\r\n\r\n")
        assert garbage.recv(1024).startswith(b"HTTP/1.1 400")
    assert rest(f"http://{coordinator.http}", "GET", "/healthz").status == 200
    lines = Path(coordinator.log_path).read_text().splitlines()
    assert any(" uvicorn.access: " in line and "GET /healthz HTTP/1.1" in line for line in lines)
    assert any(" uvicorn.error: " in line and "Invalid HTTP request" in line for line in lines)
    assert [
        line for line in lines if not re.match(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ", line)
    ] == []
    assert "Traceback" not in "\n".join(lines)


def test_no_token_or_hash_reaches_a_log(coordinator: Proc) -> None:
    """Runs last: every call above, and these refused ones, are in the coordinator's log."""
    base = f"http://{coordinator.http}"
    for token in (OPS + "x", VIEWER, SERVICE):
        rest(base, "DELETE", f"{COLLECTION}/{UNKNOWN}", token=token)
        xactl(coordinator.address, "rollback", UNKNOWN, "--yes", token=token)
    log = Path(coordinator.log_path).read_text()
    assert "refused" in log  # the refusals were logged...
    for _, token in TOKENS.values():
        for secret in (token, hash_token(token), token[4:20]):  # ...without the secrets
            assert secret not in log


def test_an_overlong_reason_is_refused_not_cut(coordinator: Proc) -> None:
    """The audit keeps an operator's whole justification, or the operation is refused."""
    gtrid = _begin(coordinator)
    done = xactl(coordinator.address, "rollback", gtrid, "--yes", "--reason", "r" * 201, token=OPS)
    assert done.returncode == INVALID and "at most 200" in done.stderr
    reply = rest(
        f"http://{coordinator.http}", "DELETE", f"{COLLECTION}/{gtrid}?reason={'r' * 201}", token=OPS
    )
    assert reply.status == 400 and "at most 200" in reply.body["error"]
    assert _status(coordinator, gtrid) is TxStatus.CREATED
