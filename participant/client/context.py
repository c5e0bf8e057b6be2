"""The global transaction a piece of code runs in, and how it travels in gRPC metadata.

A contextvar (not a thread-local) so the same code works in threads and in asyncio tasks:
the server interceptors set it for the handler, the initiator binds it from begin until
commit or rollback, and the client interceptors read it to stamp outgoing calls.

What the contextvar holds is a ``Binding``, shared by every context copied from the one
it was set in (asyncio tasks created later, ``asyncio.to_thread``): ending the transaction
closes the binding everywhere at once, so no copy keeps stamping a finished gtrid.
"""

from __future__ import annotations

import contextvars
import dataclasses
import re
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc

from xatm.participant.errors import InvalidArgumentError, Status, XatmError
from xatm.participant.xa import XaError, validate_gtrid

__all__ = [
    "COORDINATOR_KEY",
    "GTRID_KEY",
    "Binding",
    "FailureHook",
    "Serving",
    "TxContext",
    "bind",
    "bound",
    "call_status",
    "current",
    "describe_failure",
    "from_metadata",
    "on_call_failure",
    "serving",
    "to_metadata",
    "use",
    "with_deadline",
]

GTRID_KEY = "xatm-gtrid"
COORDINATOR_KEY = "xatm-coordinator"

# host:port, [v6]:port or a DNS name with port, or several (replicas) comma-separated; no
# spaces, bounded, never parsed further.
_ADDRESS = re.compile(r"^[A-Za-z0-9._:\[\]%,-]{1,1024}$")
# Larger than any real deadline: the threaded server reports "no deadline" as ~2**63 seconds.
_NO_DEADLINE = 1e9


@dataclass(frozen=True, slots=True)
class TxContext:
    """The global transaction the current code works for."""

    gtrid: str
    #: host:port of the coordinator that began it; participants enlist there.
    coordinator: str
    #: time.monotonic() of this process after which the coordinator rolls the transaction back.
    #: It never leaves the process: calls carry what remains as their own gRPC deadline.
    deadline: float | None = None

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


def to_metadata(tx: TxContext) -> list[tuple[str, str]]:
    pairs = [(GTRID_KEY, tx.gtrid)]
    if tx.coordinator:
        pairs.append((COORDINATOR_KEY, tx.coordinator))
    return pairs


def from_metadata(metadata: Iterable[tuple[str, str | bytes]] | None) -> TxContext | None:
    """Read the transaction an incoming call belongs to; None when it carries none.

    Malformed values raise INVALID_ARGUMENT rather than reaching any lookup. The deadline
    is not in the metadata: it travels as the call's own gRPC deadline (see ``with_deadline``).
    """
    gtrid = coordinator = None
    for key, value in metadata or ():
        if key == GTRID_KEY:
            gtrid = value
        elif key == COORDINATOR_KEY:
            coordinator = value
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
    return TxContext(gtrid, coordinator)


def with_deadline(tx: TxContext, time_remaining: float | None) -> TxContext:
    """``tx`` with the deadline of the incoming call that carried it.

    The client interceptors cap each call's deadline at the transaction's, so the call
    deadline is the best bound this process knows.
    """
    if time_remaining is None or time_remaining >= _NO_DEADLINE:
        return tx
    return dataclasses.replace(tx, deadline=time.monotonic() + time_remaining)
