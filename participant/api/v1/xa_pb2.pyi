import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class XaCode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    XA_OK: _ClassVar[XaCode]
    XAER_ASYNC: _ClassVar[XaCode]
    XAER_RMERR: _ClassVar[XaCode]
    XAER_NOTA: _ClassVar[XaCode]
    XAER_INVAL: _ClassVar[XaCode]
    XAER_PROTO: _ClassVar[XaCode]
    XAER_RMFAIL: _ClassVar[XaCode]
    XAER_DUPID: _ClassVar[XaCode]
    XAER_OUTSIDE: _ClassVar[XaCode]
    XA_RDONLY: _ClassVar[XaCode]
    XA_RETRY: _ClassVar[XaCode]
    XA_HEURMIX: _ClassVar[XaCode]
    XA_HEURRB: _ClassVar[XaCode]
    XA_HEURCOM: _ClassVar[XaCode]
    XA_HEURHAZ: _ClassVar[XaCode]
    XA_NOMIGRATE: _ClassVar[XaCode]
    XA_RBROLLBACK: _ClassVar[XaCode]
    XA_RBCOMMFAIL: _ClassVar[XaCode]
    XA_RBDEADLOCK: _ClassVar[XaCode]
    XA_RBINTEGRITY: _ClassVar[XaCode]
    XA_RBOTHER: _ClassVar[XaCode]
    XA_RBPROTO: _ClassVar[XaCode]
    XA_RBTIMEOUT: _ClassVar[XaCode]
    XA_RBTRANSIENT: _ClassVar[XaCode]

class TxOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TX_OK: _ClassVar[TxOutcome]
    TX_ROLLBACK: _ClassVar[TxOutcome]
    TX_MIXED: _ClassVar[TxOutcome]
    TX_HAZARD: _ClassVar[TxOutcome]
    TX_PROTOCOL_ERROR: _ClassVar[TxOutcome]
    TX_ERROR: _ClassVar[TxOutcome]
    TX_FAIL: _ClassVar[TxOutcome]
    TX_COMMITTED: _ClassVar[TxOutcome]

class TransactionStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TRANSACTION_STATUS_UNSPECIFIED: _ClassVar[TransactionStatus]
    TRANSACTION_STATUS_CREATED: _ClassVar[TransactionStatus]
    TRANSACTION_STATUS_PREPARING: _ClassVar[TransactionStatus]
    TRANSACTION_STATUS_PREPARED: _ClassVar[TransactionStatus]
    TRANSACTION_STATUS_COMMITTING: _ClassVar[TransactionStatus]
    TRANSACTION_STATUS_COMMITTED: _ClassVar[TransactionStatus]
    TRANSACTION_STATUS_ROLLINGBACK: _ClassVar[TransactionStatus]
    TRANSACTION_STATUS_ROLLEDBACK: _ClassVar[TransactionStatus]
    TRANSACTION_STATUS_MARKED_ROLLBACK: _ClassVar[TransactionStatus]
    TRANSACTION_STATUS_HEURISTICALLY_COMPLETED: _ClassVar[TransactionStatus]

class BranchStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BRANCH_STATUS_UNSPECIFIED: _ClassVar[BranchStatus]
    BRANCH_STATUS_ENLISTED: _ClassVar[BranchStatus]
    BRANCH_STATUS_PREPARED: _ClassVar[BranchStatus]
    BRANCH_STATUS_COMMITTED: _ClassVar[BranchStatus]
    BRANCH_STATUS_ROLLEDBACK: _ClassVar[BranchStatus]
    BRANCH_STATUS_HEURISTICALLY_COMPLETED: _ClassVar[BranchStatus]
    BRANCH_STATUS_HEURISTICALLY_ROLLEDBACK: _ClassVar[BranchStatus]

class Phase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PHASE_UNSPECIFIED: _ClassVar[Phase]
    PHASE_PREPARE: _ClassVar[Phase]
    PHASE_COMMIT: _ClassVar[Phase]
    PHASE_ONE_PHASE_COMMIT: _ClassVar[Phase]
    PHASE_ROLLBACK: _ClassVar[Phase]
    PHASE_FORGET: _ClassVar[Phase]
    PHASE_SAVEPOINT: _ClassVar[Phase]
    PHASE_ROLLBACK_TO_SAVEPOINT: _ClassVar[Phase]

