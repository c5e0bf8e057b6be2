"""XA vocabulary shared by the coordinator and the participant stub.

The Python enums carry the same numbers as the protobuf enums (and as xa.h / tx.h),
so converting between the wire and the code is ``Enum(value)`` and nothing else.
Display names follow the design contract (``Committed``, ``XA_RBROLLBACK``).
"""

from __future__ import annotations

import enum
import os
import re
import time
from dataclasses import dataclass
from typing import Self

from xatm.participant.errors import InvalidArgumentError, Status, XatmError

__all__ = [
    "CHANNEL_OPTIONS",
    "FORMAT_ID",
    "INCARNATION_DIGITS",
    "LOCAL_FORMAT_ID",
    "SERVER_OPTIONS",
    "BranchStatus",
    "Decision",
    "Phase",
    "TxOutcome",
    "TxStatus",
    "XaCode",
    "XaError",
    "XatmError",
    "Xid",
    "channel_options",
    "incarnation_of",
    "new_bqual",
    "new_gtrid",
    "new_incarnation",
    "node_of",
    "rm_id_problem",
    "validate_bqual",
    "validate_gtrid",
    "validate_savepoint_id",
]

# "xatm" in ASCII: lets recovery tell our XIDs from foreign ones in an RM's list.
FORMAT_ID = 0x7861746D
# "xloc": local (non-global) transactions, so recovery never takes one for an xatm branch.
LOCAL_FORMAT_ID = 0x786C6F63


class XaCode(enum.IntEnum):
    XA_OK = 0
    XAER_ASYNC = -2
    XAER_RMERR = -3
    XAER_NOTA = -4
    XAER_INVAL = -5
    XAER_PROTO = -6
    XAER_RMFAIL = -7
    XAER_DUPID = -8
    XAER_OUTSIDE = -9
    XA_RDONLY = 3
    XA_RETRY = 4
    XA_HEURMIX = 5
    XA_HEURRB = 6
    XA_HEURCOM = 7
    XA_HEURHAZ = 8
    XA_NOMIGRATE = 9
    XA_RBROLLBACK = 100
    XA_RBCOMMFAIL = 101
    XA_RBDEADLOCK = 102
    XA_RBINTEGRITY = 103
    XA_RBOTHER = 104
    XA_RBPROTO = 105
    XA_RBTIMEOUT = 106
    XA_RBTRANSIENT = 107

    @property
    def is_rollback(self) -> bool:
        """XA_RB*: the branch has been rolled back by the RM."""
        return 100 <= self.value <= 107

    @property
    def is_error(self) -> bool:
        """XAER_*: the call failed; the branch state is unknown or unchanged."""
        return self.value < 0

    @property
    def is_heuristic(self) -> bool:
        return self in (XaCode.XA_HEURMIX, XaCode.XA_HEURRB, XaCode.XA_HEURCOM, XaCode.XA_HEURHAZ)


class TxOutcome(enum.IntEnum):
    TX_OK = 0
    TX_ROLLBACK = -2
    TX_MIXED = -3
    TX_HAZARD = -4
    TX_PROTOCOL_ERROR = -5
    TX_ERROR = -6
    TX_FAIL = -7
    TX_COMMITTED = -9


class _Named(enum.IntEnum):
    """IntEnum whose str() is the contract's display name."""

    def __str__(self) -> str:
        return self.label

    @property
    def label(self) -> str:
        return "".join(part.capitalize() for part in self.name.split("_"))

    @classmethod
    def parse(cls, text: str) -> Self:
        """Accept the display name (any case) or the enum name."""
        wanted = text.replace("_", "").lower()
        for member in cls:
            if member.label.lower() == wanted:
                return member
        allowed = ", ".join(m.label for m in cls)
        raise InvalidArgumentError(f"unknown status {text!r}; expected one of {allowed}")


class TxStatus(_Named):
    CREATED = 1
    PREPARING = 2
    PREPARED = 3
    COMMITTING = 4
    COMMITTED = 5
    ROLLINGBACK = 6
    ROLLEDBACK = 7
    MARKED_ROLLBACK = 8
    HEURISTICALLY_COMPLETED = 9

    @property
    def is_final(self) -> bool:
        return self in (TxStatus.COMMITTED, TxStatus.ROLLEDBACK, TxStatus.HEURISTICALLY_COMPLETED)


