"""Coordinator tables that grow with what clients send keep a bound."""

from __future__ import annotations

import time

import pytest

from xatm.coordinator.engine import registry as registry_module
from xatm.coordinator.engine.reachability import Reachability
from xatm.coordinator.engine.registry import Registry
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
