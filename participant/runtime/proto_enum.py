"""Numbers for protobuf enum fields, typed as the type checker expects them.

The Python enums of ``xatm.participant.xa`` carry the protobuf enums' numbers, and protobuf takes
any int for an enum field. protoc's generated ``.pyi`` stubs are stricter than that runtime:
they type an enum field (constructor argument and attribute) as the protobuf enum class alone,
so a plain int or an ``IntEnum`` member does not type-check there. ``proto_enum`` is the one place
that says "this number belongs to that protobuf enum".
"""

from __future__ import annotations

from typing import TypeVar, cast

__all__ = ["proto_enum"]

_Enum = TypeVar("_Enum", bound=int)


def proto_enum(value: int, enum: type[_Enum]) -> _Enum:
    """``value`` as a number of the protobuf enum ``enum`` (for example ``xa_pb2.XaCode``).

    Returns the plain int (an ``IntEnum`` member becomes its number); nothing is checked,
    exactly as protobuf itself keeps numbers it does not know (proto3 open enums). ``enum`` is
    read by the type checker only: it names the result's type.
    """
    return cast(_Enum, int(value))
