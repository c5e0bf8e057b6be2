"""Bounds on a JSON request body, checked on its bytes before any parser sees it.

Python's JSON parser recurses once per level of nesting, so a body of 100,000 brackets ends in
RecursionError deep inside the framework. The admin API's bodies are two levels deep at most:
``MAX_DEPTH`` leaves room for that and refuses the rest while the body is still just bytes.
"""

from __future__ import annotations

import re
from itertools import accumulate

from xatm.participant.errors import InvalidArgumentError

__all__ = ["MAX_DEPTH", "check_json_body", "json_depth"]

#: Deepest nesting of arrays and objects accepted in a request body.
MAX_DEPTH = 16
# A JSON string, escapes included: brackets inside one do not nest anything.
_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
# Keep only brackets: an opening one becomes 2 and a closing one 0, so "value - 1" is the step.
_BRACKETS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in ``raw`` (0 for a scalar); linear time, no
    recursion. Malformed text is measured as far as it goes: its parser refuses it later."""
    steps = _STRING.sub(b"", raw).translate(_BRACKETS, _NOT_BRACKETS)
    return max(accumulate(step - 1 for step in steps), default=0)


def check_json_body(raw: bytes) -> None:
    """Raises InvalidArgumentError when ``raw`` nests deeper than ``MAX_DEPTH`` or is not UTF-8."""
    depth = json_depth(raw)
    if depth > MAX_DEPTH:
        raise InvalidArgumentError(f"malformed body: nested {depth} levels deep; at most {MAX_DEPTH}")
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise InvalidArgumentError(f"malformed body: not UTF-8 (byte {err.start})") from None
