from . import xa_pb2 as _xa_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BatchVerb(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    BATCH_VERB_UNSPECIFIED: _ClassVar[BatchVerb]
    BATCH_PREPARE: _ClassVar[BatchVerb]
    BATCH_COMMIT: _ClassVar[BatchVerb]
    BATCH_ROLLBACK: _ClassVar[BatchVerb]
BATCH_VERB_UNSPECIFIED: BatchVerb
BATCH_PREPARE: BatchVerb
BATCH_COMMIT: BatchVerb
BATCH_ROLLBACK: BatchVerb

class BranchRequest(_message.Message):
    __slots__ = ("xid",)
    XID_FIELD_NUMBER: _ClassVar[int]
    xid: _xa_pb2.Xid
    def __init__(self, xid: _Optional[_Union[_xa_pb2.Xid, _Mapping]] = ...) -> None: ...

class CommitBranchRequest(_message.Message):
    __slots__ = ("xid", "one_phase")
    XID_FIELD_NUMBER: _ClassVar[int]
    ONE_PHASE_FIELD_NUMBER: _ClassVar[int]
    xid: _xa_pb2.Xid
    one_phase: bool
    def __init__(self, xid: _Optional[_Union[_xa_pb2.Xid, _Mapping]] = ..., one_phase: _Optional[bool] = ...) -> None: ...

class SavepointBranchRequest(_message.Message):
    __slots__ = ("xid", "savepoint_id")
    XID_FIELD_NUMBER: _ClassVar[int]
    SAVEPOINT_ID_FIELD_NUMBER: _ClassVar[int]
    xid: _xa_pb2.Xid
    savepoint_id: str
    def __init__(self, xid: _Optional[_Union[_xa_pb2.Xid, _Mapping]] = ..., savepoint_id: _Optional[str] = ...) -> None: ...

class XaReply(_message.Message):
    __slots__ = ("code", "reason")
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    code: _xa_pb2.XaCode
    reason: str
    def __init__(self, code: _Optional[_Union[_xa_pb2.XaCode, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class RecoverRequest(_message.Message):
    __slots__ = ("format_id",)
    FORMAT_ID_FIELD_NUMBER: _ClassVar[int]
    format_id: int
    def __init__(self, format_id: _Optional[int] = ...) -> None: ...

class RecoverReply(_message.Message):
    __slots__ = ("code", "xids", "rm_id")
    CODE_FIELD_NUMBER: _ClassVar[int]
    XIDS_FIELD_NUMBER: _ClassVar[int]
    RM_ID_FIELD_NUMBER: _ClassVar[int]
    code: _xa_pb2.XaCode
    xids: _containers.RepeatedCompositeFieldContainer[_xa_pb2.Xid]
    rm_id: str
    def __init__(self, code: _Optional[_Union[_xa_pb2.XaCode, str]] = ..., xids: _Optional[_Iterable[_Union[_xa_pb2.Xid, _Mapping]]] = ..., rm_id: _Optional[str] = ...) -> None: ...

class BatchItem(_message.Message):
    __slots__ = ("id", "verb", "xid", "one_phase", "timeout_ms", "trace")
    class TraceEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ID_FIELD_NUMBER: _ClassVar[int]
    VERB_FIELD_NUMBER: _ClassVar[int]
    XID_FIELD_NUMBER: _ClassVar[int]
    ONE_PHASE_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_MS_FIELD_NUMBER: _ClassVar[int]
    TRACE_FIELD_NUMBER: _ClassVar[int]
    id: int
    verb: BatchVerb
    xid: _xa_pb2.Xid
    one_phase: bool
    timeout_ms: int
    trace: _containers.ScalarMap[str, str]
    def __init__(self, id: _Optional[int] = ..., verb: _Optional[_Union[BatchVerb, str]] = ..., xid: _Optional[_Union[_xa_pb2.Xid, _Mapping]] = ..., one_phase: _Optional[bool] = ..., timeout_ms: _Optional[int] = ..., trace: _Optional[_Mapping[str, str]] = ...) -> None: ...

class BatchRequest(_message.Message):
    __slots__ = ("items",)
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[BatchItem]
    def __init__(self, items: _Optional[_Iterable[_Union[BatchItem, _Mapping]]] = ...) -> None: ...

class BatchResult(_message.Message):
    __slots__ = ("id", "code", "reason")
    ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    id: int
    code: _xa_pb2.XaCode
    reason: str
    def __init__(self, id: _Optional[int] = ..., code: _Optional[_Union[_xa_pb2.XaCode, str]] = ..., reason: _Optional[str] = ...) -> None: ...

class BatchReply(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[BatchResult]
    def __init__(self, results: _Optional[_Iterable[_Union[BatchResult, _Mapping]]] = ...) -> None: ...
