"""Coordinator tables that grow with what clients send keep a bound."""

from __future__ import annotations

import asyncio
import time

import pytest

from xatm.coordinator.engine import registry as registry_module
from xatm.coordinator.engine.reachability import Reachability
from xatm.coordinator.engine.registry import Registry
from xatm.coordinator.server import approvals as approvals_module
from xatm.coordinator.server.approvals import Approvals
from xatm.coordinator.server.auth import Caller, Principal, Role
from xatm.participant.errors import ResourceExhaustedError
from xatm.participant.xa import XaCode


def test_known_participants_keep_the_most_recently_enlisted_up_to_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(registry_module, "MAX_KNOWN_PARTICIPANTS", 3)
    registry = Registry()
    for rm in ("a", "b", "c"):
        registry.enlisted(rm, f"{rm}:1")
    registry.enlisted("a", "a:2")  # enlisted again: now the most recent
    registry.enlisted("d", "d:1")
    assert registry.rm_endpoints == {"c": "c:1", "a": "a:2", "d": "d:1"}
    assert registry.endpoints == {"c:1", "a:2", "d:1"}


def test_failing_endpoints_nobody_waits_for_are_forgotten() -> None:
    reachability = Reachability(initial=0.05, cap=1.0)
    for endpoint in ("dead-a:1", "dead-b:1", "dead-c:1"):
        reachability.record(endpoint, XaCode.XAER_RMFAIL, "no connection", time.monotonic())
    assert set(reachability.down) == {"dead-a:1", "dead-b:1", "dead-c:1"}
    reachability.keep_only({"dead-b:1", "alive:1"})
    assert set(reachability.down) == {"dead-b:1"}
    assert reachability.retry_at("dead-a:1") is None


class _Ops:
    """What filing a request needs of the admin operations: nothing to look up, audits counted."""

    def __init__(self) -> None:
        self.audits = 0

    async def _record(self, *args: object) -> None:
        self.audits += 1


def test_pending_approval_requests_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(approvals_module, "MAX_PENDING", 2)
    approvals = Approvals(frozenset({"force_rollback"}))
    ops = _Ops()
    caller = Caller(Principal("ops", Role.OPERATOR), "127.0.0.1:1", "t1")
    gtrids = ["n1.0", "n1.1"]  # two transactions: no status rule to check first

    def file() -> object:
        return asyncio.run(approvals.file(ops, caller, "force_rollback", gtrids, "stuck"))  # type: ignore[arg-type]

    file()
    file()
    with pytest.raises(ResourceExhaustedError) as err:
        file()
    assert "2 approval requests are pending" in err.value.message
    assert ops.audits == 2
