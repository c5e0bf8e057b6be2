"""Force rollback and force commit against a transaction in each of the nine statuses, through
the installed ``xactl`` and the REST API of a coordinator without auth, with real bank services.

Each bank process carries its own failpoints, so one system serves every status:
bank-prep sleeps in prepare (Preparing), bank-fail answers XAER_RMFAIL to commit and rollback
(Committing, Rollingback), bank-heur answers XA_HEURRB to commit (HeuristicallyCompleted). A
second coordinator sleeps before writing its decision (Prepared).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import pty
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.admin_support import (
    INVALID,
    NOT_FOUND,
    OK,
    REFUSED,
    XACTL,
    admin_actions,
    audit_records,
    rest,
    xactl,
    xactl_json,
)
from tests.bank_system import TEST_COORDINATOR_ENV, BankSystem
from xatm.coordinator.tools.procs import Proc, coordinator_proc
from xatm.participant import Transaction, TransactionManager
from xatm.participant.api.v1 import coordinator_pb2, coordinator_pb2_grpc, xa_pb2
from xatm.participant.client.context import use
from xatm.participant.errors import XatmError
from xatm.participant.xa import TxStatus as S

ROLLBACK_FROM = {S.CREATED, S.PREPARING, S.ROLLINGBACK}
COMMIT_FROM = {S.CREATED, S.PREPARING, S.COMMITTING}
#: Where an accepted force operation leaves the transaction (bank-fail never acknowledges).
AFTER = {
    ("rollback", S.CREATED): S.ROLLEDBACK,
    ("rollback", S.PREPARING): S.ROLLEDBACK,
    ("rollback", S.ROLLINGBACK): S.ROLLINGBACK,
    ("commit", S.CREATED): S.COMMITTED,
    ("commit", S.PREPARING): S.COMMITTED,
    ("commit", S.COMMITTING): S.COMMITTING,
}
#: The branches a transaction needs to reach each status (two branches for a prepare phase).
BANKS = {
    S.CREATED: ("bank-a",),
    S.MARKED_ROLLBACK: ("bank-a",),
    S.PREPARING: ("bank-a", "bank-prep"),
    S.PREPARED: ("bank-a", "bank-heur"),
    S.COMMITTING: ("bank-fail",),
    S.COMMITTED: ("bank-a",),
    S.ROLLINGBACK: ("bank-fail",),
    S.ROLLEDBACK: ("bank-a",),
    S.HEURISTICALLY_COMPLETED: ("bank-heur",),
}
CELLS = [("rollback", "cli"), ("rollback", "rest"), ("commit", "cli"), ("commit", "rest")]
SLOW_MS = 5000  # how long Preparing and Prepared last: long enough for four concurrent requests


def _quietly(call: Callable[[], object]) -> None:
    """Run an initiator call whose outcome the test reads from the coordinator instead."""
    with contextlib.suppress(XatmError):
        call()


class Lab:
    """Makes transactions in a wanted status and forces them through either interface."""

    def __init__(self, system: BankSystem, second: Proc):
        self.system = system
        self.second = second
        # Eager: operators act on transactions whose work is still running, which the coordinator
        # holds only once they begin there and their branches enlist.
        self.tm1 = TransactionManager(system.coordinator.address, eager=True)
        self.tm2 = TransactionManager(second.address, eager=True)
        self._accounts = itertools.count()

    def begin(self, *banks: str, tm: TransactionManager | None = None) -> Transaction:
        assert self.system.bank is not None
        with use(None):  # each held open at once: none is the thread's active one
            tx = (tm or self.tm1).begin(timeout=300)
        with use(tx.context):
            for bank in banks:  # a fresh account each time: no lock waits between transactions
                self.system.apply(bank, f"acct{next(self._accounts)}", 1)
        return tx

    def make(self, status: S, count: int) -> tuple[list[str], Proc]:
        target = self.second if status is S.PREPARED else self.system.coordinator
        txs = [
            self.begin(*BANKS[status], tm=self.tm2 if status is S.PREPARED else None) for _ in range(count)
        ]
        for tx in txs:
            if status is S.MARKED_ROLLBACK:
                with grpc.insecure_channel(target.address) as channel:
                    coordinator_pb2_grpc.CoordinatorStub(channel).MarkRollbackOnly(
                        coordinator_pb2.MarkRollbackOnlyRequest(gtrid=tx.gtrid, reason="test"), timeout=5
                    )
            elif status in (S.PREPARING, S.PREPARED, S.COMMITTING):
                threading.Thread(target=_quietly, args=(tx.commit,), daemon=True).start()
            elif status is S.ROLLINGBACK:
                threading.Thread(target=_quietly, args=(tx.rollback,), daemon=True).start()
            elif status is S.ROLLEDBACK:
                tx.rollback()
            elif status is not S.CREATED:
                _quietly(tx.commit)
        for tx in txs:
            self.wait(target, tx.gtrid, status)
        return [tx.gtrid for tx in txs], target

    @staticmethod
    def info(target: Proc, gtrid: str) -> xa_pb2.TransactionInfo:
        with grpc.insecure_channel(target.address) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            return stub.GetStatus(coordinator_pb2.StatusRequest(gtrid=gtrid), timeout=5)

    def wait(self, target: Proc, gtrid: str, wanted: S, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while (status := S(self.info(target, gtrid).status)) is not wanted:
            assert time.monotonic() < deadline, f"{gtrid} is {status}, not {wanted}"
            time.sleep(0.05)

    @staticmethod
    def force(target: Proc, op: str, interface: str, gtrid: str) -> tuple[int, Any]:
        if interface == "cli":
            done = xactl(target.address, "--output", "json", op, gtrid, "--yes")
            return done.returncode, json.loads(done.stdout) if done.returncode == OK else done.stderr
        method = "DELETE" if op == "rollback" else "PUT"
        reply = rest(f"http://{target.http}", method, f"/admin/v1/xa-transaction/{gtrid}")
        assert reply.headers["X-Trace-Id"] == reply.body["traceId"]
        return reply.status, reply.body


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("admin-matrix")
    seeds = (("bank-a", "a", 0), ("bank-prep", "p", 0), ("bank-fail", "f", 0), ("bank-heur", "h", 0))
    env = {"XATM_CALL_TIMEOUT": "20", "XATM_COMMIT_WAIT": "1", "XATM_RETRY_MAX": "1"}
    system = BankSystem(root, coordinator_env=env, seeds=seeds)
    (root / "second").mkdir()
    second = coordinator_proc(
        root / "second" / "data",
        root / "second",
        env={
            **TEST_COORDINATOR_ENV,
            **env,
            "XATM_FAILPOINTS": f"coordinator.before_decision=sleep({SLOW_MS})",
        },
    )
    try:
        failpoints = {
            "bank-prep": f"participant.prepare=sleep({SLOW_MS})",
            "bank-fail": "participant.commit=return(XAER_RMFAIL);participant.rollback=return(XAER_RMFAIL)",
            "bank-heur": "participant.commit=return(XA_HEURRB)",
        }
        # Every bank also takes part in the second coordinator's transactions, so trusts it.
        system.start(
            bank_env={
                name: {"XATM_ALLOW_COORDINATORS": second.address, "XATM_FAILPOINTS": failpoints.get(name, "")}
                for name, _, _ in seeds
            }
        )
        second.start()
        lab = Lab(system, second)
        yield lab
        lab.tm2.close()
    finally:
        second.stop()
        system.stop()


@pytest.mark.parametrize("status", list(S), ids=lambda s: s.label)
def test_force_rollback_and_commit_follow_the_rules(lab: Lab, status: S) -> None:
    gtrids, target = lab.make(status, len(CELLS))

    def counts() -> dict[tuple[str, str], float]:
        return {
            (op, result): admin_actions(target.http, f"force_{op}", result)
            for op in ("rollback", "commit")
            for result in ("ok", "failed_precondition")
        }

    before = counts()
    with ThreadPoolExecutor(len(CELLS)) as pool:
        answers = list(pool.map(lambda cell, g: lab.force(target, *cell, g), CELLS, gtrids))

    for (op, interface), gtrid, (code, body) in zip(CELLS, gtrids, answers, strict=True):
        allowed = status in (ROLLBACK_FROM if op == "rollback" else COMMIT_FROM)
        where = f"{op} via {interface} from {status}"
        if not allowed:
            assert code == (REFUSED if interface == "cli" else 412), f"{where}: {code} {body}"
            allowed_from = "Created, Preparing, " + ("Rollingback" if op == "rollback" else "Committing")
            message = f"transaction {gtrid} is {status.label}; {op} is allowed only from {allowed_from}"
            assert message in (body if interface == "cli" else body["error"]), where
            if status is not S.PREPARED:  # Prepared lasts only SLOW_MS; the message shows it was
                assert S(lab.info(target, gtrid).status) is status, f"{where} changed the status"
            continue
        assert code == (OK if interface == "cli" else 200), f"{where}: {code} {body}"
        assert body["txid"] == gtrid and body["status"].startswith("TX_")
        assert {"branchId", "returnCode", "status", "url"} <= set(body["branches"][0])
        lab.wait(target, gtrid, AFTER[op, status])

    after = counts()
    for op in ("rollback", "commit"):
        allowed = status in (ROLLBACK_FROM if op == "rollback" else COMMIT_FROM)
        assert after[op, "ok"] - before[op, "ok"] == (2 if allowed else 0)
        assert after[op, "failed_precondition"] - before[op, "failed_precondition"] == (0 if allowed else 2)
    audited = {(r.gtrid, r.action): r for r in audit_records(target.address)}
    for (op, interface), gtrid, (_, body) in zip(CELLS, gtrids, answers, strict=True):
        record = audited[gtrid, f"force_{op}"]
        allowed = status in (ROLLBACK_FROM if op == "rollback" else COMMIT_FROM)
        assert record.result == ("ok" if allowed else "refused: FAILED_PRECONDITION")
        assert record.peer.split()[0] == ("grpc" if interface == "cli" else "http")
        if isinstance(body, dict):  # a JSON answer (not the CLI's error line) names its trace id
            assert body["traceId"] == record.trace_id


def test_cli_json_has_the_rest_field_names(lab: Lab) -> None:
    (committing,), target = lab.make(S.COMMITTING, 1)
    base = f"http://{target.http}"
    shown = xactl_json(target.address, "show", committing)
    got = rest(base, "GET", f"/admin/v1/xa-transaction/{committing}").body
    assert set(shown) == set(got) and set(shown["branches"][0]) == set(got["branches"][0])
    assert {k: v for k, v in shown.items() if k not in ("ageSeconds", "traceId", "branches")} == {
        k: v for k, v in got.items() if k not in ("ageSeconds", "traceId", "branches")
    }
    branch = shown["branches"][0]
    # Retries at an unreachable participant are paced per endpoint: one probe at a time, so a
    # branch queued behind the lab's other branches at the same dead endpoint may not have had its
    # turn yet. A branch that has been called shows the failure's code.
    assert branch["url"] and branch["attempts"] >= 0
    assert branch["returnCode"] == ("XAER_RMFAIL" if branch["attempts"] else None), branch
    assert shown["timeoutMs"] == 300_000 and shown["ageSeconds"] >= 0

    listed = xactl_json(target.address, "list", "--status", "Committing")
    over_rest = rest(base, "GET", "/admin/v1/xa-transaction?status=Committing").body
    assert set(listed) == set(over_rest) == {"transactions", "nextPageToken", "traceId"}
    assert committing in {t["txid"] for t in listed["transactions"]}
    assert {t["txid"] for t in listed["transactions"]} == {t["txid"] for t in over_rest["transactions"]}
    assert all(t["status"] == "Committing" for t in listed["transactions"])
    assert rest(base, "GET", "/admin/v1/xa-transaction?begin=2999-01-01T00:00:00Z").body["transactions"] == []
    assert rest(base, "GET", "/admin/v1/xa-transaction?status=Bogus").status == 400

    table = xactl(target.address, "show", committing)
    assert table.returncode == OK
    called = ("XAER_RMFAIL",) if branch["attempts"] else ()  # once called, it stays called
    for text in (committing, "Committing", *called, "NEXT RETRY", "age:", "timeout: 300000 ms"):
        assert text in table.stdout


def test_forget_heuristic_transactions_through_cli_and_rest(lab: Lab) -> None:
    (first, second), target = lab.make(S.HEURISTICALLY_COMPLETED, 2)
    (committed,), _ = lab.make(S.COMMITTED, 1)
    base = f"http://{target.http}"

    done = xactl(target.address, "--output", "json", "forget", "--yes", first, committed)
    assert done.returncode == REFUSED, done.stderr
    results = {r["txid"]: r for r in json.loads(done.stdout)["results"]}
    assert results[first]["forgotten"] and results[first]["error"] is None
    assert not results[committed]["forgotten"] and results[committed]["code"] == "FAILED_PRECONDITION"
    assert "is Committed; forget is allowed only from HeuristicallyCompleted" in results[committed]["error"]
    unknown = xactl(target.address, "forget", "--yes", f"{committed}0")
    assert unknown.returncode == NOT_FOUND, unknown.stdout + unknown.stderr

    reply = rest(base, "POST", "/admin/v1/xa-transaction/bulk", body={"txids": [second]})
    assert reply.status == 200 and reply.body["results"] == [
        {"txid": second, "forgotten": True, "error": None, "code": None}
    ]
    for gtrid in (first, second):
        assert rest(base, "GET", f"/admin/v1/xa-transaction/{gtrid}").status == 404
        assert xactl(target.address, "show", gtrid).returncode == NOT_FOUND
    assert S(lab.info(target, committed).status) is S.COMMITTED

    for bad in ({"txids": []}, {"txids": ["bad id"]}, {"ids": [first]}, ["x"]):
        assert rest(base, "POST", "/admin/v1/xa-transaction/bulk", body=bad).status == 400
    assert xactl(target.address, "forget", "--yes", "bad id").returncode == INVALID
    forgets = [r for r in audit_records(target.address) if r.action == "forget"]
    assert {(r.gtrid, r.result) for r in forgets} >= {
        (first, "ok"),
        (second, "ok"),
        (committed, "refused: FAILED_PRECONDITION"),
    }


def _on_a_terminal(address: str, gtrid: str, answer: str) -> tuple[int, str]:
    """Run ``xactl rollback GTRID`` with a terminal as stdin and type ``answer``."""
    leader, follower = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("XATM_")}
    proc = subprocess.Popen(
        [str(XACTL), "--coordinator", address, "rollback", gtrid],
        stdin=follower,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    os.close(follower)
    os.write(leader, answer.encode() + b"\n")
    out, err = proc.communicate(timeout=60)
    os.close(leader)
    return proc.returncode, out + err


def test_rollback_asks_on_a_terminal_and_refuses_unconfirmed_scripts(lab: Lab) -> None:
    (gtrid,), target = lab.make(S.CREATED, 1)
    code, output = _on_a_terminal(target.address, gtrid, "n")
    assert code == 1 and "nothing changed" in output
    assert f"txid:       {gtrid}" in output and f"Force rollback of {gtrid}?" in output
    assert S(lab.info(target, gtrid).status) is S.CREATED

    piped = xactl(target.address, "rollback", gtrid)
    assert piped.returncode == INVALID and "pass --yes" in piped.stderr
    assert S(lab.info(target, gtrid).status) is S.CREATED

    code, output = _on_a_terminal(target.address, gtrid, "y")
    assert code == OK, output
    lab.wait(target, gtrid, S.ROLLEDBACK)


def test_without_an_auth_file_the_coordinator_warns_at_start_up(lab: Lab) -> None:
    log = Path(lab.system.coordinator.log_path).read_text()
    warning = next(line for line in log.splitlines() if "no auth file" in line)
    assert "WARNING" in warning and "without a token" in warning
    audited = audit_records(lab.system.coordinator.address)
    assert audited and {r.actor for r in audited} == {"anonymous"}
