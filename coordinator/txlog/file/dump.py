"""Reading the log with no coordinator running: ``read_records`` and ``xactl wal dump``."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp

from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.file.scan import LogScan
from xatm.coordinator.txlog.file.segment import list_segments
from xatm.coordinator.txlog.kept import kept_records
from xatm.participant.xa import BranchStatus, Decision, Phase, TxStatus, XaCode

if TYPE_CHECKING:
    from google._upb import _message as _upb

    # The stubs type a message's descriptors as either backend's (pure Python or upb).
    _FieldDescriptor = FieldDescriptor | _upb.FieldDescriptor
    _EnumDescriptor = EnumDescriptor | _upb.EnumDescriptor

__all__ = ["dump_text", "find_wal_dir", "iter_dump_lines", "read_records"]

#: Columns of a gtrid made for a default node id ("n" and 8 hex digits, a dot, 36 hex digits):
#: the table is printed as the log is read, so it cannot measure the gtrids first.
_GTRID_WIDTH = 46

log = logging.getLogger(__name__)

Output = Literal["table", "json"]

# A zero value is normally "not set" and hidden, except where it is the answer: XA_OK, a rollback decision.
_ALWAYS_SHOWN = {
    (wal_pb2.BranchResultRecord.DESCRIPTOR.full_name, "code"),
    (wal_pb2.DecisionRecord.DESCRIPTOR.full_name, "commit"),
}
#: A zero value shown only when another field says it was set (XA_OK is 0).
_SET_BY = {
    (wal_pb2.BranchSnapshot.DESCRIPTOR.full_name, "last_code"): "has_last_code",
    (wal_pb2.BranchSnapshot.DESCRIPTOR.full_name, "last_phase"): "has_last_code",
}
#: Bookkeeping of the record format, not part of what happened.
_HIDDEN = {(wal_pb2.BranchSnapshot.DESCRIPTOR.full_name, "has_last_code")}
#: A checkpoint's completed transaction, kept as its own records: shown as those records.
_KEPT = wal_pb2.CompletedRecord.DESCRIPTOR.fields_by_name["records"].full_name
#: Seconds since the epoch held as a number: shown as a time, as timestamps are.
_SECONDS = {wal_pb2.CompletedRecord.DESCRIPTOR.fields_by_name["begun_at"].full_name}
#: Each enum of the record format, by its full name, in the operator vocabulary.
_WORDS: dict[str, Callable[[int], str]] = {
    "xatm.v1.XaCode": lambda n: XaCode(n).name,
    "xatm.v1.TransactionStatus": lambda n: TxStatus(n).label,
    "xatm.v1.BranchStatus": lambda n: BranchStatus(n).label,
    "xatm.v1.Phase": lambda n: str(Phase(n)),
    "xatm.v1.Decision": lambda n: Decision(n).name.lower(),
}
_PLAIN = re.compile(r"[^\s\"=]+")


def find_wal_dir(path: Path | str) -> Path:
    """Accept the data directory (the usual case) or its ``wal`` directory itself."""
    path = Path(path)
    if (path / "wal").is_dir():
        return path / "wal"
    if path.is_dir() and list_segments(path):
        return path
    raise FileNotFoundError(f"no write-ahead log in {path} (expected {path / 'wal'})")


def read_records(data_dir: Path | str) -> Iterator[tuple[Path, int, wal_pb2.WalRecord]]:
    """Yield (segment path, offset, record) in log order; read-only, no lock, nothing cut.

    Safe beside a running coordinator, whose write in flight may show as a torn tail.

    A torn tail is logged as a warning (``open()`` would cut it); damage before the tail
    raises ``LogCorrupt`` after the records that precede it.
    """
    scan = LogScan(find_wal_dir(data_dir))
    yield from scan
    if scan.torn_tail is not None:
        torn = scan.torn_tail
        log.warning(
            "write-ahead log: torn tail in %s at offset %d (%d bytes: %s); the next open will cut it",
            torn.path,
            torn.offset,
            torn.nbytes,
            torn.detail,
        )
    if scan.damage is not None:
        raise scan.damage.error()


def iter_dump_lines(data_dir: Path | str, output: Output = "table") -> Iterator[str]:
    """The lines of ``dump_text``, as they are read, so a CLI can print them before an error.

    ``table``: a header, then per record time, gtrid, type, segment:offset and the body's fields.
    ``json``: one object per record (the fields' JSON names) plus ``segment`` and ``offset``.
    Both show only the fields that say something, in the words of ``xactl show`` and the REST
    API (``Preparing``, ``commit``, ``XA_RBROLLBACK``). A torn tail ends either with a line describing it (an
    object with a single ``tornTail`` key in JSON); mid-log damage raises ``LogCorrupt``.
    """
    if output not in ("table", "json"):
        raise ValueError(f"output must be 'table' or 'json', not {output!r}")
    scan = LogScan(find_wal_dir(data_dir))
    if output == "table":
        yield f"{'TIME':<24}  {'GTRID':<{_GTRID_WIDTH}}  {'TYPE':<13}  {'SEG:OFFSET':<12}  DETAIL"
    for path, offset, record in scan:
        yield _json_line(path, offset, record) if output == "json" else _table_line(path, offset, record)
    torn = scan.torn_tail
    if torn is not None:
        if output == "json":
            tail = {"segment": torn.path.name, "offset": torn.offset, "bytes": torn.nbytes}
            yield json.dumps({"tornTail": {**tail, "detail": torn.detail}})
        else:
            yield (
                f"torn tail: {torn.path.name} at offset {torn.offset}, {torn.nbytes} bytes ({torn.detail}); "
                "the next open will cut it"
            )
    if scan.damage is not None:
        raise scan.damage.error()


def dump_text(data_dir: Path | str, output: Output = "table") -> str:
    """Every record of the log as text; raises ``LogCorrupt`` on mid-log damage."""
    return "\n".join(iter_dump_lines(data_dir, output))


def _json_line(path: Path, offset: int, record: wal_pb2.WalRecord) -> str:
    return json.dumps({"segment": path.name, "offset": offset, **_json_fields(record)})


def _json_fields(message: Message) -> dict[str, Any]:
    """The fields that say something, by their JSON names."""
    return {
        fd.json_name: [_json_value(fd, item) for item in value] if fd.is_repeated else _json_value(fd, value)
        for fd, value in _said(message)
    }


def _json_value(fd: _FieldDescriptor, value: Any) -> Any:
    """A field's value in the operator vocabulary: enums in words, times in RFC 3339, a completed
    transaction's kept records as the records."""
    if fd.full_name == _KEPT:
        return _unkept(value, _json_fields)
    if fd.full_name in _SECONDS:
        return _wall(value)
    if fd.enum_type is not None:
        return _enum(fd.enum_type, value)
    if fd.message_type is not None:
        if fd.message_type.full_name == Timestamp.DESCRIPTOR.full_name:
            return _time(value)
        return _json_fields(value)
    return value


def _table_line(path: Path, offset: int, record: wal_pb2.WalRecord) -> str:
    when = _time(record.time) if record.HasField("time") else "-"
    body = record.WhichOneof("body")
    detail = _fields(getattr(record, body)) if body else ""
    where = f"{int(path.stem)}:{offset}"
    gtrid = record.gtrid or "-"
    return f"{when:<24}  {gtrid:<{_GTRID_WIDTH}}  {body or 'none':<13}  {where:<12}  {detail}".rstrip()


def _fields(message: Message) -> str:
    """``name=value`` for each field that says something."""
    parts = []
    for fd, value in _said(message):
        if fd.is_repeated:
            parts.append(f"{fd.name}=[" + ", ".join(_value(fd, item) for item in value) + "]")
        else:
            parts.append(f"{fd.name}={_value(fd, value)}")
    return " ".join(parts)


def _said(message: Message) -> Iterator[tuple[_FieldDescriptor, Any]]:
    """(field, value) of each field of ``message`` that says something, in field order."""
    for fd in message.DESCRIPTOR.fields:
        value = getattr(message, fd.name)
        if bool(value) if fd.is_repeated else _shown(message, fd, value):
            yield fd, value


def _shown(message: Message, fd: _FieldDescriptor, value: Any) -> bool:
    """Whether a singular field says something: a set message, a value other than zero, or a
    zero that is the answer (XA_OK of a branch result, a rollback decision, a code marked set)."""
    where = (message.DESCRIPTOR.full_name, fd.name)
    if where in _HIDDEN:
        return False
    if where in _SET_BY:
        return bool(getattr(message, _SET_BY[where]))
    if fd.message_type is not None:
        return message.HasField(fd.name)
    return bool(value) or where in _ALWAYS_SHOWN


def _value(fd: _FieldDescriptor, value: Any) -> str:
    """A field's value in the table: as in JSON, a message as ``{name=value ...}``, text quoted
    when it holds spaces, quotes or ``=``."""
    if fd.message_type is not None and fd.message_type.full_name != Timestamp.DESCRIPTOR.full_name:
        return f"{{{_fields(value)}}}"
    if fd.full_name == _KEPT:
        records = _unkept(value, _fields)
        return records if isinstance(records, str) else "[" + ", ".join(f"{{{r}}}" for r in records) + "]"
    shown = _json_value(fd, value)
    if isinstance(shown, bool):
        return "true" if shown else "false"
    if isinstance(shown, str):
        return shown if _PLAIN.fullmatch(shown) else json.dumps(shown)
    return str(shown)


def _enum(enum: _EnumDescriptor, number: int) -> str:
    """The words of ``xactl show`` and the REST API: XA codes by their xa.h names (XA_RBROLLBACK),
    statuses as the contract writes them (Preparing, Committed), phases and decisions in lower
    case (commit); a number no release defined stays a number."""
    name = _WORDS.get(enum.full_name)
    try:
        return name(number) if name is not None else enum.values_by_number[number].name
    except (ValueError, KeyError):
        return str(number)


def _unkept(kept: bytes, shown: Callable[[Message], Any]) -> list[Any] | str:
    """Each of ``kept`` records (a completed transaction's) as ``shown`` shows a message, or what
    is wrong with them: the dump goes on past a transaction it cannot read."""
    try:
        return [shown(record) for record in kept_records(kept)]
    except (DecodeError, ValueError) as exc:
        return f"unreadable kept records ({len(kept)} bytes): {exc}"


def _time(stamp: Timestamp) -> str:
    try:
        return stamp.ToDatetime(tzinfo=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (ValueError, OverflowError, OSError):  # outside what a date can say: the number itself
        return f"{stamp.seconds}.{stamp.nanos:09d}s"


def _wall(seconds: float) -> str:
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    except (ValueError, OverflowError, OSError):  # NaN, or outside what a date can say
        return f"{seconds}s"