class Decision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DECISION_UNSPECIFIED: _ClassVar[Decision]
    DECISION_COMMIT: _ClassVar[Decision]
    DECISION_ROLLBACK: _ClassVar[Decision]
    DECISION_PENDING: _ClassVar[Decision]
XA_OK: XaCode
XAER_ASYNC: XaCode
XAER_RMERR: XaCode
XAER_NOTA: XaCode
XAER_INVAL: XaCode
XAER_PROTO: XaCode
XAER_RMFAIL: XaCode
XAER_DUPID: XaCode
XAER_OUTSIDE: XaCode
XA_RDONLY: XaCode
XA_RETRY: XaCode
XA_HEURMIX: XaCode
XA_HEURRB: XaCode
XA_HEURCOM: XaCode
XA_HEURHAZ: XaCode
XA_NOMIGRATE: XaCode
XA_RBROLLBACK: XaCode
XA_RBCOMMFAIL: XaCode
XA_RBDEADLOCK: XaCode
XA_RBINTEGRITY: XaCode
XA_RBOTHER: XaCode
XA_RBPROTO: XaCode
XA_RBTIMEOUT: XaCode
XA_RBTRANSIENT: XaCode
TX_OK: TxOutcome
TX_ROLLBACK: TxOutcome
TX_MIXED: TxOutcome
TX_HAZARD: TxOutcome
TX_PROTOCOL_ERROR: TxOutcome
TX_ERROR: TxOutcome
TX_FAIL: TxOutcome
TX_COMMITTED: TxOutcome
TRANSACTION_STATUS_UNSPECIFIED: TransactionStatus
TRANSACTION_STATUS_CREATED: TransactionStatus
TRANSACTION_STATUS_PREPARING: TransactionStatus
TRANSACTION_STATUS_PREPARED: TransactionStatus
TRANSACTION_STATUS_COMMITTING: TransactionStatus
TRANSACTION_STATUS_COMMITTED: TransactionStatus
TRANSACTION_STATUS_ROLLINGBACK: TransactionStatus
TRANSACTION_STATUS_ROLLEDBACK: TransactionStatus
TRANSACTION_STATUS_MARKED_ROLLBACK: TransactionStatus
TRANSACTION_STATUS_HEURISTICALLY_COMPLETED: TransactionStatus
BRANCH_STATUS_UNSPECIFIED: BranchStatus
BRANCH_STATUS_ENLISTED: BranchStatus
BRANCH_STATUS_PREPARED: BranchStatus
BRANCH_STATUS_COMMITTED: BranchStatus
BRANCH_STATUS_ROLLEDBACK: BranchStatus
BRANCH_STATUS_HEURISTICALLY_COMPLETED: BranchStatus
BRANCH_STATUS_HEURISTICALLY_ROLLEDBACK: BranchStatus
PHASE_UNSPECIFIED: Phase
PHASE_PREPARE: Phase
PHASE_COMMIT: Phase
PHASE_ONE_PHASE_COMMIT: Phase
PHASE_ROLLBACK: Phase
PHASE_FORGET: Phase
PHASE_SAVEPOINT: Phase
PHASE_ROLLBACK_TO_SAVEPOINT: Phase
DECISION_UNSPECIFIED: Decision
DECISION_COMMIT: Decision
DECISION_ROLLBACK: Decision
DECISION_PENDING: Decision

class Xid(_message.Message):
    __slots__ = ("format_id", "gtrid", "bqual")
    FORMAT_ID_FIELD_NUMBER: _ClassVar[int]
    GTRID_FIELD_NUMBER: _ClassVar[int]
    BQUAL_FIELD_NUMBER: _ClassVar[int]
    format_id: int
    gtrid: str
    bqual: str
    def __init__(self, format_id: _Optional[int] = ..., gtrid: _Optional[str] = ..., bqual: _Optional[str] = ...) -> None: ...

