from . import xa_pb2 as _xa_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

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
