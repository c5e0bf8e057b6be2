"""Coordinator replicas over the etcd transaction log: takeover of the transactions of dead
replicas. ``attach`` starts it for an engine whose log is in etcd."""

from __future__ import annotations

import asyncio

from xatm.coordinator.cluster.takeover import Takeover
from xatm.coordinator.engine.core import Engine
from xatm.coordinator.txlog.etcd import EtcdLog
from xatm.coordinator.txlog.interface import TxLog

__all__ = ["TAKEOVER_INTERVAL", "Takeover", "attach"]

#: Seconds between two looks for transactions of replicas whose lease expired.
TAKEOVER_INTERVAL = 1.0


def attach(engine: Engine, txlog: TxLog, interval: float = TAKEOVER_INTERVAL) -> asyncio.Task[None] | None:
    """Start the takeover loop of a started ``engine`` when ``txlog`` (the log under any wrapper
    the engine writes through) is in etcd; None otherwise. Cancel the task returned to stop it."""
    if not isinstance(txlog, EtcdLog):
        return None
    return asyncio.get_running_loop().create_task(Takeover(engine, txlog, interval).run())
