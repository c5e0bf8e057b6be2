"""Where the etcd transaction log keeps what, under one prefix (``/xatm/`` by default).

- ``<prefix>replica/<id>``: a live replica, attached to its lease; the value is its incarnation
  tag (the lease id in hex), which every write of that replica compares, so a replica whose
  lease expired (or a stale process of a restarted one) can write nothing.
- ``<prefix>address/<id>``: where replica ``<id>`` serves clients (its gRPC and HTTP addresses),
  attached to its lease like its ``replica/`` key, so it vanishes with the replica.
- ``<prefix>member/<id>``: a replica that ever logged; kept until its transactions were taken over.
- ``<prefix>owner/<id>/<gtrid>``: ``<id>`` owns the transaction; a takeover moves the key
  (compare-and-set), which fences the old owner's writes on that transaction.
- ``<prefix>tx/<gtrid>/<tag>.<seq>``: one log record (a ``WalRecord``) of the transaction: its
  begin, enlistments, statuses, the decision and every branch result; a checkpoint replaces them
  by one snapshot record.
- ``<prefix>audit/<id>/<tag>.<seq>``: an audited operator action logged by replica ``<id>``.

Records replay in (mod revision, key) order: one etcd transaction writes one replica's records
with increasing sequence numbers, and later writes have larger revisions.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Keys"]


@dataclass(frozen=True)
class Keys:
    """The key layout under ``prefix`` (bytes end with "/") for replica ``replica``."""

    prefix: str
    replica: str

    def _key(self, *parts: str) -> bytes:
        return (self.prefix + "/".join(parts)).encode()

    def live(self, replica: str | None = None) -> bytes:
        return self._key("replica", replica or self.replica)

    @property
    def lives(self) -> bytes:
        return self._key("replica", "")

    def address(self, replica: str | None = None) -> bytes:
        return self._key("address", replica or self.replica)

    @property
    def addresses(self) -> bytes:
        return self._key("address", "")

    @property
    def all_owners(self) -> bytes:
        """Prefix of every owner key of every replica."""
        return self._key("owner", "")

    @property
    def all_audits(self) -> bytes:
        return self._key("audit", "")

    def member(self, replica: str | None = None) -> bytes:
        return self._key("member", replica or self.replica)

    @property
    def members(self) -> bytes:
        return self._key("member", "")

    def owner(self, gtrid: str, replica: str | None = None) -> bytes:
        return self._key("owner", replica or self.replica, gtrid)

    def owned(self, replica: str | None = None) -> bytes:
        """Prefix of every owner key of ``replica`` (default: this one)."""
        return self._key("owner", replica or self.replica, "")

    def records(self, gtrid: str) -> bytes:
        """Prefix of every record of ``gtrid``."""
        return self._key("tx", gtrid, "")

    @property
    def all_records(self) -> bytes:
        return self._key("tx", "")

    def record(self, gtrid: str, name: str) -> bytes:
        return self._key("tx", gtrid, name)

    def audits(self, replica: str | None = None) -> bytes:
        return self._key("audit", replica or self.replica, "")

    def audit(self, name: str) -> bytes:
        return self._key("audit", self.replica, name)

    def tail(self, key: bytes, prefix: bytes) -> str:
        """What follows ``prefix`` in ``key``."""
        return key[len(prefix) :].decode()
