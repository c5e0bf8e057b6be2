"""A participant that dies with branches owed: `xactl show`/`list`, REST and /metrics say which
branches wait for it, since when and after how many failed calls, until it answers again.

A real coordinator and a real SDK participant (the bank example's account service): branches are
enlisted at the participant, the participant is killed with SIGKILL, the transactions are rolled
back, so the coordinator owes the dead participant phase-two calls.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from tests.admin_support import rest, scrape, xactl, xactl_json
from tests.bank_system import TEST_COORDINATOR_ENV
from tests.chaos import eventually
from xatm.coordinator.tools.demo import bank_proc
from xatm.coordinator.tools.procs import Proc, coordinator_proc, free_port
from xatm.participant.api.v1 import coordinator_pb2, coordinator_pb2_grpc
from xatm.participant.xa import XaCode

#: How many failing endpoints the gauge names; the rest are summed as endpoint="other".
NAMED = 10
#: Seconds to wait for what the coordinator does by itself.
WAIT = 30.0


def _owed(coordinator: Proc, endpoints: list[str], branches: int) -> list[str]:
    """Begin, enlist ``branches`` branches at each endpoint in turn, roll back: the gtrids."""
    gtrids = []
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        for endpoint in endpoints:
            gtrid = stub.Begin(coordinator_pb2.BeginRequest(timeout_ms=300_000), timeout=10).gtrid
            for b in range(branches):
                enlist = coordinator_pb2.EnlistRequest(
                    gtrid=gtrid, bqual=f"b{b}", rm_id="bank", endpoint=endpoint
                )
                assert stub.Enlist(enlist, timeout=10).code == XaCode.XA_OK
            gtrids.append(gtrid)
        for gtrid in gtrids:
            stub.Rollback(coordinator_pb2.CompletionRequest(gtrid=gtrid), timeout=30)
    return gtrids


def _gauge(coordinator: Proc) -> dict[str, float]:
    samples = scrape(coordinator.http)
    return {
        dict(labels)["endpoint"]: value
        for (name, labels), value in samples.items()
        if name == "xatm_unreachable_branches"
    }


@pytest.fixture
def system(tmp_path: Path) -> Iterator[tuple[Proc, Proc]]:
    coordinator = coordinator_proc(tmp_path / "data", tmp_path, env=dict(TEST_COORDINATOR_ENV))
    bank = bank_proc("bank", tmp_path / "bank.db", coordinator.address, "acct=10", tmp_path)
    try:
        coordinator.start()
        bank.start()
        yield coordinator, bank
    finally:
        bank.stop()
        coordinator.stop()


def test_branches_at_a_dead_participant_are_shown_until_it_answers(system: tuple[Proc, Proc]) -> None:
    coordinator, bank = system
    bank.kill()
    killed_at = time.time()
    gtrids = _owed(coordinator, [bank.address, bank.address], branches=2)

    owed_by_bank = lambda: _gauge(coordinator).get(bank.address) == 4 or None  # noqa: E731
    eventually("four branches owed by the dead bank", owed_by_bank, WAIT)
    assert scrape(coordinator.http)[("xatm_unreachable_participants", ())] == 1

    view = eventually("two failed calls counted", lambda: _failed_twice(coordinator, gtrids[0]), WAIT)
    for branch in view["branches"]:
        since = branch["unreachableSince"]
        assert since is not None and abs(_epoch(since) - killed_at) < 30, since
        assert branch["returnCode"] == "XAER_RMFAIL"
    table = xactl(coordinator.address, "show", gtrids[0])
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    header = next(line for line in lines if line.startswith("BRANCH"))
    assert header.rstrip().endswith("UNREACHABLE")
    rows = [line for line in lines if line.startswith(("b0 ", "b1 "))]
    assert len(rows) == 2 and all(f"since {view['branches'][0]['unreachableSince']}" in r for r in rows), rows
    listed = xactl(coordinator.address, "list")
    assert listed.returncode == 0, listed.stderr
    for gtrid in gtrids:
        row = next(line for line in listed.stdout.splitlines() if line.startswith(gtrid))
        assert row.split()[-1] == "2", row  # UNREACHABLE: both branches
    body = rest(f"http://{coordinator.http}", "GET", f"/admin/v1/xa-transaction/{gtrids[1]}").body
    assert all(b["unreachableSince"] and b["endpointFailures"] >= 1 for b in body["branches"]), body

    bank.start()  # it answers again (the branches are unknown to it: rolled back already)
    eventually("no branch left waiting", lambda: not _gauge(coordinator) or None, WAIT)
    assert scrape(coordinator.http)[("xatm_unreachable_participants", ())] == 0
    for gtrid in gtrids:
        done = eventually(f"{gtrid} rolled back", functools.partial(_rolled_back, coordinator, gtrid), WAIT)
        assert all(b["unreachableSince"] is None and b["endpointFailures"] == 0 for b in done["branches"])


def test_the_gauge_names_the_most_owed_endpoints_and_sums_the_rest(system: tuple[Proc, Proc]) -> None:
    coordinator, _ = system
    dead = [f"127.0.0.1:{free_port()}" for _ in range(NAMED + 3)]  # nobody listens there
    _owed(coordinator, dead[:1], branches=3)  # the most owed, named whatever the order
    _owed(coordinator, dead[1:], branches=1)
    gauge = eventually("every dead branch counted", lambda: _gauge_total(coordinator, 3 + NAMED + 2), WAIT)
    assert len(gauge) == NAMED + 1 and gauge[dead[0]] == 3
    assert gauge["other"] == 3  # 12 endpoints of one branch each, nine named
    assert scrape(coordinator.http)[("xatm_unreachable_participants", ())] == NAMED + 3


def _failed_twice(coordinator: Proc, gtrid: str) -> dict[str, Any] | None:
    view: dict[str, Any] = xactl_json(coordinator.address, "show", gtrid)
    return view if all(b["endpointFailures"] >= 2 for b in view["branches"]) else None


def _gauge_total(coordinator: Proc, total: int) -> dict[str, float] | None:
    gauge = _gauge(coordinator)
    return gauge if sum(gauge.values()) == total else None


def _rolled_back(coordinator: Proc, gtrid: str) -> dict[str, Any] | None:
    view: dict[str, Any] = xactl_json(coordinator.address, "show", gtrid)
    return view if view["status"] == "Rolledback" else None


def _epoch(rfc3339: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(rfc3339.replace("Z", "+00:00")).timestamp()
