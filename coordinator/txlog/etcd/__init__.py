"""The transaction log in etcd, for coordinator replicas (the ``etcd`` extra installs aetcd)."""

from xatm.coordinator.txlog.etcd.client import STORE_SCHEME, parse_store_url
from xatm.coordinator.txlog.etcd.log import EtcdLog

__all__ = ["STORE_SCHEME", "EtcdLog", "parse_store_url"]
