"""Fixtures of the system tests that need a MariaDB server (tests/mariadb.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.mariadb import MariaDB


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    """One throwaway MariaDB server per session (lock waits end after 2 s)."""
    server = MariaDB(lock_wait_timeout_s=2)
    try:
        yield server
    finally:
        server.destroy()