class BranchStatus(_Named):
    ENLISTED = 1
    PREPARED = 2
    COMMITTED = 3
    ROLLEDBACK = 4
    HEURISTICALLY_COMPLETED = 5
    HEURISTICALLY_ROLLEDBACK = 6


class Phase(enum.IntEnum):
    PREPARE = 1
    COMMIT = 2
    ONE_PHASE_COMMIT = 3
    ROLLBACK = 4
    FORGET = 5
    SAVEPOINT = 6
    ROLLBACK_TO_SAVEPOINT = 7

    def __str__(self) -> str:
        return self.name.lower()


class Decision(enum.IntEnum):
    COMMIT = 1
    ROLLBACK = 2
    PENDING = 3


class XaError(XatmError):
    """Raised by a resource manager to answer an XA verb with a code other than XA_OK.

    ``code`` is the XA return code (``XaCode``), ``reason`` the resource manager's own words. It
    travels in the ``code`` of an ``XaReply``, not as a status; should one escape a service (a
    business call's lock wait, a deadlock) it answers ``ABORTED`` for a rollback code (XA_RB*:
    the branch is rolled back, retrying the whole transaction may succeed), ``INTERNAL`` for the
    others.
    """

    status = Status.INTERNAL

    def __init__(self, code: XaCode, reason: str = ""):
        super().__init__(f"{code.name}: {reason}" if reason else code.name)
        self.code = XaCode(code)
        self.reason = reason
        if self.code.is_rollback:
            self.status = Status.ABORTED


_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


def _validate(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _ID.fullmatch(value):
        shown = value if isinstance(value, str) and len(value) <= 80 else f"{str(value)[:80]}..."
        raise InvalidArgumentError(
            f"malformed {kind} {shown!r}: expected 1-64 characters of [A-Za-z0-9._:-]",
        )
    return value


#: Options of every gRPC channel xatm opens (to a coordinator, a participant, an agent).
#:
#: Facts of gRPC core (``ParseArgsForBackoffValues`` and ``StartConnectingLocked`` in
#: src/core/client_channel/subchannel.cc; doc/connection-backoff.md of grpc/grpc):
#:
#: - ``grpc.initial_reconnect_backoff_ms`` (default 1 s) is the wait after the first failed
#:   connection attempt; each next wait is 1.6 times longer (jitter 0.2), up to
#:   ``grpc.max_reconnect_backoff_ms`` (default 120 s). gRPC raises any value below 100 ms to 100 ms.
#: - ``grpc.min_reconnect_backoff_ms`` is not a backoff at all: it is MIN_CONNECT_TIMEOUT
#:   (default 20 s, raised to at least 100 ms). An attempt's deadline is the later of the next
#:   backoff time and now + MIN_CONNECT_TIMEOUT, and covers TCP connect, the TLS handshake and
#:   the server's HTTP/2 SETTINGS frame.
#:
#: Peers of a transaction manager restart by design, and with gRPC's default backoff a
#: restarted peer could stay unreachable for up to two minutes; so the backoff starts at 100 ms
#: and stops growing at 1 s. The connect timeout keeps gRPC's 20 s: at 100 ms a peer that is
#: a little slow (a pause, a GC, a far network, a TLS handshake over a few round trips) would
#: fail every new connection, while a call's own deadline already bounds how long it waits.
CHANNEL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 1000),
    ("grpc.min_reconnect_backoff_ms", 20_000),
)

#: The longest reconnect backoff ``channel_options`` gives, in ms (CHANNEL_OPTIONS' own), and gRPC's floor.
_MAX_BACKOFF_MS = 1000
_MIN_BACKOFF_MS = 100


