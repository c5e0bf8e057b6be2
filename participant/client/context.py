"""The global transaction a piece of code runs in, and how it travels in gRPC metadata.

A contextvar (not a thread-local) so the same code works in threads and in asyncio tasks:
the server interceptors set it for the handler, the initiator binds it from begin until
commit or rollback, and the client interceptors read it to stamp outgoing calls.

Lazy enlistment travels back the same way: a caller that takes branch reports says so
(``xatm-reports: 1``); a participant that opens a branch for such a call reports it in the reply's
trailing metadata (``xatm-branches-bin``) instead of enlisting at the coordinator, and every hop
passes what it was told on to its own caller, up to the initiator, whose Commit carries the list.
``Reported`` gathers one transaction's reports where they arrive: in the served call (a hop) or
in the initiator's binding.

What the contextvar holds is a ``Binding``, shared by every context copied from the one
it was set in (asyncio tasks created later, ``asyncio.to_thread``): ending the transaction
closes the binding everywhere at once, so no copy keeps stamping a finished gtrid.
"""

from __future__ import annotations

import contextvars
import dataclasses
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

from xatm.participant.api.v1 import xa_pb2
from xatm.participant.errors import InvalidArgumentError, Status, XatmError
from xatm.participant.xa import XaError, validate_bqual, validate_gtrid

__all__ = [
    "BRANCHES_KEY",
    "COORDINATOR_KEY",
    "DEADLINE_KEY",
    "GTRID_KEY",
    "MAX_REPORTED",
    "REPORTS_KEY",
    "Binding",
    "FailureHook",
    "Reported",
    "Serving",
    "TxContext",
    "bind",
    "bound",
    "call_status",
    "current",
    "describe_failure",
    "from_metadata",
    "on_call_failure",
    "reported",
    "serving",
    "to_metadata",
    "use",
    "with_deadline",
]

GTRID_KEY = "xatm-gtrid"
COORDINATOR_KEY = "xatm-coordinator"
#: Request metadata: "1" when the caller takes branch reports (lazy enlistment); "2" when it takes
#: them and the branch must also enlist at the coordinator (eager enlistment: the Commit carries the
#: branches all the same, so a coordinator that forgot them on a restart still rolls them back).
#: Any other value: no reports (a participant that only knows "1" enlists on "2", as eager wants).
REPORTS_KEY = "xatm-reports"
_REPORTS = {"1": (True, False), "2": (True, True)}
#: Request metadata: what remained of the transaction's timeout when the call was sent, in whole
#: ms (decimal). Relative, so the two processes' clocks never need to agree; the call's own gRPC
#: deadline may be shorter (a per-call timeout) and is not the transaction's.
DEADLINE_KEY = "xatm-deadline-ms"
#: The largest ``DEADLINE_KEY`` value taken: the longest timeout the wire carries (uint32 ms).
_MAX_DEADLINE_MS = 2**32 - 1
#: Trailing metadata of a reply: a serialized ``BranchReport``.
BRANCHES_KEY = "xatm-branches-bin"
#: Branches one report may carry; a longer one is refused as malformed (the coordinator's own
#: ``max_branches`` bounds a transaction anyway).
MAX_REPORTED = 1000

# host:port, [v6]:port or a DNS name with port, or several (replicas) comma-separated; no
# spaces, bounded, never parsed further.
_ADDRESS = re.compile(r"^[A-Za-z0-9._:\[\]%,-]{1,1024}$")
# Larger than any real deadline: the threaded server reports "no deadline" as ~2**63 seconds.
_NO_DEADLINE = 1e9


