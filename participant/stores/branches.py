"""The frame of a resource manager whose active branch holds one database session.

``SessionRM`` keeps the table of active branches and the memory of ended xids, serialises the
verbs on each branch, and runs the verbs' common shape -- stop the branch's handles, do the
database's step, record how the branch ended, give the session back -- so that each database RM
writes only its statements. ``SessionBranch`` is a branch's state plus the gate every business
call passes: refused once the branch has ended, counted while it runs, so the verb that ends the
branch can wait for it (or interrupt it) before touching the session. See
participant/stores/base.py for the rule this enforces and docs/resource-managers.md.
"""

from __future__ import annotations

import abc
import hashlib
import re
import threading
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import ClassVar, Generic, Protocol, TypeVar

from xatm.participant.stores.base import (
    COMMITTED,
    ONE_PHASE,
    PREPARED,
    READ_ONLY,
    ROLLED_BACK,
    BranchEnded,
    ResourceManager,
    ended_by,
)
from xatm.participant.xa import XaCode, XaError, Xid

__all__ = [
    "ENDED_RETAIN",
    "XID_PART",
    "BranchCall",
    "SavepointBranch",
    "SessionBranch",
    "SessionHandle",
    "SessionRM",
    "StatementRM",
    "check_xid",
    "no_vote",
    "savepoint_digest",
]

#: How many ended xids are remembered, so that a stale handle or a late start is told how its branch
#: ended (and a start of one is refused) instead of opening a fresh transaction under the old xid.
ENDED_RETAIN = 10_000
#: A gtrid or a bqual of xatm's shape (the characters every database's XID syntax takes as they are).
XID_PART = re.compile(r"[A-Za-z0-9._:-]{1,64}")
_MAX_SAVEPOINT_ID = 256


def check_xid(xid: Xid, *, max_format_id: int, format_id_range: str) -> None:
    """XaError(XAER_INVAL) unless ``xid`` has xatm's shape: formatID 0..``max_format_id`` (spelt
    ``format_id_range`` in the message), gtrid and bqual 1-64 characters of [A-Za-z0-9._:-]."""
    fid, gtrid, bqual = xid.format_id, xid.gtrid, xid.bqual
    if (
        not isinstance(fid, int)
        or not 0 <= fid <= max_format_id
        or not isinstance(gtrid, str)
        or not XID_PART.fullmatch(gtrid)
        or not isinstance(bqual, str)
        or not XID_PART.fullmatch(bqual)
    ):
        raise XaError(
            XaCode.XAER_INVAL,
            f"malformed XID {xid!r}: formatID must be {format_id_range}, "
            "gtrid and bqual 1-64 characters of [A-Za-z0-9._:-]",
        )


def savepoint_digest(savepoint_id: str) -> str:
    """A fixed-length SQL identifier for an opaque savepoint id (no quoting surprises, no silent
    truncation); XaError(XAER_INVAL) for an id that is not 1-256 characters."""
    if not isinstance(savepoint_id, str) or not 0 < len(savepoint_id) <= _MAX_SAVEPOINT_ID:
        raise XaError(XaCode.XAER_INVAL, f"malformed savepoint id: expected 1-{_MAX_SAVEPOINT_ID} characters")
    return "xatm_sp_" + hashlib.sha256(savepoint_id.encode()).hexdigest()[:32]


def no_vote(error: XaError) -> XaError:
    """Prepare's answer once the database has lost the branch: an XA_RB* code with the cause."""
    if error.code.is_rollback:
        return error
    code = XaCode.XA_RBCOMMFAIL if error.code == XaCode.XAER_RMFAIL else XaCode.XA_RBROLLBACK
    return XaError(code, error.reason)


@dataclass(eq=False)
class SessionBranch:
    """One active branch: its xid, how it ended (once it has) and the gate of its business calls."""

    xid: Xid
    outcomes: dict[Xid, tuple[str, XaCode]]  # the RM's ended xids, kept current by phase two
    lock: threading.Lock = field(default_factory=threading.Lock)  # one verb at a time
    gate: threading.Condition = field(default_factory=threading.Condition)
    ended: str | None = None  # how the business phase ended, for BranchEnded
    ended_code: XaCode = XaCode.XAER_NOTA
    discarded: bool = False  # ended by a rollback: a call that was running did work for nothing
    in_flight: int = 0  # business calls running on the session now
    failure: XaError | None = None  # why the branch cannot commit: its vote
    finished: bool = False
    #: What the database driver raises; a call of it cut short by the branch's end says BranchEnded.
    driver_error: ClassVar[type[Exception]] = Exception

    def ended_error(self) -> BranchEnded | None:
        """Why a handle may not be used (the branch ended), or None while it may."""
        if self.ended is None:
            return None
        how, code = self.outcomes.get(self.xid, (self.ended, self.ended_code))
        return BranchEnded(self.xid, how, code)

    def check(self) -> None:
        """Raise BranchEnded once the branch has ended."""
        with self.gate:
            if (ended := self.ended_error()) is not None:
                raise ended

    def refusal(self) -> Exception | None:
        """(Under the gate.) Why a business call may not start now, or None: the branch has ended."""
        return self.ended_error()

    def enter(self) -> None:
        """A business call starts: refused (BranchEnded if the branch has ended), else it is counted."""
        with self.gate:
            if (refused := self.refusal()) is not None:
                raise refused
            self.in_flight += 1

    def leave(self) -> None:
        with self.gate:
            self.in_flight -= 1
            if not self.in_flight:  # what waits on the gate waits for no call running
                self.gate.notify_all()

    def calling(self) -> BranchCall[None]:
        """One business call on the session: refused once the branch ended, waited for by its end.

        A call cut short by the end (a rollback interrupts it) raises BranchEnded, not the
        driver's error; so does one that finished while a rollback discarded its work.
        """
        return BranchCall(self, None)