class BranchInfo(_message.Message):
    __slots__ = ("bqual", "rm_id", "endpoint", "status", "last_code", "last_phase", "last_reason", "attempts", "next_retry", "has_last_code", "unreachable_since", "endpoint_failures")
    BQUAL_FIELD_NUMBER: _ClassVar[int]
    RM_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LAST_CODE_FIELD_NUMBER: _ClassVar[int]
    LAST_PHASE_FIELD_NUMBER: _ClassVar[int]
    LAST_REASON_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    NEXT_RETRY_FIELD_NUMBER: _ClassVar[int]
    HAS_LAST_CODE_FIELD_NUMBER: _ClassVar[int]
    UNREACHABLE_SINCE_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FAILURES_FIELD_NUMBER: _ClassVar[int]
    bqual: str
    rm_id: str
    endpoint: str
    status: BranchStatus
    last_code: XaCode
    last_phase: Phase
    last_reason: str
    attempts: int
    next_retry: _timestamp_pb2.Timestamp
    has_last_code: bool
    unreachable_since: _timestamp_pb2.Timestamp
    endpoint_failures: int
    def __init__(self, bqual: _Optional[str] = ..., rm_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., status: _Optional[_Union[BranchStatus, str]] = ..., last_code: _Optional[_Union[XaCode, str]] = ..., last_phase: _Optional[_Union[Phase, str]] = ..., last_reason: _Optional[str] = ..., attempts: _Optional[int] = ..., next_retry: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., has_last_code: _Optional[bool] = ..., unreachable_since: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., endpoint_failures: _Optional[int] = ...) -> None: ...

class TransactionInfo(_message.Message):
    __slots__ = ("gtrid", "status", "branches", "begun_at", "deadline", "timeout_ms", "completed_at", "rollback_code", "rollback_reason", "savepoints", "one_phase", "decision", "recovered", "owner")
    GTRID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BRANCHES_FIELD_NUMBER: _ClassVar[int]
    BEGUN_AT_FIELD_NUMBER: _ClassVar[int]
    DEADLINE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_CODE_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    SAVEPOINTS_FIELD_NUMBER: _ClassVar[int]
    ONE_PHASE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    RECOVERED_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    gtrid: str
    status: TransactionStatus
    branches: _containers.RepeatedCompositeFieldContainer[BranchInfo]
    begun_at: _timestamp_pb2.Timestamp
    deadline: _timestamp_pb2.Timestamp
    timeout_ms: int
    completed_at: _timestamp_pb2.Timestamp
    rollback_code: XaCode
    rollback_reason: str
    savepoints: _containers.RepeatedScalarFieldContainer[str]
    one_phase: bool
    decision: Decision
    recovered: bool
    owner: str
    def __init__(self, gtrid: _Optional[str] = ..., status: _Optional[_Union[TransactionStatus, str]] = ..., branches: _Optional[_Iterable[_Union[BranchInfo, _Mapping]]] = ..., begun_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., deadline: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., timeout_ms: _Optional[int] = ..., completed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rollback_code: _Optional[_Union[XaCode, str]] = ..., rollback_reason: _Optional[str] = ..., savepoints: _Optional[_Iterable[str]] = ..., one_phase: _Optional[bool] = ..., decision: _Optional[_Union[Decision, str]] = ..., recovered: _Optional[bool] = ..., owner: _Optional[str] = ...) -> None: ...

class BranchRef(_message.Message):
    __slots__ = ("bqual", "rm_id", "endpoint")
    BQUAL_FIELD_NUMBER: _ClassVar[int]
    RM_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    bqual: str
    rm_id: str
    endpoint: str
    def __init__(self, bqual: _Optional[str] = ..., rm_id: _Optional[str] = ..., endpoint: _Optional[str] = ...) -> None: ...

class BranchReport(_message.Message):
    __slots__ = ("gtrid", "branches", "rollback_only")
    GTRID_FIELD_NUMBER: _ClassVar[int]
    BRANCHES_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_ONLY_FIELD_NUMBER: _ClassVar[int]
    gtrid: str
    branches: _containers.RepeatedCompositeFieldContainer[BranchRef]
    rollback_only: str
    def __init__(self, gtrid: _Optional[str] = ..., branches: _Optional[_Iterable[_Union[BranchRef, _Mapping]]] = ..., rollback_only: _Optional[str] = ...) -> None: ...
