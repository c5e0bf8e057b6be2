"""Reading the log with no coordinator running: ``read_records`` and ``xactl wal dump``."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from datetime import UTC
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from google.protobuf.descriptor import EnumDescriptor, FieldDescriptor
from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp

from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.file.scan import LogScan
from xatm.coordinator.txlog.file.segment import list_segments

if TYPE_CHECKING:
    from google._upb import _message as _upb

    # The stubs type a message's descriptors as either backend's (pure Python or upb).
    _FieldDescriptor = FieldDescriptor | _upb.FieldDescriptor
    _EnumDescriptor = EnumDescriptor | _upb.EnumDescriptor

__all__ = ["dump_text", "find_wal_dir", "iter_dump_lines", "read_records"]

log = logging.getLogger(__name__)

Output = Literal["table", "json"]

# A zero value is normally "not set" and hidden, except where it is the answer: XA_OK, a rollback decision.
_ALWAYS_SHOWN = {
    (wal_pb2.BranchResultRecord.DESCRIPTOR.full_name, "code"),
    (wal_pb2.DecisionRecord.DESCRIPTOR.full_name, "commit"),
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

    ``table``: a header, then per record time, gtrid, type, segment:offset and the body's fields
    with enums by name. ``json``: one object per record (protobuf JSON mapping, enums by name)
    plus ``segment`` and ``offset``. A torn tail ends either with a line describing it (an
    object with a single ``tornTail`` key in JSON); mid-log damage raises ``LogCorrupt``.
    """
    if output not in ("table", "json"):
        raise ValueError(f"output must be 'table' or 'json', not {output!r}")
    scan = LogScan(find_wal_dir(data_dir))
    if output == "table":
        yield f"{'TIME':<24}  {'GTRID':<36}  {'TYPE':<13}  {'SEG:OFFSET':<12}  DETAIL"
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
    fields = MessageToDict(record, always_print_fields_with_no_presence=True)
    return json.dumps({"segment": path.name, "offset": offset, **fields})


def _table_line(path: Path, offset: int, record: wal_pb2.WalRecord) -> str:
    when = _time(record.time) if record.HasField("time") else "-"
    body = record.WhichOneof("body")
    detail = _fields(getattr(record, body)) if body else ""
    where = f"{int(path.stem)}:{offset}"
    return f"{when:<24}  {record.gtrid or '-':<36}  {body or 'none':<13}  {where:<12}  {detail}".rstrip()


def _fields(message: Message) -> str:
    """``name=value`` for each field that says something."""
    descriptor = message.DESCRIPTOR
    parts = []
    for fd in descriptor.fields:
        value = getattr(message, fd.name)
        if fd.is_repeated:
            shown = bool(value)
            text = "[" + ", ".join(_value(fd, item) for item in value) + "]"
        else:
            if fd.message_type is not None:
                shown = message.HasField(fd.name)
            else:
                shown = bool(value) or (descriptor.full_name, fd.name) in _ALWAYS_SHOWN
            text = _value(fd, value)
        if shown:
            parts.append(f"{fd.name}={text}")
    return " ".join(parts)


def _value(fd: _FieldDescriptor, value: Any) -> str:
    if fd.enum_type is not None:
        return _enum(fd.enum_type, value)
    if fd.message_type is not None:
        if fd.message_type.full_name == Timestamp.DESCRIPTOR.full_name:
            return _time(value)
        return f"{{{_fields(value)}}}"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value if _PLAIN.fullmatch(value) else json.dumps(value)
    return str(value)


def _enum(enum: _EnumDescriptor, number: int) -> str:
    """XA codes keep their xa.h names (XA_RBROLLBACK); prefixed enums read like the contract (Committed)."""
    value = enum.values_by_number.get(number)
    if value is None:
        return str(number)
    prefix = re.sub(r"(?<!^)(?=[A-Z])", "_", enum.name).upper() + "_"
    if not value.name.startswith(prefix):
        return value.name
    return "".join(part.capitalize() for part in value.name[len(prefix) :].split("_"))


def _time(stamp: Timestamp) -> str:
    return stamp.ToDatetime(tzinfo=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
