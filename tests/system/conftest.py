"""Fixtures of the system tests that need a server of their own for the session: etcd (one
three-member cluster and one single member; each test uses its own key prefix or clears the one it
uses) and MariaDB (tests/mariadb.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.etcdcluster import EtcdCluster
from tests.mariadb import MariaDB


def _session_cluster(size: int) -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(size)
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def etcd_cluster() -> Iterator[EtcdCluster]:
    """Three members on loopback, shared by the session: tests that kill members restart them."""
    yield from _session_cluster(3)


@pytest.fixture(scope="session")
def etcd_single() -> Iterator[EtcdCluster]:
    yield from _session_cluster(1)


@pytest.fixture(scope="session")
def mariadb() -> Iterator[MariaDB]:
    """One throwaway MariaDB server per session (lock waits end after 2 s)."""
    server = MariaDB(lock_wait_timeout_s=2)
    try:
        yield server
    finally:
        server.destroy()
