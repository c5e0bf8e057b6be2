"""Fixtures of the system tests that need etcd: one three-member cluster and one single member
per session (each test uses its own key prefix or clears the one it uses)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.etcdcluster import EtcdCluster


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
