"""Branches whose participant comes back at a new address, resolves the branch itself, or never
comes back — with a real coordinator and real bank services, killed with SIGKILL.

bank-b is armed to crash inside its commit call (or to fail every commit), so the transfer's
commit decision is durable while bank-b's branch still owes its acknowledgement. How a late
answer replays is checked in process in tests/unit/test_moved_participant.py.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.admin_support import (
    CREDENTIALS,
    INVALID,
    NOT_FOUND,
    OK,
    REFUSED,
    admin_actions,
    audit_records,
    rest,
    xactl,
    xactl_json,
)
from tests.bank_system import TEST_COORDINATOR_ENV, BankSystem
from tests.chaos import CRASH_EXIT, fast_recovery, logs, store_accounts, wait_no_prepared
from xatm.coordinator.server.auth import hash_token
from xatm.coordinator.tools.procs import Proc, coordinator_proc, free_port
from xatm.participant.api.v1 import coordinator_pb2, coordinator_pb2_grpc, xa_pb2
from xatm.participant.xa import FORMAT_ID, Phase, XaCode
from xatm.participant.xa import BranchStatus as B
from xatm.participant.xa import TxStatus as S

IN_DOUBT = "xatm_in_doubt_branches"
#: The coordinator calls a participant that is not listening yet every retry_max (0.3 s) at most.
WAIT = 30.0


def _branch(info: xa_pb2.TransactionInfo, rm_id: str) -> xa_pb2.BranchInfo:
    return next(b for b in info.branches if b.rm_id == rm_id)


def _crashed_in_commit(system: BankSystem, **bank_b_env: str) -> str:
    """Start ``system`` with bank-b crashing in its commit call (or as ``bank_b_env`` says) and
    transfer 250; returns the gtrid, which is Committing with bank-b's branch in doubt."""
    system.start(bank_env={"bank-b": {"XATM_FAILPOINTS": "participant.commit=crash", **bank_b_env}})
    result = system.bank.transfer("alice", "bob", 250)  # type: ignore[union-attr]
    assert result.committed, result.detail
    info = system.status(result.gtrid)
    assert info.status == S.COMMITTING
    assert system.metric(IN_DOUBT) == 1
    return result.gtrid


def _restart_elsewhere(proc: Proc, *, coordinator: str | None = None) -> str:
    """Start ``proc`` again, same store, on a port it never had (optionally told another
    coordinator address); returns its new address."""
    at = proc.argv.index("--listen")
    proc.address = proc.argv[at + 1] = f"127.0.0.1:{free_port()}"
    if coordinator is not None:
        proc.argv[proc.argv.index("--coordinator") + 1] = coordinator
    proc.start()
    return proc.address


def _committed_everywhere(system: BankSystem) -> None:
    wait_no_prepared(system, WAIT)
    assert store_accounts(system) == {"bank-a": {"alice": 750}, "bank-b": {"bob": 1250}}


def _wal_records(system: BankSystem, gtrid: str) -> list[dict[str, object]]:
    lines = xactl(
        system.coordinator.address, "wal", "dump", str(system.root / "coordinator"), "--output", "json"
    )
    assert lines.returncode == OK, lines.stderr
    return [r for r in map(json.loads, lines.stdout.splitlines()) if r.get("gtrid") == gtrid]


@pytest.fixture
def system(tmp_path: Path) -> Iterator[BankSystem]:
    system = fast_recovery(BankSystem(tmp_path))
    yield system
    system.stop()


def test_a_participant_restarted_at_a_new_address_is_followed(system: BankSystem) -> None:
    gtrid = _crashed_in_commit(system)
    bank_b = system.banks["bank-b"]
    assert bank_b.wait_exit(10) == CRASH_EXIT
    old = bank_b.address
    new = _restart_elsewhere(bank_b)
    info = system.wait_status(gtrid, S.COMMITTED, WAIT)
    branch = _branch(info, "bank-b")
    assert (branch.endpoint, B(branch.status)) == (new, B.COMMITTED), logs(system)
    assert old != new
    assert system.metric(IN_DOUBT) == 0
    _committed_everywhere(system)
    moves = [r["endpoint"] for r in _wal_records(system, gtrid) if "endpoint" in r]
    assert moves == [{"bqual": branch.bqual, "endpoint": new}]