T = TypeVar("T")


class BranchCall(Generic[T]):
    """``with branch.calling():`` -- a class rather than a generator: every statement of business
    code passes here, often several times."""

    __slots__ = ("_branch", "_value")

    def __init__(self, branch: SessionBranch, value: T):
        self._branch = branch
        self._value = value  # what the block is given: the session, for an RM's ``using()``

    def __enter__(self) -> T:
        self._branch.enter()
        return self._value

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, _tb: object) -> None:
        branch = self._branch
        # Read before the call stops counting: only then can the end proceed, and it must not
        # turn a failure of the call's own into BranchEnded.
        ended = branch.ended_error() if kind is not None and issubclass(kind, branch.driver_error) else None
        branch.leave()
        if ended is not None:
            raise ended from error
        if kind is None and branch.discarded and (ended := branch.ended_error()) is not None:
            raise ended


@dataclass(eq=False, kw_only=True)
class SavepointBranch(SessionBranch):
    """A branch whose savepoints are set by SQL statements on its session."""

    savepoints: list[str] = field(default_factory=list)  # ids in the order set, as the database stacks them
    savepoints_at_failure: int = 0  # rolling back to one of these undoes the failure

    def fail(self, error: XaError) -> None:
        """The branch's first failure stands as its vote, until a rollback to an earlier savepoint."""
        if self.failure is None:
            self.failure = error
            self.savepoints_at_failure = len(self.savepoints)


B = TypeVar("B", bound=SessionBranch)
SB = TypeVar("SB", bound=SavepointBranch)


class SessionHandle(Generic[B]):
    """The branch's session as business code gets it: it dies with the branch. Subclasses add the
    driver's calls (each through ``branch.using()``); ``commit()`` and ``rollback()`` are refused,
    with ``owned`` as the reason, since the transaction belongs to the coordinator."""

    __slots__ = ("_branch",)
    owned: ClassVar[str] = (
        "the branch's transaction belongs to the coordinator: commit or roll back the global "
        "transaction; inside the branch use savepoints"
    )

    def __init__(self, branch: B):
        self._branch = branch

    @property
    def xid(self) -> Xid:
        return self._branch.xid

    def commit(self) -> None:
        """Refused: XaError(XAER_PROTO); the coordinator commits the branch."""
        raise XaError(XaCode.XAER_PROTO, self.owned)

    def rollback(self) -> None:
        """Refused: XaError(XAER_PROTO); fail the work (raise) or roll back to a savepoint."""
        raise XaError(XaCode.XAER_PROTO, self.owned)

    def __repr__(self) -> str:
        state = f"ended: {self._branch.ended}" if self._branch.ended else "live"
        return f"<{type(self).__name__} of branch {self._branch.xid} ({state})>"


