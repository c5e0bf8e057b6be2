"""The global transaction a piece of code runs in, and how it travels in gRPC metadata.

A contextvar (not a thread-local) so the same code works in threads and in asyncio tasks:
the server interceptors set it for the handler, the initiator sets it for its block, and
the client interceptors read it to stamp outgoing calls.
"""

from __future__ import annotations

import contextvars
import dataclasses
import re
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import grpc

from .xa import XatmError, validate_gtrid

__all__ = [
    "COORDINATOR_KEY",
    "GTRID_KEY",
    "TxContext",
    "current",
    "from_metadata",
    "to_metadata",
    "use",
    "with_deadline",
]

GTRID_KEY = "xatm-gtrid"
COORDINATOR_KEY = "xatm-coordinator"

# host:port, [v6]:port or a DNS name with port; no spaces, bounded, never parsed further.
_ADDRESS = re.compile(r"^[A-Za-z0-9._:\[\]%-]{1,255}$")
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


_current: contextvars.ContextVar[TxContext | None] = contextvars.ContextVar("xatm_tx", default=None)


def current() -> TxContext | None:
    """The active global transaction, or None outside one."""
    return _current.get()


@contextmanager
def use(tx: TxContext | None) -> Iterator[TxContext | None]:
    """Make ``tx`` the active transaction for the block (None: run outside any)."""
    token = _current.set(tx)
    try:
        yield tx
    finally:
        _current.reset(token)


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
        raise XatmError(grpc.StatusCode.INVALID_ARGUMENT, f"malformed {GTRID_KEY} metadata: not text")
    validate_gtrid(gtrid)
    coordinator = coordinator or ""
    if coordinator and not (isinstance(coordinator, str) and _ADDRESS.match(coordinator)):
        raise XatmError(
            grpc.StatusCode.INVALID_ARGUMENT,
            f"malformed {COORDINATOR_KEY} metadata {str(coordinator)[:80]!r}: expected host:port",
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
