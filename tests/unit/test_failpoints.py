"""The XATM_FAILPOINTS parser and actions (docs/contract.md), in process.

The crash action, which ends a process, is checked in tests/system/test_failpoints.py.
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest
from hypothesis import given
from hypothesis import strategies as st

from xatm.participant import failpoints
from xatm.participant.errors import Status, XatmError
from xatm.participant.failpoints import CATALOGUE, FailpointError
from xatm.participant.xa import XaCode

NAMES = sorted(CATALOGUE)


def test_design_boundaries_are_all_named() -> None:
    for name in (
        "coordinator.before_prepare",
        "coordinator.after_prepare",
        "coordinator.before_decision",
        "coordinator.after_decision",
        "coordinator.between_phase_two",
        "participant.prepare",
        "participant.commit",
        "participant.rollback",
        "participant.after_prepare",
        "wal.before_fsync",
    ):
        assert name in CATALOGUE


def test_actions_and_counts() -> None:
    failpoints.arm("participant.commit=2*return(XA_RETRY);participant.rollback=error(UNAVAILABLE)")
    assert failpoints.hit("participant.commit") == XaCode.XA_RETRY
    assert failpoints.hit("participant.commit") == XaCode.XA_RETRY
    assert failpoints.hit("participant.commit") is None  # 2* fired twice, then disarmed itself
    with pytest.raises(XatmError) as err:
        failpoints.hit("participant.rollback")
    assert err.value.status == Status.UNAVAILABLE
    assert failpoints.hit("participant.prepare") is None


def test_sleep_in_sync_and_async_code() -> None:
    failpoints.arm("wal.before_fsync=2*sleep(30)")
    started = time.monotonic()
    assert failpoints.hit("wal.before_fsync") is None
    assert asyncio.run(failpoints.ahit("wal.before_fsync")) is None
    assert time.monotonic() - started >= 0.06


@pytest.mark.parametrize(
    "spec",
    [
        "nope=crash",
        "participant.prepare",
        "participant.prepare=explode",
        "participant.prepare=sleep(abc)",
        "participant.prepare=return(XA_NOPE)",
        "participant.prepare=error(NOT_A_CODE)",
        "participant.prepare=x*crash",
        "participant.prepare=0*crash",
    ],
)
def test_malformed_specs_are_clear_errors(spec: str) -> None:
    with pytest.raises(FailpointError):
        failpoints.arm(spec)


actions = st.one_of(
    st.just("crash"),
    st.integers(0, 10_000).map(lambda ms: f"sleep({ms})"),
    st.sampled_from([c.name for c in XaCode]).map(lambda c: f"return({c})"),
    st.sampled_from([c.name for c in grpc.StatusCode]).map(lambda c: f"error({c})"),
)


@given(st.lists(st.tuples(st.sampled_from(NAMES), st.integers(0, 5), actions), max_size=6))
def test_every_valid_spec_parses(items: list[tuple[str, int, str]]) -> None:
    spec = ";".join(f"{name}={f'{n}*' if n else ''}{action}" for name, n, action in items)
    failpoints.arm(spec)
    failpoints.disarm()


@given(st.text(max_size=80))
def test_any_text_parses_or_is_refused_clearly(spec: str) -> None:
    try:
        failpoints.arm(spec)
    except FailpointError:
        pass
    finally:
        failpoints.disarm()