def test_a_participant_that_resolves_its_branch_itself_reports_it(system: BankSystem) -> None:
    # Restarted elsewhere, bank-b fails every commit call the coordinator sends: only its own
    # in-doubt resolution (QueryOutcome, commit in its store, ReportOutcome) can end the branch.
    gtrid = _crashed_in_commit(system)
    bank_b = system.banks["bank-b"]
    assert bank_b.wait_exit(10) == CRASH_EXIT
    bank_b.env["XATM_FAILPOINTS"] = "participant.commit=error(UNAVAILABLE)"
    _restart_elsewhere(bank_b)
    info = system.wait_status(gtrid, S.COMMITTED, WAIT)
    branch = _branch(info, "bank-b")
    assert (B(branch.status), XaCode(branch.last_code), Phase(branch.last_phase)) == (
        B.COMMITTED,
        XaCode.XA_OK,
        Phase.COMMIT,
    )
    assert "applied by bank-b" in branch.last_reason
    assert system.metric(IN_DOUBT) == 0
    _committed_everywhere(system)
    reported = [
        r["branchResult"]
        for r in _wal_records(system, gtrid)
        if "applied by bank-b" in str(r.get("branchResult", {}).get("reason"))
    ]
    assert [(r["phase"], r["code"], r["status"]) for r in reported] == [("commit", "XA_OK", "Committed")]


