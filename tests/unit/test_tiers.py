"""The tiers themselves: the folder of a test is its tier, every test is in exactly one, and a test
outside the system tier cannot start a process."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import TESTS, TIERS, ProcessOutsideSystemTier, misplaced, tier_at


def test_a_unit_test_that_starts_a_process_is_stopped_with_what_to_do() -> None:
    with pytest.raises(ProcessOutsideSystemTier, match=r"test_tiers\.py::.* move it to tests/system$"):
        subprocess.run([sys.executable, "-c", "pass"], check=True)


def test_every_test_module_is_in_a_tier_folder() -> None:
    modules = sorted(TESTS.rglob("test_*.py"))
    outside = [str(path.relative_to(TESTS)) for path in modules if tier_at(path) is None]
    assert outside == [], f"test modules in no tier folder: {outside}"
    assert {tier_at(path) for path in modules} == set(TIERS)


def test_the_folder_gives_the_tier_and_what_to_do_otherwise() -> None:
    for tier in TIERS:
        assert tier_at(TESTS / tier / "test_x.py") == tier
        assert tier_at(TESTS / tier / "deeper" / "test_x.py") == tier
        assert misplaced(TESTS / tier / "test_x.py", [tier, "parametrize"]) is None
    assert tier_at(TESTS / "test_x.py") is None
    assert tier_at(TESTS / "helpers" / "test_x.py") is None
    assert tier_at(TESTS.parent / "unit" / "test_x.py") is None
    loose = misplaced(TESTS / "test_x.py", [])
    assert loose is not None and "test_x.py is in no tier: move it to tests/unit" in loose
    twice = misplaced(TESTS / "unit" / "test_x.py", ["system"])
    assert twice is not None and "is in tests/unit but marked system" in twice
    assert twice.endswith("move it to tests/system")


def test_every_collected_test_carries_its_folders_tier_and_no_other(request: pytest.FixtureRequest) -> None:
    assert request.node.get_closest_marker("unit") is not None
    items = request.session.items
    assert request.node in items
    wrong = {
        item.nodeid: tiers
        for item in items
        if (tiers := {mark.name for mark in item.iter_markers()} & set(TIERS)) != {tier_at(item.path)}
    }
    assert wrong == {}, f"tests whose tier markers are not their folder's: {wrong}"
