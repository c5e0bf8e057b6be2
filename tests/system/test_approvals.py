"""Two-person approval of forced operations, through xactl (the Admin gRPC service), the REST API
and the console, against real coordinators started with ``--require-approval`` and an auth file
naming two operators (alice, bob), a viewer and a service."""

from __future__ import annotations

import re
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from selenium.webdriver.common.by import By

from tests.admin_support import CREDENTIALS, INVALID, REFUSED, audit_records, rest, xactl, xactl_json
from tests.bank_system import TEST_COORDINATOR_ENV
from tests.browser import chromium, sign_in, wait_for
from tests.system.test_console import auth_file
from xatm.coordinator.tools.procs import Proc, coordinator_proc
from xatm.participant import Transaction, TransactionManager
from xatm.participant.client.context import use

ALICE, BOB, VIEWER, SERVICE = (
    f"{who}-{secrets.token_urlsafe(18)}" for who in ("alice", "bob", "view", "svc")
)
TOKENS = {
    "alice": ("operator", ALICE),
    "bob": ("operator", BOB),
    "watcher": ("viewer", VIEWER),
    "svc": ("service", SERVICE),
}
COLLECTION = "/admin/v1/xa-transaction"
EVERY = "force-rollback,force-commit,forget"
#: The short life of a request on the coordinator of the expiry test (seconds).
SHORT_TTL = 1.0


def _start(root_factory: pytest.TempPathFactory, name: str, **env: str) -> Proc:
    root = root_factory.mktemp(name)
    full = {
        **TEST_COORDINATOR_ENV,
        "XATM_AUTH_FILE": str(auth_file(root / "tokens.toml", TOKENS)),
        "XATM_REQUIRE_APPROVAL": EVERY,
        **env,
    }
    return coordinator_proc(root / "data", root, env=full).start()


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = _start(tmp_path_factory, "approvals")
    yield proc
    proc.stop()


def _begin(coordinator: Proc) -> Transaction:
    """A transaction left open in Created (no branch needed for the forced operations)."""
    with TransactionManager(coordinator.address, token=SERVICE) as tm, use(None):
        return tm.begin(timeout=300)


def _status(coordinator: Proc, gtrid: str) -> str:
    return str(
        rest(f"http://{coordinator.http}", "GET", f"{COLLECTION}/{gtrid}", token=VIEWER).body["status"]
    )


def _filed(text: str) -> str:
    found = re.search(r"filed as request (ap-[0-9a-f]+)", text)
    assert found, text
    return found.group(1)


def test_a_request_through_xactl_is_approved_by_another_operator_only(coordinator: Proc) -> None:
    gtrid = _begin(coordinator).gtrid
    asked = xactl(coordinator.address, "rollback", gtrid, "--yes", "--reason", "order 7 stuck", token=ALICE)
    assert asked.returncode == REFUSED, asked.stderr
    request = _filed(asked.stderr)
    assert "another operator" in asked.stderr and _status(coordinator, gtrid) == "Created"

    listed = xactl_json(coordinator.address, "approvals", "list", token=VIEWER)["approvals"]
    mine = next(a for a in listed if a["id"] == request)
    assert (mine["action"], mine["txids"], mine["requestedBy"], mine["state"], mine["reason"]) == (
        "force_rollback",
        [gtrid],
        "alice",
        "pending",
        "order 7 stuck",
    )
    trace = mine["requestTraceId"]

    own = xactl(coordinator.address, "approvals", "approve", request, token=ALICE)
    assert own.returncode == CREDENTIALS and "a different operator must approve it" in own.stderr
    viewer = xactl(coordinator.address, "approvals", "approve", request, token=VIEWER)
    assert viewer.returncode == CREDENTIALS and "role viewer" in viewer.stderr
    assert _status(coordinator, gtrid) == "Created"

    done = xactl_json(coordinator.address, "approvals", "approve", request, "--reason", "checked", token=BOB)
    assert done["approval"]["state"] == "approved" and done["approval"]["decidedBy"] == "bob"
    assert done["completion"]["transactionStatus"] == "Rolledback" and done["completion"]["status"] == "TX_OK"
    assert _status(coordinator, gtrid) == "Rolledback"
    again = xactl(coordinator.address, "approvals", "approve", request, token=BOB)
    assert again.returncode == REFUSED and f"request {request} is approved, not pending" in again.stderr

    steps = [
        (r.actor, r.action, r.result, r.detail)
        for r in audit_records(coordinator.address, VIEWER)
        if r.trace_id == trace
    ]
    actions = [(actor, action, result) for actor, action, result, _ in steps]
    # Refusals of an authenticated caller are audited too (the requester's own approval was not:
    # found by a newcomer), each under the request's trace id.
    assert actions == [
        ("alice", "request_approval", "ok"),
        ("alice", "approve", "refused: PERMISSION_DENIED"),
        ("watcher", "approve", "refused: PERMISSION_DENIED"),
        ("bob", "force_rollback", "ok"),
        ("bob", "approve", "ok"),
        ("bob", "approve", "refused: FAILED_PRECONDITION"),
    ], steps
    assert "a different operator must approve it" in steps[1][3] and "role viewer" in steps[2][3]
    assert "requested by alice, approved by bob" in steps[4][3] and "reason: checked" in steps[4][3]
    assert "order 7 stuck" in steps[3][3]


