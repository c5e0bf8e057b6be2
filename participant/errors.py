"""The one error hierarchy of xatm, and the one table that says how each error surfaces.

Every error xatm raises derives from ``XatmError``. An error that answers a request carries a
``Status``: the canonical status codes that gRPC defines (same names, same numbers), so a status
travels unchanged over gRPC and maps to one HTTP status and one ``xactl`` exit code through
``SURFACES``. No transport is imported here: the gRPC servers and clients translate ``Status`` to
and from ``grpc.StatusCode`` by name (``xatm.participant.runtime.grpc_status``).

Hierarchy (each class names its status)::

    XatmError                         status given at construction (UNKNOWN by default)
    ├── InvalidArgumentError          INVALID_ARGUMENT: malformed id, argument, body or setting
    ├── UnauthenticatedError          UNAUTHENTICATED: missing or bad credentials
    ├── PermissionDeniedError         PERMISSION_DENIED: valid credentials, role too weak
    ├── NotFoundError                 NOT_FOUND: unknown transaction, branch or savepoint
    ├── FailedPreconditionError       FAILED_PRECONDITION: the status forbids the operation
    ├── ResourceExhaustedError        RESOURCE_EXHAUSTED: a configured bound is reached
    ├── UnavailableError              UNAVAILABLE: unreachable, overloaded, shutting down, log stopped
    ├── InternalError                 INTERNAL: a participant's resource manager failed
    └── XaError                       an XA return code (``code``) from a resource manager

Sources: the status names and numbers are gRPC's canonical codes
(https://grpc.github.io/grpc/core/md_doc_statuscodes.html); the HTTP equivalents follow the same
document's HTTP mapping, except that a forbidden status change answers 412 Precondition Failed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = [
    "SURFACES",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "Status",
    "Surface",
    "UnauthenticatedError",
    "UnavailableError",
    "XatmError",
    "error_for",
    "surface",
]


class Status(enum.IntEnum):
    """gRPC's canonical status codes: the name and number of each are gRPC's."""

    OK = 0
    CANCELLED = 1
    UNKNOWN = 2
    INVALID_ARGUMENT = 3
    DEADLINE_EXCEEDED = 4
    NOT_FOUND = 5
    ALREADY_EXISTS = 6
    PERMISSION_DENIED = 7
    RESOURCE_EXHAUSTED = 8
    FAILED_PRECONDITION = 9
    ABORTED = 10
    OUT_OF_RANGE = 11
    UNIMPLEMENTED = 12
    INTERNAL = 13
    UNAVAILABLE = 14
    DATA_LOSS = 15
    UNAUTHENTICATED = 16


@dataclass(frozen=True)
class Surface:
    """How one status shows on each surface: HTTP status (int) and ``xactl`` exit code (int)."""

    http: int
    exit_code: int


#: Status -> how it surfaces. ``docs/contract.md`` ("Errors everywhere") tabulates the same
#: rows; a test holds the two together. A status not listed surfaces as ``UNLISTED``.
SURFACES: dict[Status, Surface] = {
    Status.OK: Surface(200, 0),
    Status.INVALID_ARGUMENT: Surface(400, 2),
    Status.UNAUTHENTICATED: Surface(401, 5),
    Status.PERMISSION_DENIED: Surface(403, 5),
    Status.NOT_FOUND: Surface(404, 3),
    Status.FAILED_PRECONDITION: Surface(412, 4),
    Status.RESOURCE_EXHAUSTED: Surface(429, 6),
    Status.UNAVAILABLE: Surface(503, 1),
}
#: Any other status: a server error, exit 1 (as for an unreachable coordinator).
UNLISTED = Surface(500, 1)


def surface(status: Status) -> Surface:
    """The HTTP status and exit code of ``status`` (``UNLISTED`` for a status the table omits)."""
    return SURFACES.get(status, UNLISTED)


class XatmError(Exception):
    """Root of every error xatm raises: a one-line ``message`` and the ``status`` it answers with.

    Subclasses fix their status; constructing ``XatmError`` itself takes one (for a status that
    came over the wire, ``error_for`` picks the subclass instead).
    """

    status: Status = Status.UNKNOWN

    def __init__(self, message: str, status: Status | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status


class InvalidArgumentError(XatmError):
    """A malformed id, argument, body or setting; nothing was changed."""

    status = Status.INVALID_ARGUMENT


class UnauthenticatedError(XatmError):
    """Missing, malformed or unknown credentials."""

    status = Status.UNAUTHENTICATED


class PermissionDeniedError(XatmError):
    """Valid credentials whose role may not do this."""

    status = Status.PERMISSION_DENIED


class NotFoundError(XatmError):
    """No such transaction, branch or savepoint (forgotten, never begun, or presumed aborted)."""

    status = Status.NOT_FOUND


class FailedPreconditionError(XatmError):
    """The transaction's (or branch's) status forbids the operation."""

    status = Status.FAILED_PRECONDITION


class ResourceExhaustedError(XatmError):
    """A configured bound (transactions, branches, message size) is reached."""

    status = Status.RESOURCE_EXHAUSTED


class UnavailableError(XatmError):
    """The peer cannot be reached, is overloaded or shutting down, or its log has stopped."""

    status = Status.UNAVAILABLE


class InternalError(XatmError):
    """A resource manager or participant failed in a way its caller cannot correct."""

    status = Status.INTERNAL


_BY_STATUS: dict[Status, type[XatmError]] = {
    cls.status: cls
    for cls in (
        InvalidArgumentError,
        UnauthenticatedError,
        PermissionDeniedError,
        NotFoundError,
        FailedPreconditionError,
        ResourceExhaustedError,
        UnavailableError,
        InternalError,
    )
}


def error_for(status: Status, message: str) -> XatmError:
    """The error of the hierarchy that ``status`` names (``XatmError`` for one with no class)."""
    cls = _BY_STATUS.get(status)
    return cls(message) if cls is not None else XatmError(message, status)
