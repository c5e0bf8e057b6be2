import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from xatm.participant.api.v1 import admin_pb2 as _admin_pb2
from xatm.participant.api.v1 import xa_pb2 as _xa_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WalRecord(_message.Message):
    __slots__ = ("time", "gtrid", "begin", "enlist", "branch_result", "status", "decision", "end", "audit", "savepoint", "forget", "snapshot", "endpoint", "completed")
    TIME_FIELD_NUMBER: _ClassVar[int]
    GTRID_FIELD_NUMBER: _ClassVar[int]
    BEGIN_FIELD_NUMBER: _ClassVar[int]
    ENLIST_FIELD_NUMBER: _ClassVar[int]
    BRANCH_RESULT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    AUDIT_FIELD_NUMBER: _ClassVar[int]
    SAVEPOINT_FIELD_NUMBER: _ClassVar[int]
    FORGET_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    gtrid: str
    begin: BeginRecord
    enlist: EnlistRecord
    branch_result: BranchResultRecord
    status: StatusRecord
    decision: DecisionRecord
    end: EndRecord
    audit: _admin_pb2.AuditRecord
    savepoint: SavepointRecord
    forget: ForgetRecord
    snapshot: TransactionSnapshot
    endpoint: EndpointRecord
    completed: CompletedRecord
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., gtrid: _Optional[str] = ..., begin: _Optional[_Union[BeginRecord, _Mapping]] = ..., enlist: _Optional[_Union[EnlistRecord, _Mapping]] = ..., branch_result: _Optional[_Union[BranchResultRecord, _Mapping]] = ..., status: _Optional[_Union[StatusRecord, _Mapping]] = ..., decision: _Optional[_Union[DecisionRecord, _Mapping]] = ..., end: _Optional[_Union[EndRecord, _Mapping]] = ..., audit: _Optional[_Union[_admin_pb2.AuditRecord, _Mapping]] = ..., savepoint: _Optional[_Union[SavepointRecord, _Mapping]] = ..., forget: _Optional[_Union[ForgetRecord, _Mapping]] = ..., snapshot: _Optional[_Union[TransactionSnapshot, _Mapping]] = ..., endpoint: _Optional[_Union[EndpointRecord, _Mapping]] = ..., completed: _Optional[_Union[CompletedRecord, _Mapping]] = ...) -> None: ...

class BeginRecord(_message.Message):
    __slots__ = ("timeout_ms",)
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    timeout_ms: int
    def __init__(self, timeout_ms: _Optional[int] = ...) -> None: ...

class EnlistRecord(_message.Message):
    __slots__ = ("bqual", "rm_id", "endpoint")
    BQUAL_FIELD_NUMBER: _ClassVar[int]
    RM_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    bqual: str
    rm_id: str
    endpoint: str
    def __init__(self, bqual: _Optional[str] = ..., rm_id: _Optional[str] = ..., endpoint: _Optional[str] = ...) -> None: ...

class BranchResultRecord(_message.Message):
    __slots__ = ("bqual", "phase", "code", "reason", "status")
    BQUAL_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    bqual: str
    phase: _xa_pb2.Phase
    code: _xa_pb2.XaCode
    reason: str
    status: _xa_pb2.BranchStatus
    def __init__(self, bqual: _Optional[str] = ..., phase: _Optional[_Union[_xa_pb2.Phase, str]] = ..., code: _Optional[_Union[_xa_pb2.XaCode, str]] = ..., reason: _Optional[str] = ..., status: _Optional[_Union[_xa_pb2.BranchStatus, str]] = ...) -> None: ...