def test_a_status_change_before_approval_refuses_it_with_the_rule(coordinator: Proc) -> None:
    tx = _begin(coordinator)
    base = f"http://{coordinator.http}"
    asked = rest(base, "DELETE", f"{COLLECTION}/{tx.gtrid}?reason=cleanup", token=ALICE)
    assert asked.status == 202, asked.body
    request = asked.body["approval"]["id"]
    assert asked.body["approval"]["requestTraceId"] == asked.body["traceId"] == asked.headers["X-Trace-Id"]
    assert request in asked.body["message"]

    tx.commit()  # the initiator finishes it meanwhile (no branch: committed at once)
    assert _status(coordinator, tx.gtrid) == "Committed"

    refused = rest(base, "POST", f"/admin/v1/approvals/{request}/approve", token=BOB, body={})
    rule = (
        f"transaction {tx.gtrid} is Committed; rollback is allowed only from Created, Preparing, Rollingback"
    )
    assert refused.status == 412 and refused.body["error"] == rule
    assert _status(coordinator, tx.gtrid) == "Committed"
    listed = rest(base, "GET", "/admin/v1/approvals?all=true", token=VIEWER).body["approvals"]
    closed = next(a for a in listed if a["id"] == request)
    assert (closed["state"], closed["decidedBy"], closed["result"]) == ("failed", "bob", rule)
    pending = rest(base, "GET", "/admin/v1/approvals", token=VIEWER).body["approvals"]
    assert request not in {a["id"] for a in pending}

    record = next(
        r for r in audit_records(coordinator.address, VIEWER) if r.action == "approve" and request in r.detail
    )
    assert (record.actor, record.result, record.trace_id) == ("bob", "failed", asked.body["traceId"])
    assert "requested by alice, approved by bob" in record.detail and rule in record.detail


def test_force_commit_and_forget_need_approval_and_a_request_can_be_withdrawn(coordinator: Proc) -> None:
    gtrid = _begin(coordinator).gtrid
    base = f"http://{coordinator.http}"
    asked = rest(base, "PUT", f"{COLLECTION}/{gtrid}", token=BOB)
    assert asked.status == 202 and asked.body["approval"]["action"] == "force_commit"
    request = asked.body["approval"]["id"]
    withdrawn = rest(
        base, "POST", f"/admin/v1/approvals/{request}/reject", token=BOB, body={"reason": "typo"}
    )
    assert withdrawn.status == 200, withdrawn.body
    assert withdrawn.body["approval"]["state"] == "rejected" and withdrawn.body["completion"] is None
    assert _status(coordinator, gtrid) == "Created"
    late = rest(base, "POST", f"/admin/v1/approvals/{request}/approve", token=ALICE, body={})
    assert late.status == 412 and "is rejected, not pending" in late.body["error"]

    # A request that its status already forbids is refused at once, not filed.
    forget = rest(base, "POST", f"{COLLECTION}/bulk", token=ALICE, body={"txids": [gtrid]})
    assert (
        forget.status == 412 and "forget is allowed only from HeuristicallyCompleted" in forget.body["error"]
    )
    unknown = rest(base, "POST", "/admin/v1/approvals/ap-0000/approve", token=ALICE, body={})
    assert unknown.status == 404
    records = [r for r in audit_records(coordinator.address, VIEWER) if r.action == "reject"]
    assert records and records[-1].actor == "bob" and "typo" in records[-1].detail


