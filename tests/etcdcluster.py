"""Throwaway etcd clusters for tests: the launcher ``xatm bench --etcd`` uses too."""

from xatm.coordinator.tools.etcdcluster import EtcdCluster, EtcdClusterError, EtcdMember, find_etcd

__all__ = ["EtcdCluster", "EtcdClusterError", "EtcdMember", "find_etcd"]