class StatusRecord(_message.Message):
    __slots__ = ("status", "rollback_code", "reason")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    status: _xa_pb2.TransactionStatus
    rollback_code: _xa_pb2.XaCode
    reason: str
    def __init__(self, status: _Optional[_Union[_xa_pb2.TransactionStatus, str]] = ..., rollback_code: _Optional[_Union[_xa_pb2.XaCode, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class DecisionRecord(_message.Message):
    __slots__ = ("commit", "transaction")
    COMMIT_FIELD_NUMBER: _ClassVar[int]
    TRANSACTION_FIELD_NUMBER: _ClassVar[int]
    commit: bool
    transaction: TransactionSnapshot
    def __init__(self, commit: _Optional[bool] = ..., transaction: _Optional[_Union[TransactionSnapshot, _Mapping]] = ...) -> None: ...

class EndRecord(_message.Message):
    __slots__ = ("status",)
    STATUS_FIELD_NUMBER: _ClassVar[int]
    status: _xa_pb2.TransactionStatus
    def __init__(self, status: _Optional[_Union[_xa_pb2.TransactionStatus, str]] = ...) -> None: ...

class SavepointRecord(_message.Message):
    __slots__ = ("savepoint_id", "rolled_back")
    SAVEPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    ROLLED_BACK_FIELD_NUMBER: _ClassVar[int]
    savepoint_id: str
    rolled_back: bool
    def __init__(self, savepoint_id: _Optional[str] = ..., rolled_back: _Optional[bool] = ...) -> None: ...

class ForgetRecord(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CompletedRecord(_message.Message):
    __slots__ = ("status", "begun_at", "records", "served")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BEGUN_AT_FIELD_NUMBER: _ClassVar[int]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    SERVED_FIELD_NUMBER: _ClassVar[int]
    status: _xa_pb2.TransactionStatus
    begun_at: float
    records: bytes
    served: _containers.RepeatedCompositeFieldContainer[ServedAt]
    def __init__(self, status: _Optional[_Union[_xa_pb2.TransactionStatus, str]] = ..., begun_at: _Optional[float] = ..., records: _Optional[bytes] = ..., served: _Optional[_Iterable[_Union[ServedAt, _Mapping]]] = ...) -> None: ...

class ServedAt(_message.Message):
    __slots__ = ("rm_id", "endpoint")
    RM_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    rm_id: str
    endpoint: str
    def __init__(self, rm_id: _Optional[str] = ..., endpoint: _Optional[str] = ...) -> None: ...

class EndpointRecord(_message.Message):
    __slots__ = ("bqual", "endpoint")
    BQUAL_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    bqual: str
    endpoint: str
    def __init__(self, bqual: _Optional[str] = ..., endpoint: _Optional[str] = ...) -> None: ...

class TransactionSnapshot(_message.Message):
    __slots__ = ("gtrid", "status", "branches", "begun_at", "timeout_ms", "completed_at", "rollback_code", "rollback_reason", "savepoints", "one_phase", "decision", "recovered", "inherited")
    GTRID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    BRANCHES_FIELD_NUMBER: _ClassVar[int]
    BEGUN_AT_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_AT_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_CODE_FIELD_NUMBER: _ClassVar[int]
    ROLLBACK_REASON_FIELD_NUMBER: _ClassVar[int]
    SAVEPOINTS_FIELD_NUMBER: _ClassVar[int]
    ONE_PHASE_FIELD_NUMBER: _ClassVar[int]
    DECISION_FIELD_NUMBER: _ClassVar[int]
    RECOVERED_FIELD_NUMBER: _ClassVar[int]
    INHERITED_FIELD_NUMBER: _ClassVar[int]
    gtrid: str
    status: _xa_pb2.TransactionStatus
    branches: _containers.RepeatedCompositeFieldContainer[BranchSnapshot]
    begun_at: _timestamp_pb2.Timestamp
    timeout_ms: int
    completed_at: _timestamp_pb2.Timestamp
    rollback_code: _xa_pb2.XaCode
    rollback_reason: str
    savepoints: _containers.RepeatedScalarFieldContainer[str]
    one_phase: bool
    decision: _xa_pb2.Decision
    recovered: bool
    inherited: bool
    def __init__(self, gtrid: _Optional[str] = ..., status: _Optional[_Union[_xa_pb2.TransactionStatus, str]] = ..., branches: _Optional[_Iterable[_Union[BranchSnapshot, _Mapping]]] = ..., begun_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., timeout_ms: _Optional[int] = ..., completed_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., rollback_code: _Optional[_Union[_xa_pb2.XaCode, str]] = ..., rollback_reason: _Optional[str] = ..., savepoints: _Optional[_Iterable[str]] = ..., one_phase: _Optional[bool] = ..., decision: _Optional[_Union[_xa_pb2.Decision, str]] = ..., recovered: _Optional[bool] = ..., inherited: _Optional[bool] = ...) -> None: ...

class BranchSnapshot(_message.Message):
    __slots__ = ("bqual", "rm_id", "endpoint", "status", "last_code", "last_phase", "last_reason", "has_last_code", "attempts")
    BQUAL_FIELD_NUMBER: _ClassVar[int]
    RM_ID_FIELD_NUMBER: _ClassVar[int]
    ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LAST_CODE_FIELD_NUMBER: _ClassVar[int]
    LAST_PHASE_FIELD_NUMBER: _ClassVar[int]
    LAST_REASON_FIELD_NUMBER: _ClassVar[int]
    HAS_LAST_CODE_FIELD_NUMBER: _ClassVar[int]
    ATTEMPTS_FIELD_NUMBER: _ClassVar[int]
    bqual: str
    rm_id: str
    endpoint: str
    status: _xa_pb2.BranchStatus
    last_code: _xa_pb2.XaCode
    last_phase: _xa_pb2.Phase
    last_reason: str
    has_last_code: bool
    attempts: int
    def __init__(self, bqual: _Optional[str] = ..., rm_id: _Optional[str] = ..., endpoint: _Optional[str] = ..., status: _Optional[_Union[_xa_pb2.BranchStatus, str]] = ..., last_code: _Optional[_Union[_xa_pb2.XaCode, str]] = ..., last_phase: _Optional[_Union[_xa_pb2.Phase, str]] = ..., last_reason: _Optional[str] = ..., has_last_code: _Optional[bool] = ..., attempts: _Optional[int] = ...) -> None: ...
