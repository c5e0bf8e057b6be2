"""xatm participant stub: resource managers, the Participant service, context propagation.

The names below are the public API. They load on first use, so a process that only needs
``participant.xa`` (the coordinator, the CLI) does not pay for gRPC servicers and metrics.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__all__ = [
    "AioServerInterceptor",
    "AsyncParticipantServicer",
    "AsyncTransaction",
    "AsyncTransactionManager",
    "ClientInterceptor",
    "EnlistError",
    "ParticipantServicer",
    "ParticipantStub",
    "ResourceManager",
    "ServerInterceptor",
    "Transaction",
    "TransactionError",
    "TransactionHeuristicHazard",
    "TransactionHeuristicMixed",
    "TransactionManager",
    "TransactionOutcomeUnknown",
    "TransactionRolledBack",
    "TxContext",
    "XaCode",
    "XaError",
    "XatmError",
    "Xid",
    "aio_client_interceptors",
    "current",
    "intercept_channel",
]

_HOME = {
    "AioServerInterceptor": "interceptors",
    "AsyncParticipantServicer": "servicer",
    "AsyncTransaction": "initiator",
    "AsyncTransactionManager": "initiator",
    "ClientInterceptor": "interceptors",
    "EnlistError": "stub",
    "ParticipantServicer": "servicer",
    "ParticipantStub": "stub",
    "ResourceManager": "rm",
    "ServerInterceptor": "interceptors",
    "Transaction": "initiator",
    "TransactionError": "initiator",
    "TransactionHeuristicHazard": "initiator",
    "TransactionHeuristicMixed": "initiator",
    "TransactionManager": "initiator",
    "TransactionOutcomeUnknown": "initiator",
    "TransactionRolledBack": "initiator",
    "TxContext": "context",
    "XaCode": "xa",
    "XaError": "xa",
    "XatmError": "xa",
    "Xid": "xa",
    "aio_client_interceptors": "interceptors",
    "current": "context",
    "intercept_channel": "interceptors",
}

if TYPE_CHECKING:
    from .context import TxContext, current
    from .initiator import (
        AsyncTransaction,
        AsyncTransactionManager,
        Transaction,
        TransactionError,
        TransactionHeuristicHazard,
        TransactionHeuristicMixed,
        TransactionManager,
        TransactionOutcomeUnknown,
        TransactionRolledBack,
    )
    from .interceptors import (
        AioServerInterceptor,
        ClientInterceptor,
        ServerInterceptor,
        aio_client_interceptors,
        intercept_channel,
    )
    from .rm import ResourceManager
    from .servicer import AsyncParticipantServicer, ParticipantServicer
    from .stub import EnlistError, ParticipantStub
    from .xa import XaCode, XaError, XatmError, Xid


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value
    return value
