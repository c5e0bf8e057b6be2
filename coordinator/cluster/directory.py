"""The replica directory: where each coordinator replica serves clients, and which one owns a
transaction, as etcd says.

Each replica publishes its gRPC and HTTP addresses under its lease at start, so an address
disappears with its replica. The owner of a transaction is the replica whose owner key it
has: the one that began it, or the one that took it over.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from xatm.coordinator.journal import replay
from xatm.coordinator.protocol import Transaction
from xatm.coordinator.txlog.etcd import EtcdLog

__all__ = ["Directory", "Replica"]


@dataclass(frozen=True)
class Replica:
    """One replica: its node id, whether its lease holds, where it serves ("" when unknown)."""

    name: str
    live: bool
    grpc: str = ""
    http: str = ""
    #: Transactions it owns in etcd.
    owned: int = 0


class Directory:
    """The replicas sharing ``txlog``'s etcd prefix, seen from replica ``txlog.replica``.

    Every method raises the etcd client's error when etcd cannot answer, ``LogStopped`` once this
    replica's log stopped.
    """

    def __init__(self, txlog: EtcdLog):
        self.txlog = txlog
        self.me = txlog.replica

    async def publish(self, grpc_address: str, http_address: str) -> None:
        """Tell the other replicas (and ``xactl replicas``) where this one serves."""
        await self.txlog.publish(json.dumps({"grpc": grpc_address, "http": http_address}).encode())

    async def replicas(self, *, count: bool = False) -> list[Replica]:
        """Every replica alive or still owning transactions, by node id; with ``count``, how many
        transactions each owns (a read of every owner key; else 0)."""
        found = []
        for entry in await self.txlog.replicas(count=count):
            try:
                where = json.loads(entry.published) if entry.published else {}
            except ValueError:
                where = {}  # written by something else than a replica: no address to use
            grpc_address = where.get("grpc", "") if isinstance(where, dict) else ""
            http_address = where.get("http", "") if isinstance(where, dict) else ""
            found.append(Replica(entry.name, entry.live, str(grpc_address), str(http_address), entry.owned))
        return found

    async def replica(self, name: str) -> Replica:
        """Replica ``name`` (not live, without addresses, when etcd does not know it)."""
        return next((r for r in await self.replicas() if r.name == name), Replica(name, False))

    async def owner(self, gtrid: str) -> Replica | None:
        """The replica owning ``gtrid``, or None when no replica does."""
        name = await self.txlog.owner_of(gtrid)
        return None if name is None else await self.replica(name)

    async def others(self) -> dict[str, tuple[str, Transaction]]:
        """The transactions other replicas own, rebuilt from their records in etcd:
        {gtrid: (owner, transaction)}."""
        owners, records = await self.txlog.others()
        return {gtrid: (owners[gtrid], tx) for gtrid, tx in replay(records).items() if gtrid in owners}

    async def transaction(self, gtrid: str) -> Transaction | None:
        """``gtrid`` rebuilt from its records in etcd, or None when etcd holds none."""
        return replay(await self.txlog.records_of(gtrid)).get(gtrid)
