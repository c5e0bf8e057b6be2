"""xatm participant stub: resource managers, the Participant service, context propagation.

The names below are the public API. They load on first use, so a process that only needs
``xatm.participant.xa`` (the coordinator, the CLI) does not pay for gRPC servicers and metrics.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xatm.participant.runtime.lazy import lazy_attributes

__all__ = [
    "AioServerInterceptor",
    "AsyncParticipantServicer",
    "AsyncSqlAlchemyRM",
    "AsyncTransaction",
    "AsyncTransactionManager",
    "BranchEnded",
    "ClientInterceptor",
    "EnlistError",
    "FailedPreconditionError",
    "InternalError",
    "InvalidArgumentError",
    "MariaRM",
    "MemoryRM",
    "NotFoundError",
    "ParticipantServicer",
    "ParticipantStub",
    "PermissionDeniedError",
    "PostgresRM",
    "ResourceExhaustedError",
    "ResourceManager",
    "ServerInterceptor",
    "SqlAlchemyRM",
    "SqliteRM",
    "Status",
    "Transaction",
    "TransactionError",
    "TransactionHeuristicHazard",
    "TransactionHeuristicMixed",
    "TransactionManager",
    "TransactionOutcomeUnknown",
    "TransactionRolledBack",
    "TxContext",
    "TxOutcome",
    "TxStatus",
    "UnauthenticatedError",
    "UnavailableError",
    "XaCode",
    "XaError",
    "XatmError",
    "Xid",
    "aio_client_interceptors",
    "current",
    "intercept_channel",
]

#: Where each public name lives (``PostgresRM``, ``MariaRM`` and ``[Async]SqlAlchemyRM`` need the
#: ``postgresql``, ``mysql`` and ``sqlalchemy`` extras; each is loaded on first use).
_HOME = {
    "AioServerInterceptor": "client.interceptors",
    "AsyncParticipantServicer": "servicer",
    "AsyncSqlAlchemyRM": "stores.sqlalchemy_async",
    "AsyncTransaction": "client.initiator",
    "AsyncTransactionManager": "client.initiator",
    "BranchEnded": "stores.base",
    "ClientInterceptor": "client.interceptors",
    "EnlistError": "stub",
    "FailedPreconditionError": "errors",
    "InternalError": "errors",
    "InvalidArgumentError": "errors",
    "MariaRM": "stores.mysql",
    "MemoryRM": "stores.memory",
    "NotFoundError": "errors",
    "ParticipantServicer": "servicer",
    "ParticipantStub": "stub",
    "PermissionDeniedError": "errors",
    "PostgresRM": "stores.postgresql",
    "ResourceExhaustedError": "errors",
    "ResourceManager": "stores.base",
    "ServerInterceptor": "client.interceptors",
    "SqlAlchemyRM": "stores.sqlalchemy",
    "SqliteRM": "stores.sqlite",
    "Status": "errors",
    "Transaction": "client.initiator",
    "TransactionError": "client.initiator",
    "TransactionHeuristicHazard": "client.initiator",
    "TransactionHeuristicMixed": "client.initiator",
    "TransactionManager": "client.initiator",
    "TransactionOutcomeUnknown": "client.initiator",
    "TransactionRolledBack": "client.initiator",
    "TxContext": "client.context",
    "TxOutcome": "xa",
    "TxStatus": "xa",
    "UnauthenticatedError": "errors",
    "UnavailableError": "errors",
    "XaCode": "xa",
    "XaError": "xa",
    "XatmError": "errors",
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
    from xatm.participant.errors import (
        FailedPreconditionError,
        InternalError,
        InvalidArgumentError,
        NotFoundError,
        PermissionDeniedError,
        ResourceExhaustedError,
        Status,
        UnauthenticatedError,
        UnavailableError,
        XatmError,
    )
    from xatm.participant.servicer import AsyncParticipantServicer, ParticipantServicer
    from xatm.participant.stores.base import BranchEnded, ResourceManager
    from xatm.participant.stores.memory import MemoryRM
    from xatm.participant.stores.mysql import MariaRM
    from xatm.participant.stores.postgresql import PostgresRM
    from xatm.participant.stores.sqlalchemy import SqlAlchemyRM
    from xatm.participant.stores.sqlalchemy_async import AsyncSqlAlchemyRM
    from xatm.participant.stores.sqlite import SqliteRM
    from xatm.participant.stub import EnlistError, ParticipantStub
    from xatm.participant.xa import TxOutcome, TxStatus, XaCode, XaError, Xid


__getattr__, __dir__ = lazy_attributes(__name__, _HOME, __all__)