@dataclass(eq=False, slots=True)
class Reported:
    """Branches of transaction ``gtrid`` that the coordinator has not heard of, gathered on their
    way to it: from this process's participant stub and from the replies of calls made in the
    transaction. Replies may arrive in other threads (futures), hence the lock."""

    gtrid: str
    branches: dict[str, xa_pb2.BranchRef] = field(default_factory=dict)
    #: Why the transaction must roll back (work in a reported branch failed); "" when it need not.
    rollback_only: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, bqual: str, rm_id: str, endpoint: str) -> None:
        with self._lock:
            self.branches[bqual] = xa_pb2.BranchRef(bqual=bqual, rm_id=rm_id, endpoint=endpoint)

    def doom(self, reason: str) -> None:
        """The transaction must roll back; the first reason is the one kept."""
        with self._lock:
            self.rollback_only = self.rollback_only or reason[:500]

    def retain(self, bquals: set[str]) -> None:
        """Forget the branches not in ``bquals`` (they left the transaction: a rollback to a savepoint)."""
        with self._lock:
            self.branches = {bqual: ref for bqual, ref in self.branches.items() if bqual in bquals}

    def refs(self) -> list[xa_pb2.BranchRef]:
        with self._lock:
            return list(self.branches.values())

    def __bool__(self) -> bool:
        return bool(self.branches or self.rollback_only)

    def trailer(self) -> tuple[str, bytes]:
        """The ``xatm-branches-bin`` trailing metadata that reports all of it to the caller."""
        with self._lock:
            report = xa_pb2.BranchReport(
                gtrid=self.gtrid, branches=list(self.branches.values()), rollback_only=self.rollback_only
            )
        return BRANCHES_KEY, report.SerializeToString()

    def absorb(self, trailers: Iterable[tuple[str, str | bytes]] | None) -> None:
        """Take the report a reply's trailing metadata carries, if any. One that does not parse,
        names another transaction or is too long dooms the transaction: a branch may be missing."""
        for key, value in trailers or ():
            if key != BRANCHES_KEY:
                continue
            try:
                report = _parse_report(value, self.gtrid)
            except InvalidArgumentError as error:
                self.doom(f"a reply carried a branch report that cannot be read: {error.message}")
                continue
            with self._lock:
                for ref in report.branches:
                    self.branches[ref.bqual] = ref
                self.rollback_only = self.rollback_only or report.rollback_only[:500]


def _parse_report(value: str | bytes, gtrid: str) -> xa_pb2.BranchReport:
    if not isinstance(value, bytes):
        raise InvalidArgumentError(f"{BRANCHES_KEY} is not binary")
    report = xa_pb2.BranchReport()
    try:
        report.ParseFromString(value)
    except Exception:  # the protobuf runtime's DecodeError, or whatever a backend raises
        raise InvalidArgumentError(f"{BRANCHES_KEY} is not a BranchReport") from None
    if report.gtrid != gtrid:
        raise InvalidArgumentError(f"a report for transaction {report.gtrid[:80]!r}, not {gtrid}")
    if len(report.branches) > MAX_REPORTED:
        raise InvalidArgumentError(f"{len(report.branches)} branches reported (at most {MAX_REPORTED})")
    for ref in report.branches:
        validate_bqual(ref.bqual)
        if not ref.rm_id or len(ref.rm_id) > 256 or not _ADDRESS.match(ref.endpoint):
            raise InvalidArgumentError(f"branch {ref.bqual} reported without a valid rm_id and endpoint")
    return report


@dataclass(frozen=True, slots=True)
class TxContext:
    """The global transaction the current code works for."""

    gtrid: str
    #: host:port of the coordinator that began it; participants enlist there.
    coordinator: str
    #: time.monotonic() of this process after which the coordinator rolls the transaction back.
    #: It never leaves the process: calls carry what remains (``DEADLINE_KEY``), and cap their own
    #: gRPC deadline at it.
    deadline: float | None = None
    #: The caller takes branch reports: a participant reports its branch back instead of enlisting.
    reports: bool = False
    #: Eager enlistment: a participant enlists its branch at the coordinator, and reports it too
    #: when ``reports``.
    enlist: bool = False
    #: Where the initiator gathers them (None in a served call: the call's reply carries them).
    reported: Reported | None = field(default=None, compare=False)

    def remaining(self) -> float | None:
        """Seconds left before the deadline (never negative), None when there is none."""
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())


@dataclass(eq=False, slots=True)
class Binding:
    """A transaction made active in a context, until ``close()`` (from any thread or task).

    ``tx`` is None while the transaction is being begun: the binding is claimed in the caller's
    context before the Begin call, so a Begin run in another task (``asyncio.wait_for``) still
    makes the transaction active where ``begin()`` was called.
    """

    tx: TxContext | None
    open: bool = True

    def close(self) -> None:
        self.open = False

    def expired(self) -> bool:
        """The transaction's timeout has passed: the coordinator has rolled it back."""
        return self.tx is not None and self.tx.remaining() == 0


