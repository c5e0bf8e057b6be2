"""Coordinator replicas over the etcd transaction log: takeover of the transactions of dead
replicas. ``attach`` starts it for an engine whose log is in etcd."""

from __future__ import annotations

import asyncio

from xatm.coordinator.cluster.takeover import Takeover
from xatm.coordinator.engine.core import Engine
from xatm.coordinator.txlog.etcd import EtcdLog

__all__ = ["TAKEOVER_INTERVAL", "Takeover", "attach"]

#: Seconds between two looks for transactions of replicas whose lease expired.
TAKEOVER_INTERVAL = 1.0


def attach(engine: Engine, interval: float = TAKEOVER_INTERVAL) -> asyncio.Task[None] | None:
    """Start the takeover loop of a started ``engine`` whose log is in etcd (None otherwise);
    cancel the task returned to stop it."""
    if not isinstance(engine.log, EtcdLog):
        return None
    return asyncio.get_running_loop().create_task(Takeover(engine, engine.log, interval).run())
