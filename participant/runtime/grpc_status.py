"""The error hierarchy on gRPC: ``Status`` to ``grpc.StatusCode`` and back, by name.

``xatm.participant.errors.Status`` carries gRPC's canonical names and numbers, so the
translation is exact both ways; it lives here so the hierarchy itself imports no transport.
"""

from __future__ import annotations

from typing import NoReturn

import grpc
import grpc.aio

from xatm.participant.errors import Status, XatmError, error_for

__all__ = ["abort", "abort_async", "from_rpc_error", "status_of", "to_grpc"]


def to_grpc(status: Status) -> grpc.StatusCode:
    """The ``grpc.StatusCode`` of the same name."""
    return grpc.StatusCode[status.name]


def status_of(code: grpc.StatusCode | None) -> Status:
    """The ``Status`` of a gRPC status code (``UNKNOWN`` when the call gave none)."""
    return Status[code.name] if code is not None else Status.UNKNOWN


def from_rpc_error(error: grpc.RpcError, message: str | None = None) -> XatmError:
    """The hierarchy's error for a failed call: its status, and ``message`` or the call's details."""
    code = error.code() if callable(getattr(error, "code", None)) else None
    details = error.details() if callable(getattr(error, "details", None)) else None
    status = status_of(code)
    return error_for(status, message or details or status.name)


def abort(context: grpc.ServicerContext, error: XatmError) -> NoReturn:
    """End a synchronous call with ``error``'s status and one-line message."""
    context.abort(to_grpc(error.status), error.message)
    raise AssertionError("grpc's abort raises")  # abort never returns; this tells the type checker


async def abort_async(context: grpc.aio.ServicerContext[object, object], error: XatmError) -> NoReturn:
    """End an asyncio call with ``error``'s status and one-line message."""
    await context.abort(to_grpc(error.status), error.message)
    raise AssertionError("grpc's abort raises")
