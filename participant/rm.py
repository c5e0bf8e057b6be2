"""The resource-manager interface: the XA verbs a store implements for the stub.

Methods are synchronous (SQLite and psycopg are); the stub runs them off the event loop
when it serves asyncio. Success returns normally; any other XA answer is an ``XaError``
carrying its code, so the mapping to the wire lives in one place (the servicer).
"""

from __future__ import annotations

import abc

from .xa import XaCode, XaError, Xid

__all__ = ["ResourceManager"]


class ResourceManager(abc.ABC):
    """One resource (a database) that holds branches of global transactions."""

    #: Stable name of this RM; one branch per RM per transaction.
    rm_id: str

    @abc.abstractmethod
    def start(self, xid: Xid) -> None:
        """Begin work on a branch, or join it again if it is already active."""

    def end(self, xid: Xid) -> None:  # noqa: B027 - optional hook
        """A unit of business work on the branch finished (xa_end); most stores need nothing."""

    @abc.abstractmethod
    def prepare(self, xid: Xid) -> XaCode:
        """Make the branch durable and vote: XA_OK, or XA_RDONLY when it wrote nothing.

        Raise ``XaError(XA_RB*)`` to vote no (the branch is then rolled back), or
        ``XaError(XAER_*)`` when the verb itself failed.
        """

    @abc.abstractmethod
    def commit(self, xid: Xid, one_phase: bool) -> None:
        """Apply a prepared branch, or (one_phase) an active one; unknown xid -> XaError(XAER_NOTA)."""

    @abc.abstractmethod
    def rollback(self, xid: Xid) -> None:
        """Discard an active or prepared branch; unknown xid -> XaError(XAER_NOTA)."""

    @abc.abstractmethod
    def recover(self) -> list[Xid]:
        """Every prepared branch this RM holds (all formatIDs; the caller filters)."""

    def forget(self, xid: Xid) -> None:  # noqa: B027 - optional hook
        """Drop what the RM remembers of a heuristically completed branch."""

    def savepoint(self, xid: Xid, savepoint_id: str) -> None:
        """Mark a point the branch can roll back to."""
        raise XaError(XaCode.XAER_PROTO, f"{type(self).__name__} does not support savepoints")

    def rollback_to_savepoint(self, xid: Xid, savepoint_id: str) -> None:
        """Undo the branch's work after the savepoint, keeping what came before."""
        raise XaError(XaCode.XAER_PROTO, f"{type(self).__name__} does not support savepoints")

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release connections and files."""
