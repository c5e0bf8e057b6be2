"""What hostile or careless clients send a real coordinator: endpoints it must not dial,
connections reset mid-scrape, a token revoked while the coordinator runs, one token trying to take
every open-transaction slot. (Undecodable and oversized requests: test_undecodable_everywhere.py.)

One coordinator (auth on, an allow-list of participants, JSON log lines) serves the module;
the reload tests start their own, since they rewrite the token file.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.admin_support import rest, write_auth_file
from tests.bank_system import TEST_COORDINATOR_ENV
from xatm.coordinator.tools.procs import Proc, coordinator_proc, free_port
from xatm.participant.api.v1 import admin_pb2, admin_pb2_grpc, coordinator_pb2, coordinator_pb2_grpc, xa_pb2
from xatm.participant.xa import TxStatus, new_gtrid, validate_gtrid

OPS, VIEWER, SERVICE, CAPPED = (f"{who}-{os.urandom(12).hex()}" for who in ("ops", "view", "svc", "cap"))
ENTRIES = {
    "ops": ("operator", OPS, None),
    "watcher": ("viewer", VIEWER, None),
    "svc": ("service", SERVICE, None),
    "capped": ("service", CAPPED, 2),
}
ALLOWED = "127.0.0.0/8,participant.test"
BAD_ENDPOINTS = [
    "127.0.0.1",  # no port
    "127.0.0.1:99999",  # port out of range
    "127.0.0.1:0",  # not a port one can call
    "127.0.0.1:7000\x00",  # NUL
    "127.0.0.1:70\n00",  # a control character
    "unix:/tmp/xatm.sock",  # another gRPC target scheme
    "unix:7070",
    "unix-abstract:7070",
    "dns:7070",
    "0.0.0.0:7000",  # a wildcard, not an address
    "::1:7000",  # IPv6 without brackets
    " 127.0.0.1:7000",
    "h" * 300 + ":7000",
]


def _start(root: Path, *extra: str) -> Proc:
    env = {**TEST_COORDINATOR_ENV, "XATM_AUTH_FILE": str(write_auth_file(root / "tokens.toml", ENTRIES))}
    return coordinator_proc(root / "data", root, env=env, extra=["--log-json", *extra]).start()


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = _start(tmp_path_factory.mktemp("hostile"), "--allow-participants", ALLOWED)
    yield proc
    proc.stop()


def _auth(token: str | None) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")] if token else []


def _coordinator_stub(proc: Proc) -> tuple[grpc.Channel, coordinator_pb2_grpc.CoordinatorStub]:
    channel = grpc.insecure_channel(proc.address)
    return channel, coordinator_pb2_grpc.CoordinatorStub(channel)


def _begin(proc: Proc, token: str = SERVICE) -> str:
    channel, stub = _coordinator_stub(proc)
    with channel:
        return str(stub.Begin(coordinator_pb2.BeginRequest(timeout_ms=300_000), metadata=_auth(token)).gtrid)


def _code(call: Callable[[], Any]) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def _log_lines(proc: Proc) -> list[dict[str, Any]]:
    """Every line the coordinator wrote (stdout and stderr), each of which must be a JSON record."""
    lines = proc.log_path.read_text().splitlines()
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            raise AssertionError(f"a line outside the log format: {line[:200]!r}") from None
    return records


# ------------------------------------------------------------------ endpoints


@pytest.mark.parametrize("endpoint", BAD_ENDPOINTS, ids=repr)
def test_an_endpoint_that_cannot_be_dialled_is_refused_where_it_enters(
    coordinator: Proc, endpoint: str
) -> None:
    gtrid = _begin(coordinator)
    xid = xa_pb2.Xid(format_id=0x7861746D, gtrid=gtrid, bqual="b1")
    channel, stub = _coordinator_stub(coordinator)
    with channel:
        enlist = coordinator_pb2.EnlistRequest(gtrid=gtrid, bqual="b1", rm_id="rm", endpoint=endpoint)
        assert _code(lambda: stub.Enlist(enlist, metadata=_auth(SERVICE))) == grpc.StatusCode.INVALID_ARGUMENT
        register = coordinator_pb2.RegisterParticipantRequest(rm_id="rm", endpoint=endpoint)
        code = _code(lambda: stub.RegisterParticipant(register, metadata=_auth(SERVICE)))
        assert code == grpc.StatusCode.INVALID_ARGUMENT
        # An outcome query still answers (the branch was never enlisted: presumed abort); saying
        # where one is served is optional there.
        query = coordinator_pb2.QueryOutcomeRequest(xid=xid, rm_id="rm", endpoint=endpoint)
        assert stub.QueryOutcome(query, metadata=_auth(SERVICE)).decision == xa_pb2.DECISION_ROLLBACK
        # A branch reported to the initiator and carried in its Commit is checked the same way.
        reported = xa_pb2.BranchRef(bqual="b1", rm_id="rm", endpoint=endpoint)
        commit = coordinator_pb2.CompletionRequest(gtrid=gtrid, branches=[reported])
        assert _code(lambda: stub.Commit(commit, metadata=_auth(SERVICE))) == grpc.StatusCode.INVALID_ARGUMENT
        info = stub.GetStatus(coordinator_pb2.StatusRequest(gtrid=gtrid), metadata=_auth(SERVICE))
    assert TxStatus(info.status) is TxStatus.CREATED and not info.branches


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("127.0.0.1:7000", grpc.StatusCode.OK),
        ("127.9.9.9:7000", grpc.StatusCode.OK),
        ("participant.test:7000", grpc.StatusCode.OK),
        ("PARTICIPANT.test:7001", grpc.StatusCode.OK),
        ("10.1.2.3:7000", grpc.StatusCode.PERMISSION_DENIED),
        ("[::1]:7000", grpc.StatusCode.PERMISSION_DENIED),
        ("evil.example:7000", grpc.StatusCode.PERMISSION_DENIED),
        ("localhost:7000", grpc.StatusCode.PERMISSION_DENIED),  # names are matched, never resolved
    ],
)
def test_only_allowed_participants_are_dialled(
    coordinator: Proc, endpoint: str, expected: grpc.StatusCode
) -> None:
    gtrid = _begin(coordinator)
    channel, stub = _coordinator_stub(coordinator)
    with channel:
        enlist = coordinator_pb2.EnlistRequest(gtrid=gtrid, bqual="b1", rm_id="rm-allow", endpoint=endpoint)
        assert _code(lambda: stub.Enlist(enlist, metadata=_auth(SERVICE))) == expected
        register = coordinator_pb2.RegisterParticipantRequest(
            rm_id=f"rm-{os.urandom(4).hex()}", endpoint=endpoint
        )
        assert _code(lambda: stub.RegisterParticipant(register, metadata=_auth(SERVICE))) == expected
    # Left in Created: nothing listens there, and a rollback would retry it for the module's life.


# ------------------------------------------------------------------ connections reset on the HTTP port


def _reset_storm(address: str, connections: int = 60) -> None:
    host, port = address.rsplit(":", 1)

    def one(i: int) -> None:
        with socket.create_connection((host, int(port)), timeout=10) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1024)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # close = RST
            request = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
            if i % 3 == 0:  # reset halfway through the request
                sock.sendall(request[: 5 + i % 20])
                return
            sock.sendall(request * (1 + i % 20))  # pipelined: the answers outgrow the buffers
            if i % 2:  # reset after the first bytes of the answer, else before any
                sock.recv(64)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def test_clients_resetting_on_metrics_leave_only_records_in_the_log_format(coordinator: Proc) -> None:
    before = len(coordinator.log_path.read_text().splitlines())
    _reset_storm(coordinator.http)
    assert rest(f"http://{coordinator.http}", "GET", "/healthz").status == 200
    new = _log_lines(coordinator)[before:]  # every line JSON: nothing bypassed the format
    assert not [r for r in new if r["level"] not in ("info", "debug")], new


# ------------------------------------------------------------------ per-token bound on open transactions


def test_a_token_with_max_open_cannot_take_more_slots(coordinator: Proc) -> None:
    held = [_begin(coordinator, CAPPED) for _ in range(2)]
    channel, stub = _coordinator_stub(coordinator)
    with channel:
        begin = coordinator_pb2.BeginRequest(timeout_ms=300_000)
        assert _code(lambda: stub.Begin(begin, metadata=_auth(CAPPED))) == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert _begin(coordinator, SERVICE)  # another token is not held back
        stub.Rollback(coordinator_pb2.CompletionRequest(gtrid=held[0]), metadata=_auth(CAPPED), timeout=30)
        held.append(_begin(coordinator, CAPPED))  # a slot frees when its transaction ends
        assert _code(lambda: stub.Begin(begin, metadata=_auth(CAPPED))) == grpc.StatusCode.RESOURCE_EXHAUSTED
        # A transaction the initiator names itself counts the same when its first call creates it.
        node = held[1].rsplit(".", 1)[0]
        made_here = coordinator_pb2.BeginRequest(gtrid=new_gtrid(node), timeout_ms=300_000)
        commit = coordinator_pb2.CompletionRequest(gtrid=made_here.gtrid)
        auth = _auth(CAPPED)
        refused = (lambda: stub.Begin(made_here, metadata=auth), lambda: stub.Commit(commit, metadata=auth))
        for call in refused:
            assert _code(call) == grpc.StatusCode.RESOURCE_EXHAUSTED
        for gtrid in held[1:]:
            stub.Rollback(coordinator_pb2.CompletionRequest(gtrid=gtrid), metadata=_auth(CAPPED), timeout=30)


# ------------------------------------------------------------------ the token file reloaded


def _reload_records(proc: Proc) -> list[dict[str, Any]]:
    with grpc.insecure_channel(proc.address) as channel:
        reply = admin_pb2_grpc.AdminStub(channel).ListAudit(
            admin_pb2.ListAuditRequest(page_size=1000), metadata=_auth(OPS), timeout=10
        )
    return [
        {"peer": r.peer, "result": r.result, "detail": r.detail}
        for r in reply.records
        if r.action == "reload_auth"
    ]


def _until(predicate: Callable[[], Any], what: str, limit: float = 30.0) -> Any:
    """Poll ``predicate`` until it is truthy; fails the test (naming ``what``) after ``limit`` s."""
    deadline = time.monotonic() + limit
    while not (value := predicate()):
        assert time.monotonic() < deadline, f"never happened: {what}"
        time.sleep(0.05)
    return value


@pytest.mark.parametrize("how", ["SIGHUP", "file changed"])
def test_a_revoked_token_stops_working_at_once_and_the_reload_is_audited(tmp_path: Path, how: str) -> None:
    proc = _start(tmp_path)
    try:
        assert _begin(proc, SERVICE)
        kept = {name: entry for name, entry in ENTRIES.items() if name not in ("svc", "watcher")}
        write_auth_file(tmp_path / "tokens.toml", kept)
        if how == "SIGHUP":
            assert proc.popen is not None
            proc.popen.send_signal(signal.SIGHUP)
        records = _until(lambda: _reload_records(proc), "an audited reload")
        assert records == [{"peer": how, "result": "ok", "detail": "removed or changed: svc, watcher"}]
        channel, stub = _coordinator_stub(proc)
        with channel:
            begin = coordinator_pb2.BeginRequest()
            assert (
                _code(lambda: stub.Begin(begin, metadata=_auth(SERVICE))) == grpc.StatusCode.UNAUTHENTICATED
            )
        assert rest(f"http://{proc.http}", "GET", "/admin/v1/xa-transaction", token=VIEWER).status == 401
        assert _begin(proc, CAPPED)  # the tokens still listed work on
        # A file that no longer loads keeps the tokens in force, and says so.
        (tmp_path / "tokens.toml").write_text("[[tokens]]\nname = 1\n")
        proc.popen.send_signal(signal.SIGHUP) if proc.popen and how == "SIGHUP" else None
        refused = _until(
            lambda: [r for r in _reload_records(proc) if r["result"] != "ok"], "a refused reload"
        )
        assert refused[0]["result"] == "refused: INVALID_ARGUMENT"
        assert _begin(proc, CAPPED)
        assert proc.alive
        _log_lines(proc)
    finally:
        proc.stop()


def test_sighup_without_an_auth_file_is_not_an_exit(tmp_path: Path) -> None:
    proc = coordinator_proc(tmp_path / "data", tmp_path, env=dict(TEST_COORDINATOR_ENV)).start()
    try:
        assert proc.popen is not None
        proc.popen.send_signal(signal.SIGHUP)
        _until(lambda: "no auth file (--auth-file) to reload" in proc.log_path.read_text(), "the SIGHUP line")
        assert proc.alive and _begin(proc, "")
    finally:
        proc.stop()


# ------------------------------------------------------------------ identifiers from every source


@pytest.mark.parametrize(
    "source", ["NODE_ID file", "--node-id", "XATM_NODE_ID", "config file", "NODE_ID file empty"]
)
def test_a_bad_node_id_from_any_source_exits_2_with_one_line(tmp_path: Path, source: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    argv = [sys.executable, "-m", "xatm", "coordinator", "--data-dir", str(data)]
    argv += ["--listen", f"127.0.0.1:{free_port()}", "--http-listen", f"127.0.0.1:{free_port()}"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("XATM_")}
    long_host = "h" * 60
    if source == "NODE_ID file":
        (data / "NODE_ID").write_text(long_host + "\n")
    elif source == "NODE_ID file empty":
        (data / "NODE_ID").write_text("\n")
    elif source == "--node-id":
        argv += ["--node-id", long_host]
    elif source == "XATM_NODE_ID":
        env["XATM_NODE_ID"] = "a.b"
    else:
        (tmp_path / "c.toml").write_text('[coordinator]\nnode_id = "x y"\n')
        argv += ["--config", str(tmp_path / "c.toml")]
    done = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=60, check=False)
    assert done.returncode == 2, done.stderr
    assert len(done.stderr.splitlines()) == 1 and "node" in done.stderr.lower() and done.stdout == ""


def test_the_longest_node_id_still_makes_gtrids_within_the_contract() -> None:
    assert validate_gtrid(new_gtrid("n" * 24))
