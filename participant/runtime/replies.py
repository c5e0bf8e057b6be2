"""Checking what a peer answered before reading it.

A peer (coordinator or participant) may answer something that is not a valid reply: grpc.aio
hands back None when the bytes do not parse as the reply message, and a message that parses
may still carry enum numbers the protocol does not define (proto3 keeps them). Reading either
would fail later, far from the call, as an AttributeError or a ValueError; checking at the call
turns it into one clear error that names who answered what.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import message_factory
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import Message

from xatm.participant.errors import InternalError

__all__ = ["MalformedReply", "checked_reply"]


class MalformedReply(InternalError):
    """A peer answered something that is not a valid reply (status INTERNAL)."""


def checked_reply(reply: Any, service: ServiceDescriptor, method: str, peer: str) -> Any:
    """``reply`` if it is a valid answer to ``service``'s ``method``, else MalformedReply.

    Valid: an instance of the method's reply message whose enum fields, nested ones too, hold
    numbers the protocol defines. ``peer`` names who answered ("participant", "coordinator
    HOST:PORT"); the error's message reads "<peer> answered <method> with ...".
    """
    expected = message_factory.GetMessageClass(service.methods_by_name[method].output_type)
    answer = f"{peer} answered {method}"
    if not isinstance(reply, expected):
        raise MalformedReply(f"{answer} with bytes that are not a valid {expected.__name__}")
    _check_enums(reply, answer)
    return reply


def _check_enums(message: Message, answer: str) -> None:
    for field, value in message.ListFields():
        values = value if field.is_repeated else [value]
        if field.enum_type is not None:
            for number in values:
                if number not in field.enum_type.values_by_number:
                    raise MalformedReply(
                        f"{answer} with unknown {field.enum_type.name} {number} in {field.name}"
                    )
        elif field.message_type is not None:
            for nested in values:
                _check_enums(nested, answer)
