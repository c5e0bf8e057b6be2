"""Coordinator replicas over the etcd transaction log: takeover of the transactions of dead
replicas, the directory of replicas, and forwarding of calls to the replica owning a
transaction. ``attach`` starts it for an engine whose log is in etcd."""

from __future__ import annotations

import asyncio

import grpc

from xatm.coordinator.cluster.directory import Directory, Replica
from xatm.coordinator.cluster.forwarding import Forwarder
from xatm.coordinator.cluster.takeover import Takeover
from xatm.coordinator.engine.core import Engine
from xatm.coordinator.txlog.etcd import EtcdLog
from xatm.coordinator.txlog.interface import TxLog

__all__ = ["TAKEOVER_INTERVAL", "Cluster", "Directory", "Forwarder", "Replica", "Takeover", "attach"]

#: Seconds between two looks for transactions of replicas whose lease expired.
TAKEOVER_INTERVAL = 1.0


class Cluster:
    """One replica's part in the cluster: it takes over the transactions of dead replicas
    (every ``interval`` seconds), knows where the others serve (``directory``) and forwards
    calls about their transactions to them (``forwarder``)."""

    def __init__(
        self,
        engine: Engine,
        txlog: EtcdLog,
        *,
        interval: float = TAKEOVER_INTERVAL,
        credentials: grpc.ChannelCredentials | None = None,
        timeout: float = 30.0,
    ):
        self.directory = Directory(txlog)
        self.takeover = Takeover(engine, txlog, interval)
        self.forwarder = Forwarder(
            engine, self.directory, self.takeover, credentials=credentials, timeout=timeout
        )
        self._task = asyncio.get_running_loop().create_task(self.takeover.run())

    async def publish(self, grpc_address: str, http_address: str) -> None:
        """Say where this replica serves, for the others to forward to it and for operators."""
        await self.directory.publish(grpc_address, http_address)

    async def close(self) -> None:
        """Stop taking over and close the channels to the other replicas."""
        self._task.cancel()
        await self.forwarder.close()


def attach(
    engine: Engine,
    txlog: TxLog,
    *,
    interval: float = TAKEOVER_INTERVAL,
    credentials: grpc.ChannelCredentials | None = None,
    timeout: float = 30.0,
) -> Cluster | None:
    """The cluster part of a started ``engine`` when ``txlog`` (the log under any wrapper the
    engine writes through) is in etcd; None otherwise. ``credentials`` reach the other replicas
    (None: plaintext); ``timeout`` (s) bounds a forwarded call."""
    if not isinstance(txlog, EtcdLog):
        return None
    return Cluster(engine, txlog, interval=interval, credentials=credentials, timeout=timeout)
