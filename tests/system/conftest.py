"""Fixtures of the system tests that need etcd: one three-member cluster and one single member
per session (each test uses its own key prefix)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.etcdcluster import EtcdCluster


@pytest.fixture(scope="session")
def etcd_cluster() -> Iterator[EtcdCluster]:
    """Three members on loopback, shared by the session: tests that kill members restart them."""
    cluster = EtcdCluster(3)
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def etcd_single() -> Iterator[EtcdCluster]:
    cluster = EtcdCluster(1)
    try:
        yield cluster
    finally:
        cluster.destroy()
