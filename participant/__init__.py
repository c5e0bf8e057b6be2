"""xatm participant stub: resource managers, the Participant service, context propagation.

The names below are the public API. They load on first use, so a process that only needs
``xatm.participant.xa`` (the coordinator, the CLI) does not pay for gRPC servicers and metrics.
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
    "AioServerInterceptor": "client.interceptors",
    "AsyncParticipantServicer": "servicer",
    "AsyncTransaction": "client.initiator",
    "AsyncTransactionManager": "client.initiator",
    "ClientInterceptor": "client.interceptors",
    "EnlistError": "stub",
    "ParticipantServicer": "servicer",
    "ParticipantStub": "stub",
    "ResourceManager": "stores.base",
    "ServerInterceptor": "client.interceptors",
    "Transaction": "client.initiator",
    "TransactionError": "client.initiator",
    "TransactionHeuristicHazard": "client.initiator",
    "TransactionHeuristicMixed": "client.initiator",
    "TransactionManager": "client.initiator",
    "TransactionOutcomeUnknown": "client.initiator",
    "TransactionRolledBack": "client.initiator",
    "TxContext": "client.context",
    "XaCode": "xa",
    "XaError": "xa",
    "XatmError": "xa",
    "Xid": "xa",
    "aio_client_interceptors": "client.interceptors",
    "current": "client.context",
    "intercept_channel": "client.interceptors",
}

if TYPE_CHECKING:
    from xatm.participant.client.context import TxContext, current
    from xatm.participant.client.initiator import (
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
    from xatm.participant.client.interceptors import (
        AioServerInterceptor,
        ClientInterceptor,
        ServerInterceptor,
        aio_client_interceptors,
        intercept_channel,
    )
    from xatm.participant.servicer import AsyncParticipantServicer, ParticipantServicer
    from xatm.participant.stores.base import ResourceManager
    from xatm.participant.stub import EnlistError, ParticipantStub
    from xatm.participant.xa import XaCode, XaError, XatmError, Xid


def __getattr__(name: str) -> Any:
    if name not in _HOME:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_HOME[name]}", __name__), name)
    globals()[name] = value
    return value
