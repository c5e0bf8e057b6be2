import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from . import coordinator_pb2 as _coordinator_pb2
from . import xa_pb2 as _xa_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ResolvedOutcome(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    RESOLVED_OUTCOME_UNSPECIFIED: _ClassVar[ResolvedOutcome]
    RESOLVED_OUTCOME_COMMITTED: _ClassVar[ResolvedOutcome]
    RESOLVED_OUTCOME_ROLLEDBACK: _ClassVar[ResolvedOutcome]
RESOLVED_OUTCOME_UNSPECIFIED: ResolvedOutcome
RESOLVED_OUTCOME_COMMITTED: ResolvedOutcome
RESOLVED_OUTCOME_ROLLEDBACK: ResolvedOutcome

class ListTransactionsRequest(_message.Message):
    __slots__ = ("statuses", "begun_after", "page_size", "page_token")
    STATUSES_FIELD_NUMBER: _ClassVar[int]
    BEGUN_AFTER_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    statuses: _containers.RepeatedScalarFieldContainer[_xa_pb2.TransactionStatus]
    begun_after: _timestamp_pb2.Timestamp
    page_size: int
    page_token: str
    def __init__(self, statuses: _Optional[_Iterable[_Union[_xa_pb2.TransactionStatus, str]]] = ..., begun_after: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListTransactionsResponse(_message.Message):
    __slots__ = ("transactions", "next_page_token")
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    transactions: _containers.RepeatedCompositeFieldContainer[_xa_pb2.TransactionInfo]
    next_page_token: str
    def __init__(self, transactions: _Optional[_Iterable[_Union[_xa_pb2.TransactionInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetTransactionRequest(_message.Message):
    __slots__ = ("gtrid",)
    GTRID_FIELD_NUMBER: _ClassVar[int]
    gtrid: str
    def __init__(self, gtrid: _Optional[str] = ...) -> None: ...

class ForceRequest(_message.Message):
    __slots__ = ("gtrid", "reason")
    GTRID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    gtrid: str
    reason: str
    def __init__(self, gtrid: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ResolveBranchRequest(_message.Message):
    __slots__ = ("gtrid", "bqual", "outcome", "reason")
    GTRID_FIELD_NUMBER: _ClassVar[int]
    BQUAL_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    gtrid: str
    bqual: str
    outcome: ResolvedOutcome
    reason: str
    def __init__(self, gtrid: _Optional[str] = ..., bqual: _Optional[str] = ..., outcome: _Optional[_Union[ResolvedOutcome, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class ForgetRequest(_message.Message):
    __slots__ = ("gtrids",)
    GTRIDS_FIELD_NUMBER: _ClassVar[int]
    gtrids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, gtrids: _Optional[_Iterable[str]] = ...) -> None: ...

class ForgetResult(_message.Message):
    __slots__ = ("gtrid", "forgotten", "error", "code")
    GTRID_FIELD_NUMBER: _ClassVar[int]
    FORGOTTEN_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    gtrid: str
    forgotten: bool
    error: str
    code: str
    def __init__(self, gtrid: _Optional[str] = ..., forgotten: _Optional[bool] = ..., error: _Optional[str] = ..., code: _Optional[str] = ...) -> None: ...

class ForgetResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[ForgetResult]
    def __init__(self, results: _Optional[_Iterable[_Union[ForgetResult, _Mapping]]] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("time", "actor", "action", "gtrid", "peer", "trace_id", "result", "detail")
    TIME_FIELD_NUMBER: _ClassVar[int]
    ACTOR_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    GTRID_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    time: _timestamp_pb2.Timestamp
    actor: str
    action: str
    gtrid: str
    peer: str
    trace_id: str
    result: str
    detail: str
    def __init__(self, time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., actor: _Optional[str] = ..., action: _Optional[str] = ..., gtrid: _Optional[str] = ..., peer: _Optional[str] = ..., trace_id: _Optional[str] = ..., result: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("records", "next_page_token")
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    next_page_token: str
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class Approval(_message.Message):
    __slots__ = ("id", "action", "gtrids", "reason", "requested_by", "trace_id", "requested_at", "expires_at", "state", "decided_by", "result")
    ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    GTRIDS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    TRACE_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    DECIDED_BY_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    id: str
    action: str
    gtrids: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    requested_by: str
    trace_id: str
    requested_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    state: str
    decided_by: str
    result: str
    def __init__(self, id: _Optional[str] = ..., action: _Optional[str] = ..., gtrids: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., requested_by: _Optional[str] = ..., trace_id: _Optional[str] = ..., requested_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., state: _Optional[str] = ..., decided_by: _Optional[str] = ..., result: _Optional[str] = ...) -> None: ...

class ListApprovalsRequest(_message.Message):
    __slots__ = ("all",)
    ALL_FIELD_NUMBER: _ClassVar[int]
    all: bool
    def __init__(self, all: _Optional[bool] = ...) -> None: ...

class ListApprovalsResponse(_message.Message):
    __slots__ = ("approvals",)
    APPROVALS_FIELD_NUMBER: _ClassVar[int]
    approvals: _containers.RepeatedCompositeFieldContainer[Approval]
    def __init__(self, approvals: _Optional[_Iterable[_Union[Approval, _Mapping]]] = ...) -> None: ...

class DecideApprovalRequest(_message.Message):
    __slots__ = ("id", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: str
    reason: str
    def __init__(self, id: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class ApprovalDecision(_message.Message):
    __slots__ = ("approval", "completion", "forget")
    APPROVAL_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_FIELD_NUMBER: _ClassVar[int]
    FORGET_FIELD_NUMBER: _ClassVar[int]
    approval: Approval
    completion: _coordinator_pb2.CompletionResponse
    forget: ForgetResponse
    def __init__(self, approval: _Optional[_Union[Approval, _Mapping]] = ..., completion: _Optional[_Union[_coordinator_pb2.CompletionResponse, _Mapping]] = ..., forget: _Optional[_Union[ForgetResponse, _Mapping]] = ...) -> None: ...

class ListReplicasRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReplicaInfo(_message.Message):
    __slots__ = ("name", "live", "grpc_address", "http_address", "answering", "transactions")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LIVE_FIELD_NUMBER: _ClassVar[int]
    GRPC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    HTTP_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ANSWERING_FIELD_NUMBER: _ClassVar[int]
    TRANSACTIONS_FIELD_NUMBER: _ClassVar[int]
    name: str
    live: bool
    grpc_address: str
    http_address: str
    answering: bool
    transactions: int
    def __init__(self, name: _Optional[str] = ..., live: _Optional[bool] = ..., grpc_address: _Optional[str] = ..., http_address: _Optional[str] = ..., answering: _Optional[bool] = ..., transactions: _Optional[int] = ...) -> None: ...

class ListReplicasResponse(_message.Message):
    __slots__ = ("replicas",)
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    replicas: _containers.RepeatedCompositeFieldContainer[ReplicaInfo]
    def __init__(self, replicas: _Optional[_Iterable[_Union[ReplicaInfo, _Mapping]]] = ...) -> None: ...
