from . import xa_pb2 as _xa_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BeginRequest(_message.Message):
    __slots__ = ("timeout_ms", "gtrid", "branches")
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    GTRID_FIELD_NUMBER: _ClassVar[int]
    BRANCHES_FIELD_NUMBER: _ClassVar[int]
    timeout_ms: int
    gtrid: str
    branches: _containers.RepeatedCompositeFieldContainer[_xa_pb2.BranchRef]
    def __init__(self, timeout_ms: _Optional[int] = ..., gtrid: _Optional[str] = ..., branches: _Optional[_Iterable[_Union[_xa_pb2.BranchRef, _Mapping]]] = ...) -> None: ...

class BeginResponse(_message.Message):
    __slots__ = ("gtrid", "format_id", "timeout_ms", "node_id", "max_timeout_ms", "incarnation")
    GTRID_FIELD_NUMBER: _ClassVar[int]
    FORMAT_ID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    gtrid: str
    format_id: int
    timeout_ms: int
    node_id: str
    max_timeout_ms: int
    incarnation: str
    def __init__(self, gtrid: _Optional[str] = ..., format_id: _Optional[int] = ..., timeout_ms: _Optional[int] = ..., node_id: _Optional[str] = ..., max_timeout_ms: _Optional[int] = ..., incarnation: _Optional[str] = ...) -> None: ...

class EnlistRequest(_message.Message):
    __slots__ = ("gtrid", "bqual", "rm_id", "endpoint", "timeout_ms")
    GTRID_FIELD_NUMBER: _ClassVar[int]
    BQUAL_FIELD_NUMBER: _ClassVar[int]
    RM_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    gtrid: str
    bqual: str
    rm_id: str
    endpoint: str
    timeout_ms: int
    def __init__(self, gtrid: _Optional[str] = ..., bqual: _Optional[str] = ..., rm_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., timeout_ms: _Optional[int] = ...) -> None: ...

class EnlistResponse(_message.Message):
    __slots__ = ("code", "reason")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    code: _xa_pb2.XaCode
    reason: str
    def __init__(self, code: _Optional[_Union[_xa_pb2.XaCode, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class CompletionRequest(_message.Message):
    __slots__ = ("gtrid", "timeout_ms", "branches", "rollback_only")
    GTRID_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    BRANCHES_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_ONLY_FIELD_NUMBER: _ClassVar[int]
    gtrid: str
    timeout_ms: int
    branches: _containers.RepeatedCompositeFieldContainer[_xa_pb2.BranchRef]
    rollback_only: str
    def __init__(self, gtrid: _Optional[str] = ..., timeout_ms: _Optional[int] = ..., branches: _Optional[_Iterable[_Union[_xa_pb2.BranchRef, _Mapping]]] = ..., rollback_only: _Optional[str] = ...) -> None: ...

class CompletionResponse(_message.Message):
    __slots__ = ("gtrid", "outcome", "status", "branches", "rollback_code", "rollback_reason", "incarnation")
    GTRID_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BRANCHES_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_CODE_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    INCARNATION_FIELD_NUMBER: _ClassVar[int]
    gtrid: str
    outcome: _xa_pb2.TxOutcome
    status: _xa_pb2.TransactionStatus
    branches: _containers.RepeatedCompositeFieldContainer[_xa_pb2.BranchInfo]
    rollback_code: _xa_pb2.XaCode
    rollback_reason: str
    incarnation: str
    def __init__(self, gtrid: _Optional[str] = ..., outcome: _Optional[_Union[_xa_pb2.TxOutcome, str]] = ..., status: _Optional[_Union[_xa_pb2.TransactionStatus, str]] = ..., branches: _Optional[_Iterable[_Union[_xa_pb2.BranchInfo, _Mapping]]] = ..., rollback_code: _Optional[_Union[_xa_pb2.XaCode, str]] = ..., rollback_reason: _Optional[str] = ..., incarnation: _Optional[str] = ...) -> None: ...

class MarkRollbackOnlyRequest(_message.Message):
    __slots__ = ("gtrid", "reason")
    GTRID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    gtrid: str
    reason: str
    def __init__(self, gtrid: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = ("gtrid",)
    GTRID_FIELD_NUMBER: _ClassVar[int]
    gtrid: str
    def __init__(self, gtrid: _Optional[str] = ...) -> None: ...

class QueryOutcomeRequest(_message.Message):
    __slots__ = ("xid", "rm_id", "endpoint")
    XID_FIELD_NUMBER: _ClassVar[int]
    RM_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    xid: _xa_pb2.Xid
    rm_id: str
    endpoint: str
    def __init__(self, xid: _Optional[_Union[_xa_pb2.Xid, _Mapping]] = ..., rm_id: _Optional[str] = ..., endpoint: _Optional[str] = ...) -> None: ...

class QueryOutcomeResponse(_message.Message):
    __slots__ = ("decision",)
    DECISION_FIELD_NUMBER: _ClassVar[int]
    decision: _xa_pb2.Decision
    def __init__(self, decision: _Optional[_Union[_xa_pb2.Decision, str]] = ...) -> None: ...

class RegisterParticipantRequest(_message.Message):
    __slots__ = ("rm_id", "endpoint")
    RM_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    rm_id: str
    endpoint: str
    def __init__(self, rm_id: _Optional[str] = ..., endpoint: _Optional[str] = ...) -> None: ...

class RegisterParticipantResponse(_message.Message):
    __slots__ = ("moved",)
    MOVED_FIELD_NUMBER: _ClassVar[int]
    moved: int
    def __init__(self, moved: _Optional[int] = ...) -> None: ...

class ReportOutcomeRequest(_message.Message):
    __slots__ = ("xid", "rm_id", "phase", "code", "reason")
    XID_FIELD_NUMBER: _ClassVar[int]
    RM_ID_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    xid: _xa_pb2.Xid
    rm_id: str
    phase: _xa_pb2.Phase
    code: _xa_pb2.XaCode
    reason: str
    def __init__(self, xid: _Optional[_Union[_xa_pb2.Xid, _Mapping]] = ..., rm_id: _Optional[str] = ..., phase: _Optional[_Union[_xa_pb2.Phase, str]] = ..., code: _Optional[_Union[_xa_pb2.XaCode, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class ReportOutcomeResponse(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: _xa_pb2.TransactionStatus
    def __init__(self, status: _Optional[_Union[_xa_pb2.TransactionStatus, str]] = ...) -> None: ...

class CreateSavepointRequest(_message.Message):
    __slots__ = ("gtrid",)
    GTRID_FIELD_NUMBER: _ClassVar[int]
    gtrid: str
    def __init__(self, gtrid: _Optional[str] = ...) -> None: ...

class CreateSavepointResponse(_message.Message):
    __slots__ = ("savepoint_id",)
    SAVEPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    savepoint_id: str
    def __init__(self, savepoint_id: _Optional[str] = ...) -> None: ...

class RollbackToSavepointRequest(_message.Message):
    __slots__ = ("gtrid", "savepoint_id")
    GTRID_FIELD_NUMBER: _ClassVar[int]
    SAVEPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    gtrid: str
    savepoint_id: str
    def __init__(self, gtrid: _Optional[str] = ..., savepoint_id: _Optional[str] = ...) -> None: ...
