"""The tiers themselves: a test outside the system tier cannot start a process, and the system
tier's list names tests that exist."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import EVERY_TEST, SYSTEM_TESTS, ProcessOutsideSystemTier

TESTS = Path(__file__).parent


def test_a_unit_test_that_starts_a_process_is_stopped_with_what_to_do() -> None:
    with pytest.raises(ProcessOutsideSystemTier, match=r"test_tiers\.py::.* list it in SYSTEM_TESTS"):
        subprocess.run([sys.executable, "-c", "pass"], check=True)


@pytest.mark.parametrize("module", sorted(SYSTEM_TESTS))
def test_the_system_list_names_existing_tests(module: str) -> None:
    listed = SYSTEM_TESTS[module]
    tree = ast.parse((TESTS / module).read_text())
    functions = (ast.FunctionDef, ast.AsyncFunctionDef)
    defined = {node.name for node in ast.walk(tree) if isinstance(node, functions)}
    missing = set() if listed == EVERY_TEST else set(listed) - defined
    assert not missing, f"{module} has no test named {sorted(missing)}"