def channel_options(call_timeout: float | None = None) -> tuple[tuple[str, int], ...]:
    """``CHANNEL_OPTIONS`` for a channel whose calls have deadlines of ``call_timeout`` seconds
    (None: unknown, CHANNEL_OPTIONS as they are).

    A call that waits for its channel (``wait_for_ready``) waits out the reconnect backoff the
    channel is in, up to 1.2 times ``grpc.max_reconnect_backoff_ms`` with gRPC's jitter: a peer
    that restarted at its address while the backoff was at 1 s would make every call of a
    deadline near or below that fail although the peer answers. So the backoff stops growing at
    a quarter of the deadline (between gRPC's 100 ms floor and 1 s): a restarted peer is tried
    again within a third of a call's time.
    """
    if call_timeout is None:
        return CHANNEL_OPTIONS
    ceiling = int(min(max(call_timeout * 1000 / 4, _MIN_BACKOFF_MS), _MAX_BACKOFF_MS))
    return tuple(
        (name, ceiling if name == "grpc.max_reconnect_backoff_ms" else value)
        for name, value in CHANNEL_OPTIONS
    )

#: Options of every gRPC server xatm starts (coordinator, agent, example services).
#:
#: gRPC core binds with SO_REUSEPORT on Linux unless ``grpc.so_reuseport`` is 0 (a fact of
#: gRPC's channel arguments, ``GRPC_ARG_ALLOW_REUSEPORT``): a second process then listens on a
#: port already served and the kernel splits connections between the two, so a participant's
#: prepare could reach another resource manager. With 0, the second bind fails at start-up.
#:
#: Clients of several coordinator replicas ping while a call waits (``runtime.targets``), to give
#: up on a paused replica; the server takes those pings however often they come, rather than
#: answering them with GOAWAY "too_many_pings", which would fail a healthy call in flight.
SERVER_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.so_reuseport", 0),
    ("grpc.http2.min_recv_ping_interval_without_data_ms", 500),
    ("grpc.http2.max_ping_strikes", 0),
)


def validate_gtrid(value: str) -> str:
    return _validate("gtrid", value)


def validate_bqual(value: str) -> str:
    return _validate("bqual", value)


def validate_savepoint_id(value: str) -> str:
    return _validate("savepoint id", value)


def rm_id_problem(value: object) -> str:
    """What is wrong with ``value`` as a resource manager id ("must ..."), "" when nothing: the
    rule is 1-256 printable characters (a control character or line break would forge lines in
    the logs and the operator's tables)."""
    if not isinstance(value, str) or not 1 <= len(value) <= 256:
        return "must be 1-256 printable characters"
    return "" if value.isprintable() else "must hold no control characters or line breaks"


#: Hex digits of a coordinator incarnation (``new_incarnation``) at the head of a gtrid's unique part.
INCARNATION_DIGITS = 8
# The unique part of a gtrid made by ``new_gtrid``: 16 hex digits of time and 12 random ones,
# after the incarnation when there is one. Gtrids made before incarnations existed have 28.
_UNIQUE_DIGITS = 16 + 12
_HEX = frozenset("0123456789abcdef")


def new_incarnation() -> str:
    """A random id (``INCARNATION_DIGITS`` hex digits) a coordinator makes at each start."""
    return os.urandom(INCARNATION_DIGITS // 2).hex()


def new_gtrid(node_id: str, incarnation: str = "") -> str:
    """``<node>.<incarnation><time-ordered hex>``: unique across restarts, opaque to clients.

    ``incarnation`` is the coordinator start the gtrid belongs to ("" for a coordinator that
    has none), so that coordinator can tell a gtrid made before it restarted (``incarnation_of``).
    """
    return f"{node_id}.{incarnation}{time.time_ns():016x}{os.urandom(6).hex()}"


def incarnation_of(gtrid: str) -> str | None:
    """The coordinator incarnation a gtrid made by ``new_gtrid`` names; None for one without
    (made before incarnations existed, by an older initiator, or not by ``new_gtrid``)."""
    unique = gtrid.rsplit(".", 1)[1] if "." in gtrid else ""
    if len(unique) != INCARNATION_DIGITS + _UNIQUE_DIGITS or not _HEX.issuperset(unique):
        return None
    return unique[:INCARNATION_DIGITS]


def node_of(gtrid: str) -> str:
    """The coordinator node that began a gtrid; only the coordinator may parse its own ids."""
    return gtrid.rsplit(".", 1)[0] if "." in gtrid else ""


def new_bqual() -> str:
    return os.urandom(8).hex()


@dataclass(frozen=True, slots=True)
class Xid:
    gtrid: str
    bqual: str
    format_id: int = FORMAT_ID

    def __str__(self) -> str:
        return f"{self.format_id:x}:{self.gtrid}:{self.bqual}"
