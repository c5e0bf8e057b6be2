"""Shared fixtures. Multi-process systems live in tests/bank_system.py."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from participant import failpoints
from participant.context import use
from tests.bank_system import BankSystem
from tests.pgcluster import PgCluster


@pytest.fixture(autouse=True)
def _no_failpoints_leak() -> Iterator[None]:
    yield
    failpoints.disarm()


@pytest.fixture(autouse=True)
def _no_transaction_leak() -> Iterator[None]:
    """A transaction a test began and never completed stays out of the next test's thread."""
    with use(None):
        yield


@pytest.fixture
def bank_system(tmp_path: Path) -> Iterator[BankSystem]:
    """A started coordinator with bank-a (alice=1000) and bank-b (bob=1000)."""
    system = BankSystem(tmp_path).start()
    yield system
    system.stop()


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One throwaway PostgreSQL cluster per session; deadlock_timeout is short so deadlock tests are quick."""
    cluster = PgCluster({"deadlock_timeout": "100ms"})
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def pg_dsn(pg_cluster: PgCluster) -> str:
    return pg_cluster.create_database("xatm_test")
