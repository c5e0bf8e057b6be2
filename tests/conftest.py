"""Shared fixtures. Multi-process systems live in tests/bank_system.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from participant import failpoints
from tests.bank_system import BankSystem


@pytest.fixture(autouse=True)
def _no_failpoints_leak() -> Iterator[None]:
    yield
    failpoints.disarm()


@pytest.fixture
def bank_system(tmp_path: Path) -> Iterator[BankSystem]:
    """A started coordinator with bank-a (alice=1000) and bank-b (bob=1000)."""
    system = BankSystem(tmp_path).start()
    yield system
    system.stop()