def test_a_request_expires_unapproved(tmp_path_factory: pytest.TempPathFactory) -> None:
    proc = _start(tmp_path_factory, "expiry", XATM_APPROVAL_TTL=str(SHORT_TTL))
    try:
        gtrid = _begin(proc).gtrid
        request = _filed(xactl(proc.address, "rollback", gtrid, "--yes", token=ALICE).stderr)
        time.sleep(SHORT_TTL * 1.5)  # the request's life (monotonic) runs out
        late = xactl(proc.address, "approvals", "approve", request, token=BOB)
        assert late.returncode == REFUSED and f"request {request} is expired, not pending" in late.stderr
        assert _status(proc, gtrid) == "Created"
        listed = xactl_json(proc.address, "approvals", "list", "--all", token=VIEWER)["approvals"]
        assert [(a["id"], a["state"]) for a in listed] == [(request, "expired")]
        expiry = [r for r in audit_records(proc.address, VIEWER) if r.action == "expire"]
        assert (
            len(expiry) == 1 and expiry[0].actor == "coordinator" and "requested by alice" in expiry[0].detail
        )
    finally:
        proc.stop()


def test_approval_needs_an_auth_file_and_known_operations(tmp_path_factory: pytest.TempPathFactory) -> None:
    root = tmp_path_factory.mktemp("approval-flags")
    base = [
        sys.executable,
        "-m",
        "xatm",
        "coordinator",
        "--data-dir",
        str(root / "d"),
        "--listen",
        "127.0.0.1:0",
        "--http-listen",
        "127.0.0.1:0",
    ]
    bad = subprocess.run(
        [*base, "--require-approval", "force-rollback,reboot"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert bad.returncode == INVALID and "unknown operation 'reboot'" in bad.stderr
    assert "Traceback" not in bad.stderr
    alone = subprocess.run(
        [*base, "--require-approval", "forget"], capture_output=True, text=True, timeout=60, check=False
    )
    assert alone.returncode == INVALID and "--require-approval needs --auth-file" in alone.stderr


def test_a_request_is_approved_from_the_console(coordinator: Proc) -> None:
    gtrid = _begin(coordinator).gtrid
    base = f"http://{coordinator.http}"
    with chromium() as driver:
        sign_in(driver, base, ALICE)  # alice asks from the transaction's page
        wait_for(driver, "page-transactions")
        driver.get(f"{base}/console/#/tx/{gtrid}")
        wait_for(driver, "force-rollback-reason", text="needs a second operator's approval")
        driver.find_element(By.ID, "force-rollback").click()
        wait_for(driver, "confirm-ok").click()
        request = _filed(
            wait_for(driver, "outcome", text="Filed as approval request").text.replace(
                "Filed as approval request", "filed as request"
            )
        )
        driver.find_element(By.ID, "nav-approvals").click()
        wait_for(driver, f"approve-{request}").click()
        wait_for(driver, "confirm-ok").click()
        assert "a different operator must approve it" in wait_for(driver, "flash", text="not approved").text
    assert _status(coordinator, gtrid) == "Created"

    with chromium() as driver:
        sign_in(driver, base, BOB)
        wait_for(driver, "page-transactions")
        driver.find_element(By.ID, "nav-approvals").click()
        row = wait_for(driver, "approval-table", text=request)
        assert "alice" in row.text and "force_rollback" in row.text
        driver.find_element(By.ID, f"approve-{request}").click()
        wait_for(driver, "confirm-ok").click()
        wait_for(driver, "flash", text=f"Request {request} approved: TX_OK, transaction Rolledback")
    assert _status(coordinator, gtrid) == "Rolledback"
    done = rest(base, "GET", "/admin/v1/approvals?all=true", token=VIEWER).body["approvals"]
    assert next(a for a in done if a["id"] == request)["decidedBy"] == "bob"