_current: contextvars.ContextVar[Binding | None] = contextvars.ContextVar("xatm_tx", default=None)


def bound() -> Binding | None:
    """The binding of the active global transaction, or None outside one."""
    binding = _current.get()
    return binding if binding is not None and binding.open else None


def current() -> TxContext | None:
    """The active global transaction, or None outside one (or once it was completed)."""
    binding = bound()
    return None if binding is None else binding.tx


def bind(binding: Binding) -> None:
    """Make ``binding`` active in the current context until it is closed.

    No token to reset: the binding stays set but closed, which ``current()`` reads as "no
    transaction", and the caller may close it from another thread or task than this one.
    """
    _current.set(binding)


@contextmanager
def use(tx: TxContext | Binding | None) -> Iterator[TxContext | None]:
    """Make ``tx`` the active transaction for the block (None: run outside any).

    A ``Binding`` (what ``Transaction.run`` passes) stays shared: closed by the transaction's
    end, it stops stamping calls even inside the block.
    """
    binding = Binding(tx) if isinstance(tx, TxContext) else tx
    token = _current.set(binding)
    try:
        yield current()
    finally:
        _current.reset(token)


#: ``on_failure(tx, reason)``: told that a handler working in ``tx`` failed, and why.
FailureHook = Callable[[TxContext, str], None]


@dataclass(eq=False, slots=True)
class Serving:
    """The call whose handler runs here (set by the server interceptors)."""

    #: The handler's grpc servicer context, sync or grpc.aio.
    context: Any
    #: Called once each when the handler ends with an error status.
    on_failure: list[FailureHook] = field(default_factory=list)
    #: What the handler reports back to its caller, when the caller takes branch reports.
    reported: Reported | None = None
    #: The transaction made active for the handler (one binding for every step of the call).
    binding: Binding | None = None


_call: contextvars.ContextVar[Serving | None] = contextvars.ContextVar("xatm_call", default=None)


@contextmanager
def serving(call: Serving) -> Iterator[Serving]:
    """Mark the block as running the handler of ``call``."""
    token = _call.set(call)
    try:
        yield call
    finally:
        _call.reset(token)


def on_call_failure(hook: FailureHook) -> None:
    """Have ``hook`` called if the handler running here ends with an error status.

    However it fails: an exception, ``context.abort``, or ``set_code`` and a normal return.
    Registering the same hook again in the call is a no-op; outside a served call, nothing.
    """
    call = _call.get()
    if call is not None and hook not in call.on_failure:
        call.on_failure.append(hook)


def reported(tx: TxContext) -> Reported | None:
    """Where a branch opened in ``tx`` by the code running here is reported: the served call's
    reply when that call's caller takes reports, else the initiator's binding when it does;
    None when nobody takes reports (the branch then enlists at the coordinator)."""
    call = _call.get()
    if call is not None and call.reported is not None and call.reported.gtrid == tx.gtrid:
        return call.reported
    return tx.reported


def call_status(context: Any = None) -> tuple[grpc.StatusCode, str] | None:
    """The failure status a handler set on its call (abort, set_code), None while it is OK.

    ``context``: a servicer context; by default the one of the handler running here.
    """
    if context is None:
        call = _call.get()
        context = call.context if call is not None else None
    code = getattr(context, "code", None)
    code = code() if callable(code) else None
    if code is None or code == grpc.StatusCode.OK:
        return None
    details = context.details()
    if isinstance(details, bytes):
        details = details.decode("utf-8", "replace")
    return code, details or ""