def test_a_new_endpoint_survives_a_coordinator_restart(system: BankSystem) -> None:
    gtrid = _crashed_in_commit(system)
    bank_b = system.banks["bank-b"]
    assert bank_b.wait_exit(10) == CRASH_EXIT
    new = f"127.0.0.1:{free_port()}"
    # The registration bank-b sends when it starts at ``new``; nothing listens there yet.
    with grpc.insecure_channel(system.coordinator.address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        request = coordinator_pb2.RegisterParticipantRequest(rm_id="bank-b", endpoint=new)
        assert stub.RegisterParticipant(request, timeout=10).moved == 1
    system.coordinator.kill()
    system.coordinator.start()
    info = system.status(gtrid)
    assert info.status == S.COMMITTING and info.recovered
    assert _branch(info, "bank-b").endpoint == new
    # bank-b comes back at ``new`` but cannot reach the coordinator: only the coordinator's own
    # phase two, sent to the endpoint it read back from its log, can finish the branch.
    bank_b.argv[bank_b.argv.index("--listen") + 1] = new
    bank_b.address = new
    bank_b.argv[bank_b.argv.index("--coordinator") + 1] = "127.0.0.1:1"
    bank_b.start()
    info = system.wait_status(gtrid, S.COMMITTED, WAIT)
    assert B(_branch(info, "bank-b").status) == B.COMMITTED
    assert system.metric(IN_DOUBT) == 0
    _committed_everywhere(system)


def test_the_recovery_scan_follows_a_branch_found_at_its_rms_new_endpoint(system: BankSystem) -> None:
    gtrid = _crashed_in_commit(system)
    bank_b = system.banks["bank-b"]
    assert bank_b.wait_exit(10) == CRASH_EXIT
    # bank-b comes back elsewhere unable to reach the coordinator (it neither registers nor resolves).
    new = _restart_elsewhere(bank_b, coordinator="127.0.0.1:1")
    assert system.status(gtrid).status == S.COMMITTING
    # A later enlistment of bank-b from there puts the new endpoint in the recovery scan, which finds
    # the in-doubt branch prepared at it.
    with grpc.insecure_channel(system.coordinator.address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        later = stub.Begin(coordinator_pb2.BeginRequest(timeout_ms=2000), timeout=10).gtrid
        enlist = coordinator_pb2.EnlistRequest(gtrid=later, bqual="b1", rm_id="bank-b", endpoint=new)
        assert stub.Enlist(enlist, timeout=10).code == XaCode.XA_OK
    info = system.wait_status(gtrid, S.COMMITTED, WAIT)
    assert _branch(info, "bank-b").endpoint == new
    assert system.metric(IN_DOUBT) == 0
    _committed_everywhere(system)


def test_a_resource_manager_gone_for_good_is_closed_by_the_operator(system: BankSystem) -> None:
    # bank-b answers XAER_RMFAIL to every commit (and does not resolve in-doubt branches itself),
    # then is killed for good: two transactions wait for it in Committing.
    first = _crashed_in_commit(
        system, XATM_FAILPOINTS="participant.commit=return(XAER_RMFAIL)", XATM_RECOVERY_INTERVAL="3600"
    )
    other = system.bank.transfer("alice", "carol", 100)  # type: ignore[union-attr]  (bob is locked)
    assert other.committed, other.detail
    second = other.gtrid
    system.banks["bank-b"].kill()
    address, http = system.coordinator.address, f"http://{system.coordinator.http}"
    bqual = _branch(system.status(first), "bank-b").bqual
    assert system.metric(IN_DOUBT) == 2

    # A report that is not bank-b's own, or that contradicts the decision, is refused.
    with grpc.insecure_channel(address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        xid = xa_pb2.Xid(format_id=FORMAT_ID, gtrid=first, bqual=bqual)
        for rm_id, phase, code in (
            ("bank-a", xa_pb2.PHASE_COMMIT, grpc.StatusCode.INVALID_ARGUMENT),
            ("bank-b", xa_pb2.PHASE_ROLLBACK, grpc.StatusCode.FAILED_PRECONDITION),
        ):
            report = coordinator_pb2.ReportOutcomeRequest(xid=xid, rm_id=rm_id, phase=phase, code=0)
            with pytest.raises(grpc.RpcError) as err:
                stub.ReportOutcome(report, timeout=10)
            assert err.value.code() == code
    assert system.status(first).status == S.COMMITTING

    done = xactl(address, "resolve", first, bqual, "--outcome", "committed", "--reason", "host lost")
    assert done.returncode == OK, done.stderr
    assert f"{first}: TX_OK (transaction HeuristicallyCompleted)" in done.stdout
    info = system.status(first)
    branch = _branch(info, "bank-b")
    assert (S(info.status), B(branch.status), XaCode(branch.last_code), Phase(branch.last_phase)) == (
        S.HEURISTICALLY_COMPLETED,
        B.HEURISTICALLY_COMPLETED,
        XaCode.XA_HEURCOM,
        Phase.COMMIT,
    )
    assert branch.last_reason == "resolved by anonymous as committed: host lost"
    assert system.metric(IN_DOUBT) == 1
    record = audit_records(address)[-1]
    assert (record.actor, record.action, record.gtrid, record.result) == (
        "anonymous",
        "resolve_branch",
        first,
        "ok",
    )
    assert record.detail == (
        f"branch {bqual} stated committed; TX_OK, transaction HeuristicallyCompleted; reason: host lost"
    )
    assert record.time.seconds > 0

    # The heuristic record is in the log: a restarted coordinator shows the same.
    system.coordinator.kill()
    system.coordinator.start()
    restarted = _branch(system.status(first), "bank-b")
    assert (B(restarted.status), XaCode(restarted.last_code), restarted.last_reason) == (
        B.HEURISTICALLY_COMPLETED,
        XaCode.XA_HEURCOM,
        branch.last_reason,
    )

    # Refusals: the branch owes nothing now, unknown ids, malformed ids, missing arguments.
    again = xactl(address, "resolve", first, bqual, "--outcome", "rolledback", "--reason", "again")
    assert again.returncode == REFUSED
    assert "HeuristicallyCompleted" in again.stderr and "Committing, Rollingback" in again.stderr
    assert audit_records(address)[-1].result == "refused: FAILED_PRECONDITION"
    for args, code in (
        ((second, "no-such-branch"), NOT_FOUND),
        (("n1.unknown", bqual), NOT_FOUND),
        ((second, "bad id"), INVALID),
    ):
        done = xactl(address, "resolve", *args, "--outcome", "committed", "--reason", "x")
        assert done.returncode == code, (args, done.stderr)
        assert done.stderr.startswith("xactl: ") and "Traceback" not in done.stderr
    assert xactl(address, "resolve", second, bqual, "--outcome", "committed").returncode == INVALID
    assert (
        xactl(address, "resolve", second, bqual, "--outcome", "maybe", "--reason", "x").returncode == INVALID
    )

    # The same through REST, stating a rollback: a mixed outcome against the commit decision.
    path = (
        f"/admin/v1/xa-transaction/{second}/branches/{_branch(system.status(second), 'bank-b').bqual}/resolve"
    )
    assert rest(http, "POST", path, body={"outcome": "committed"}).status == 400
    assert rest(http, "POST", path, body={"outcome": "gone", "reason": "x"}).status == 400
    reply = rest(http, "POST", path, body={"outcome": "rolledback", "reason": "store destroyed"})
    assert reply.status == 200, reply.body
    assert (reply.body["txid"], reply.body["status"], reply.body["transactionStatus"]) == (
        second,
        "TX_MIXED",
        "HeuristicallyCompleted",
    )
    view = next(b for b in reply.body["branches"] if b["rmId"] == "bank-b")
    assert (view["status"], view["returnCode"]) == ("HeuristicallyRolledback", "XA_HEURRB")
    assert rest(http, "POST", path, body={"outcome": "rolledback", "reason": "x"}).status == 412
    unknown = path.replace(second, "n1.unknown")
    assert rest(http, "POST", unknown, body={"outcome": "rolledback", "reason": "x"}).status == 404
    assert system.metric(IN_DOUBT) == 0
    assert admin_actions(system.coordinator.http, "resolve_branch", "ok") == 1  # since the restart

    # Closed by hand, both are forgotten as usual (the forget call to bank-b fails: it is gone).
    forgot = xactl_json(address, "forget", "--yes", first, second)
    assert [r["forgotten"] for r in forgot["results"]] == [True, True]


OPS, VIEWER, SERVICE = (f"{who}-{secrets.token_urlsafe(24)}" for who in ("ops", "view", "svc"))


@pytest.fixture
def secured(tmp_path: Path) -> Iterator[Proc]:
    """A coordinator with an auth file (operator, viewer and service tokens) and no participants."""
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(
        "".join(
            f'[[tokens]]\nname = "{name}"\nrole = "{role}"\nsha256 = "{hash_token(token)}"\n\n'
            for name, role, token in (
                ("ops", "operator", OPS),
                ("watcher", "viewer", VIEWER),
                ("svc", "service", SERVICE),
            )
        )
    )
    proc = coordinator_proc(
        tmp_path / "data", tmp_path, env={**TEST_COORDINATOR_ENV, "XATM_AUTH_FILE": str(tokens)}
    ).start()
    yield proc
    proc.stop()


def test_resolve_needs_the_operator_role_and_a_branch_owing_an_answer(secured: Proc) -> None:
    service = [("authorization", f"Bearer {SERVICE}")]
    with grpc.insecure_channel(secured.address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        gtrid = stub.Begin(
            coordinator_pb2.BeginRequest(timeout_ms=600_000), metadata=service, timeout=10
        ).gtrid
        enlist = coordinator_pb2.EnlistRequest(gtrid=gtrid, bqual="b1", rm_id="rm1", endpoint="127.0.0.1:1")
        assert stub.Enlist(enlist, metadata=service, timeout=10).code == XaCode.XA_OK
        # Registration is a participant's call: it needs the service role like Enlist.
        register = coordinator_pb2.RegisterParticipantRequest(rm_id="rm1", endpoint="127.0.0.1:2")
        with pytest.raises(grpc.RpcError) as err:
            stub.RegisterParticipant(register, metadata=[("authorization", f"Bearer {VIEWER}")], timeout=10)
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    args = ("resolve", gtrid, "b1", "--outcome", "rolledback", "--reason", "rm retired")
    viewer = xactl(secured.address, *args, token=VIEWER)
    assert viewer.returncode == CREDENTIALS and "operator" in viewer.stderr
    refused = audit_records(secured.address, OPS)[-1]
    assert (refused.actor, refused.action, refused.result) == (
        "watcher",
        "resolve_branch",
        "refused: PERMISSION_DENIED",
    )
    assert refused.detail.startswith("branch b1 stated rolledback; ")
    created = xactl(secured.address, *args, token=OPS)
    assert created.returncode == REFUSED
    assert f"transaction {gtrid} is Created" in created.stderr and "Committing, Rollingback" in created.stderr
    assert xactl(secured.address, *args).returncode == CREDENTIALS  # no token at all

    http = f"http://{secured.http}"
    path = f"/admin/v1/xa-transaction/{gtrid}/branches/b1/resolve"
    body = {"outcome": "rolledback", "reason": "rm retired"}
    assert rest(http, "POST", path, token=VIEWER, body=body).status == 403
    assert rest(http, "POST", path, body=body).status == 401
    reply = rest(http, "POST", path, token=OPS, body=body)
    assert reply.status == 412 and "Created" in reply.body["error"]
    assert rest(http, "GET", path, token=OPS).status == 405
    assert [r.actor for r in audit_records(secured.address, OPS)[-3:]] == ["ops", "watcher", "ops"]


def test_the_openapi_document_describes_resolve(secured: Proc) -> None:
    reply = rest(f"http://{secured.http}", "GET", "/admin/v1/openapi.json", token=VIEWER)
    operation = reply.body["paths"]["/admin/v1/xa-transaction/{gtrid}/branches/{bqual}/resolve"]["post"]
    assert operation["operationId"] == "resolveBranch"
    assert set(operation["responses"]) >= {"200", "400", "401", "403", "404", "412", "503"}
    schema = reply.body["components"]["schemas"]["ResolveRequest"]
    assert schema["properties"]["outcome"]["enum"] == ["committed", "rolledback"]
