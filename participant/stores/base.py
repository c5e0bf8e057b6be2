"""The resource-manager interface: the XA verbs a store implements for the stub.

Methods are synchronous (SQLite and psycopg are); the stub runs them off the event loop
when it serves asyncio. Success returns normally; any other XA answer is an ``XaError``
carrying its code, so the mapping to the wire lives in one place (the servicer).

**An ended branch is dead.** Business code reaches a branch through handles the RM gives it:
the xid itself (``SqliteRM.get/put``), a connection and the cursors made from it
(``PostgresRM.guard``), a session, a transaction block. Once the branch's business phase is
over -- prepared, committed (two-phase, one-phase or read-only), or rolled back, whoever did it:
the coordinator, its transaction timeout, a no vote, ``close()`` -- every such handle raises
``BranchEnded`` on its next use, including a statement that was running when the branch ended
and a later ``start`` of the same xid. A handle never runs anything in autocommit, never reaches
the pooled connection or session once another branch may hold it, and so can neither commit
work nor leak it into another branch. Every RM meets this rule; tests/test_rm_contract.py holds
each one to it.
"""

from __future__ import annotations

import abc
from typing import ClassVar

from xatm.participant.errors import InvalidArgumentError
from xatm.participant.xa import XaCode, XaError, Xid, rm_id_problem

__all__ = ["BranchEnded", "ResourceManager", "check_rm_id"]


class BranchEnded(XaError):
    """A handle on a branch was used after the branch ended; nothing was run.

    ``xid`` is the branch, ``how`` says how it ended (e.g. ``"rolled back"``, ``"committed in
    one phase"``, ``"prepared"``). The XA code tells the verbs' story: XAER_NOTA once the RM has
    forgotten the branch (committed or rolled back), XAER_PROTO while it is prepared (it takes
    no more work, phase two is the coordinator's), XAER_DUPID for ``start`` of an ended xid.
    """

    def __init__(self, xid: Xid, how: str, code: XaCode = XaCode.XAER_NOTA):
        super().__init__(
            code,
            f"branch {xid} has ended ({how}); its handles are dead and nothing more runs in it: "
            "do the work in a new transaction",
        )
        self.xid = xid
        self.how = how


#: How a branch ended, as BranchEnded tells it; the same words from every RM.
PREPARED = "prepared; the coordinator decides its outcome"
READ_ONLY = "committed: it was read-only"
COMMITTED = "committed"
ONE_PHASE = "committed in one phase"
ROLLED_BACK = "rolled back"


def ended_by(verb: str, code: XaCode) -> str:
    """How a branch ended whose ``verb`` (prepare, one-phase commit) answered ``code`` instead."""
    return f"rolled back: {verb} voted {code.name}" if code.is_rollback else f"{verb} failed with {code.name}"


def check_rm_id(value: str) -> str:
    """``value`` if it is a resource manager id (``rm_id_problem``); raises InvalidArgumentError."""
    problem = rm_id_problem(value)
    if problem:
        raise InvalidArgumentError(f"rm_id {repr(value)[:40]} {problem}")
    return value


class ResourceManager(abc.ABC):
    """One resource (a database) that holds branches of global transactions.

    A subclass sets ``self.rm_id`` in its constructor (checked there: 1-256 printable
    characters); reading it before raises InvalidArgumentError naming the class.
    """

    _rm_id: str

    #: Whether a verb may wait: on I/O, on a lock another branch holds, for a pooled connection.
    #: The Participant service then serves the branches a coordinator sends together each in a
    #: worker thread of its own, so that none waits for another. An RM whose verbs all return at
    #: once without waiting for anything (an in-memory one) says False, and its branches are
    #: served one after another on the thread that received them: no hand-off per branch.
    blocking: ClassVar[bool] = True

    @property
    def rm_id(self) -> str:
        """Stable name of this RM; one branch per RM per transaction: 1-256 printable characters."""
        try:
            return self._rm_id
        except AttributeError:
            raise InvalidArgumentError(
                f"{type(self).__name__} has no rm_id: set self.rm_id in its constructor"
            ) from None

    @rm_id.setter
    def rm_id(self, value: str) -> None:
        # Every store sets it in its constructor: a bad one is refused there, not by the coordinator.
        self._rm_id = check_rm_id(value)

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