class SessionRM(ResourceManager, Generic[B]):
    """Verbs over branches that each hold a session; subclasses supply the database's steps.

    ``where`` (``host:port``) names the database in messages. The hooks are called under the
    branch's lock, after its handles are stopped (except ``_before_vote``, which runs first).
    """

    where: str

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._branches: dict[Xid, B] = {}
        self._ended: OrderedDict[Xid, tuple[str, XaCode]] = OrderedDict()

    # -- hooks ------------------------------------------------------------------------

    @abc.abstractmethod
    def _validate(self, xid: Xid) -> None:
        """Raise XaError(XAER_INVAL) for an XID the database cannot name."""

    @abc.abstractmethod
    def _prepare(self, branch: B) -> XaCode:
        """Vote: XA_OK once durable, XA_RDONLY once committed for having written nothing; raise an
        XA_RB* XaError once rolled back, XAER_RMFAIL when the outcome of the step is unknown."""

    @abc.abstractmethod
    def _commit_one_phase(self, branch: B) -> None:
        """Commit the active branch; an XA_RB* XaError once it is rolled back instead."""

    @abc.abstractmethod
    def _end_prepared(self, xid: Xid, *, commit: bool) -> None:
        """Commit or roll back a prepared branch from any session; XAER_NOTA when there is none."""

    @abc.abstractmethod
    def _cancel(self, branch: B) -> None:
        """Interrupt the business call running on the branch's session (best effort)."""

    @abc.abstractmethod
    def _release(self, branch: B) -> None:
        """Give the session back with nothing of the branch on it, or drop it."""

    def _is_prepared(self, xid: Xid) -> bool:
        """Whether the database holds ``xid`` prepared (a retried prepare after a lost reply)."""
        return xid in self.recover()

    def _before_vote(self, branch: B) -> None:
        """Last business work before the branch votes (e.g. an ORM flush); raise an XaError to vote no."""

    # -- verbs ------------------------------------------------------------------------

    def prepare(self, xid: Xid) -> XaCode:
        with self._claim(xid) as branch:
            if branch is None:
                if self._is_prepared(xid):
                    return XaCode.XA_OK  # a retried prepare after a lost reply
                raise XaError(XaCode.XAER_NOTA, f"no active branch {xid} in {self.where}")
            how, code = "prepare failed", XaCode.XAER_NOTA
            try:
                self._before_vote(branch)
                self._stop(branch, "being prepared", XaCode.XAER_PROTO)
                vote = self._prepare(branch)
                how, code = (PREPARED, XaCode.XAER_PROTO) if vote == XaCode.XA_OK else (READ_ONLY, code)
                return vote
            except XaError as error:
                how = ended_by("prepare", error.code)
                raise
            finally:
                self._finish(branch, how, code)

    def commit(self, xid: Xid, one_phase: bool) -> None:
        with self._claim(xid) as branch:
            if branch is not None:
                if not one_phase:
                    raise XaError(
                        XaCode.XAER_PROTO,
                        f"branch {xid} is active, not prepared: prepare it first or commit it one-phase",
                    )
                how = "one-phase commit failed"
                try:
                    self._before_vote(branch)
                    self._stop(branch, "being committed in one phase")
                    self._commit_one_phase(branch)
                    how = ONE_PHASE
                except XaError as error:
                    how = ended_by("one-phase commit", error.code)
                    raise
                finally:
                    self._finish(branch, how)
                return
        # Not active: a prepared branch, also when one_phase is asked for it by mistake.
        self._phase_two(xid, commit=True)

    def rollback(self, xid: Xid) -> None:
        with self._claim(xid) as branch:
            if branch is not None:
                self._discard(branch, ROLLED_BACK)
                return
        self._phase_two(xid, commit=False)

    def _phase_two(self, xid: Xid, *, commit: bool) -> None:
        """Finish a prepared branch and record how. XAER_NOTA for a branch prepared here means
        another call finished it first (a retry after a slow reply): it ended as this one asks,
        and its stale handles say so before the answer goes out."""
        how = COMMITTED if commit else ROLLED_BACK
        try:
            self._end_prepared(xid, commit=commit)
        except XaError as error:
            with self._lock:
                prepared_here = self._ended.get(xid, ("", XaCode.XA_OK))[1] == XaCode.XAER_PROTO
            if error.code == XaCode.XAER_NOTA and prepared_here:
                self._remember(xid, how)
            raise
        self._remember(xid, how)

    def close(self) -> None:
        """Roll back active branches; prepared ones stay for the coordinator."""
        with self._lock:
            branches = list(self._branches.values())
        for branch in branches:
            with branch.lock:
                if not branch.finished:
                    self._discard(branch, "rolled back: the resource manager was closed")

    # -- the table of branches ------------------------------------------------------------

    def _active(self, xid: Xid) -> B:
        """The live branch of ``xid``: BranchEnded if it ended here, XaError(XAER_NOTA) if unknown."""
        with self._lock:
            branch = self._branches.get(xid)
            if branch is None and xid in self._ended:
                raise BranchEnded(xid, *self._ended[xid])
        if branch is None:
            raise XaError(XaCode.XAER_NOTA, f"no active branch {xid} in {self.where}")
        return branch

    def _joined(self, xid: Xid) -> bool:
        """``start`` of ``xid``: True when it is active already (a rejoin); BranchEnded if it ended."""
        self._validate(xid)
        with self._lock:
            if xid in self._branches:
                return True
            self._refuse_ended(xid)
        return False

    def _register(self, branch: B) -> None:
        """Make a freshly started branch active; if a concurrent start won (or the xid ended
        meanwhile), release this one's session and answer as that start would."""
        with self._lock:
            if branch.xid not in self._ended and branch.xid not in self._branches:
                self._branches[branch.xid] = branch
                return
        self._release(branch)
        with self._lock:
            self._refuse_ended(branch.xid)

    def _refuse_ended(self, xid: Xid) -> None:
        """(Under self._lock.) Raise BranchEnded if ``xid`` ended here: it may not start again."""
        if xid in self._ended:
            how, code = self._ended[xid]
            raise BranchEnded(xid, how, XaCode.XAER_PROTO if code == XaCode.XAER_PROTO else XaCode.XAER_DUPID)

    def _remember(self, xid: Xid, how: str, code: XaCode = XaCode.XAER_NOTA) -> None:
        with self._lock:
            self._ended[xid] = (how, code)
            self._ended.move_to_end(xid)
            while len(self._ended) > ENDED_RETAIN:
                self._ended.popitem(last=False)

    @contextmanager
    def _claim(self, xid: Xid) -> Iterator[B | None]:
        """Serialise verbs on one xid: the active branch, locked, or None if there is none."""
        self._validate(xid)
        with self._lock:
            branch = self._branches.get(xid)
        if branch is None:
            yield None
            return
        with branch.lock:
            yield None if branch.finished else branch

    # -- ending a branch ------------------------------------------------------------------

    def _stop(self, branch: B, how: str, code: XaCode = XaCode.XAER_NOTA, *, discard: bool = False) -> None:
        """(Under the branch's lock.) Kill its handles before the verb touches the session: no call
        starts after this; one already running is waited for -- and, when the work is to be
        discarded, interrupted first, so a slow statement cannot hold up the rollback."""
        with branch.gate:
            branch.ended, branch.ended_code, branch.discarded = how, code, discard
            running = discard and branch.in_flight > 0
        if running:
            self._cancel(branch)
        self._wait_idle(branch)

    def _wait_idle(self, branch: B) -> None:
        """Until no business call runs on the branch (they all run in other threads)."""
        with branch.gate:
            branch.gate.wait_for(lambda: not branch.in_flight)

    def _discard(self, branch: B, how: str) -> None:
        """(Under the branch's lock.) Roll an active branch back: its handles first, then its session."""
        self._stop(branch, how, discard=True)
        self._finish(branch, how)

    def _finish(self, branch: B, how: str, code: XaCode = XaCode.XAER_NOTA) -> None:
        """End the branch's life here: record how it ended and give its session back."""
        with branch.gate:
            branch.ended, branch.ended_code = how, code
        branch.finished = True
        self._remember(branch.xid, how, code)
        with self._lock:
            self._branches.pop(branch.xid, None)
        self._release(branch)