def describe_failure(failure: BaseException | None = None) -> str:
    """``"CODE: message"`` for why a handler failed, as its caller sees the status.

    The status the handler set (``context.abort``, ``set_code``/``set_details``) wins: the
    exception grpc raises for an abort carries no message. Else an XatmError or a failed
    downstream call gives its own code, an XaError from the resource manager its XA code and
    reason; any other exception is UNKNOWN (what grpc answers) with its type and message.
    """
    status = call_status()
    if status is not None:
        name, message = status[0].name, status[1]
    elif isinstance(failure, XaError):
        return str(failure)
    elif isinstance(failure, XatmError):
        name, message = failure.status.name, failure.message
    elif isinstance(failure, grpc.RpcError) and callable(getattr(failure, "code", None)):
        name, message = failure.code().name, failure.details() or ""
    else:
        text = str(failure) if failure is not None else ""
        kind = type(failure).__name__ if failure is not None else "handler failed"
        name, message = Status.UNKNOWN.name, f"{kind}: {text}" if text else kind
    return f"{name}: {message}" if message else name


def to_metadata(tx: TxContext, reports: bool = True) -> list[tuple[str, str]]:
    """The metadata of a call made in ``tx``; ``reports``: the call's reply can be read for a
    branch report (a unary call), so the callee may report instead of enlisting."""
    pairs = [(GTRID_KEY, tx.gtrid)]
    if tx.coordinator:
        pairs.append((COORDINATOR_KEY, tx.coordinator))
    remaining = tx.remaining()
    if remaining is not None:
        pairs.append((DEADLINE_KEY, str(min(_MAX_DEADLINE_MS, max(1, round(remaining * 1000))))))
    if tx.reports and reports:
        pairs.append((REPORTS_KEY, "2" if tx.enlist else "1"))
    return pairs


def from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> TxContext | None:
    """Read the transaction an incoming call belongs to; None when it carries none.

    Malformed values raise INVALID_ARGUMENT rather than reaching any lookup. The transaction's
    deadline comes from ``DEADLINE_KEY`` (what remained when the call was sent, read against this
    process's monotonic clock); without it, ``with_deadline`` falls back on the call's deadline.
    """
    gtrid = coordinator = left = None
    reports = enlist = False
    for key, value in metadata or ():
        if key == GTRID_KEY:
            gtrid = value
        elif key == COORDINATOR_KEY:
            coordinator = value
        elif key == REPORTS_KEY and isinstance(value, str):
            reports, enlist = _REPORTS.get(value, (False, False))
        elif key == DEADLINE_KEY:
            left = value
    if gtrid is None:
        return None
    if not isinstance(gtrid, str):
        raise InvalidArgumentError(f"malformed {GTRID_KEY} metadata: not text")
    validate_gtrid(gtrid)
    coordinator = coordinator or ""
    if not isinstance(coordinator, str) or (coordinator and not _ADDRESS.match(coordinator)):
        raise InvalidArgumentError(
            f"malformed {COORDINATOR_KEY} metadata {str(coordinator)[:80]!r}: expected host:port "
            "or a comma-separated list",
        )
    deadline = None if left is None else time.monotonic() + _parse_left_ms(left) / 1000
    return TxContext(gtrid, coordinator, deadline, reports=reports, enlist=enlist)


def _parse_left_ms(value: str | bytes) -> int:
    """The ``DEADLINE_KEY`` value: 1-10 decimal digits, at most the longest timeout the wire
    carries. Raises InvalidArgumentError otherwise (a sign, spaces, a fraction, bytes...)."""
    if not isinstance(value, str) or not (value.isascii() and value.isdigit()) or len(value) > 10:
        raise InvalidArgumentError(
            f"malformed {DEADLINE_KEY} metadata {str(value)[:40]!r}: expected whole milliseconds"
        )
    if int(value) > _MAX_DEADLINE_MS:
        raise InvalidArgumentError(f"{DEADLINE_KEY} metadata {value} is more than {_MAX_DEADLINE_MS} ms")
    return int(value)


def with_deadline(tx: TxContext, time_remaining: float | None) -> TxContext:
    """``tx`` with a deadline: its own when the call carried it (``DEADLINE_KEY``), else the
    deadline of the incoming call, for callers that do not send the transaction's.

    The call's deadline is only a stand-in: it may be shorter than the transaction's (a call
    made with its own short timeout), and a branch ended at it would roll back work the
    initiator still means to commit.
    """
    if tx.deadline is not None or time_remaining is None or time_remaining >= _NO_DEADLINE:
        return tx
    return dataclasses.replace(tx, deadline=time.monotonic() + time_remaining)