class _Closable(Protocol):
    def close(self) -> None: ...


class StatementRM(SessionRM[SB]):
    """A SessionRM over pools of connections (``_pools``) whose savepoints are SQL statements
    (``SAVEPOINT``, ``ROLLBACK TO SAVEPOINT``) run by ``_run`` on the branch's session."""

    @abc.abstractmethod
    def _pools(self) -> tuple[_Closable, ...]:
        """The connection pools ``close`` closes."""

    @abc.abstractmethod
    def _run(self, branch: SB, statement: str, doing: str) -> None:
        """A statement of ours on the branch's session; a failure dooms the branch (``branch.fail``)
        and raises its XaError."""

    def savepoint(self, xid: Xid, savepoint_id: str) -> None:
        name = savepoint_digest(savepoint_id)
        with self._claim(xid) as branch:
            if branch is None:
                raise XaError(XaCode.XAER_NOTA, f"no active branch {xid} in {self.where}")
            self._run(branch, f"SAVEPOINT {name}", "SAVEPOINT")
            branch.savepoints.append(savepoint_id)

    def rollback_to_savepoint(self, xid: Xid, savepoint_id: str) -> None:
        name = savepoint_digest(savepoint_id)
        with self._claim(xid) as branch:
            if branch is None:
                raise XaError(XaCode.XAER_NOTA, f"no active branch {xid} in {self.where}")
            if savepoint_id not in branch.savepoints:
                # Checked here: an unknown name is an error of the database, which may doom the branch.
                raise XaError(
                    XaCode.XAER_INVAL,
                    f"savepoint {savepoint_id!r} is not set on branch {xid} "
                    "(never set, or undone by rolling back to an earlier one)",
                )
            index = len(branch.savepoints) - 1 - branch.savepoints[::-1].index(savepoint_id)
            self._run(branch, f"ROLLBACK TO SAVEPOINT {name}", "ROLLBACK TO SAVEPOINT")
            del branch.savepoints[index + 1 :]
            if branch.failure is not None and index < branch.savepoints_at_failure:
                branch.failure = None  # the failed work came after the savepoint: undone with it

    def close(self) -> None:
        """Roll back active branches (prepared ones stay for the coordinator) and close the pools."""
        super().close()
        for pool in self._pools():
            pool.close()
