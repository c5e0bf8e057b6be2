"""Named fault-injection points at every protocol boundary (docs/contract.md).

Armed with ``XATM_FAILPOINTS="name=action;name=action"`` where an action is
``crash``, ``sleep(MS)``, ``return(XA_CODE)`` or ``error(GRPC_CODE)``, optionally
prefixed ``N*`` to fire only N times. When nothing is armed a hit is one truth test
of an empty dict, so production code pays nothing measurable.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import threading
import time
from dataclasses import dataclass

from xatm.participant.errors import InvalidArgumentError, Status, error_for
from xatm.participant.xa import XaCode

__all__ = ["CATALOGUE", "FailpointError", "ahit", "arm", "armed", "disarm", "hit"]

CATALOGUE: dict[str, str] = {
    "coordinator.before_prepare": "coordinator, before the prepare calls are sent",
    "coordinator.after_prepare": "coordinator, after every prepare answered, before the decision",
    "coordinator.before_decision": "coordinator, before the commit decision is written",
    "coordinator.after_decision": "coordinator, after the commit decision is durable, before phase two",
    "coordinator.between_phase_two": "coordinator, between two phase-two calls",
    "coordinator.before_rollback": "coordinator, before the rollback calls are sent",
    "participant.prepare": "participant, on receiving prepare, before the RM prepares",
    "participant.after_prepare": "participant, after the RM prepared, before answering",
    "participant.commit": "participant, on receiving commit, before the RM commits",
    "participant.after_commit": "participant, after the RM committed, before answering (a lost reply)",
    "participant.rollback": "participant, on receiving rollback, before the RM rolls back",
    "wal.before_fsync": "write-ahead log, before each fsync",
}


class FailpointError(InvalidArgumentError, ValueError):
    """A malformed XATM_FAILPOINTS specification."""


@dataclass
class _Action:
    kind: str
    arg: str
    remaining: int | None


_SPEC = re.compile(r"^(?:(\d+)\*)?(crash|sleep|return|error)(?:\((\w+)\))?$")
_armed: dict[str, _Action] = {}
_lock = threading.Lock()


def _parse(spec: str) -> dict[str, _Action]:
    actions: dict[str, _Action] = {}
    for item in filter(None, (part.strip() for part in spec.split(";"))):
        name, sep, action = item.partition("=")
        name, action = name.strip(), action.strip()
        if not sep or name not in CATALOGUE:
            raise FailpointError(f"unknown failpoint {name!r}; see `xatm --list-failpoints`")
        match = _SPEC.match(action)
        if not match:
            raise FailpointError(
                f"bad action {action!r} for {name}: use crash, sleep(MS), return(XA_CODE), error(CODE)"
            )
        count, kind, arg = match.group(1), match.group(2), match.group(3) or ""
        if count is not None and int(count) < 1:
            raise FailpointError(f"bad count in {action!r} for {name}: N* needs N >= 1")
        if kind == "sleep" and not arg.isdigit():
            raise FailpointError(f"sleep needs milliseconds, e.g. sleep(100): {action!r}")
        if kind == "return" and arg not in XaCode.__members__:
            raise FailpointError(f"return needs an XA code name, e.g. return(XA_RBROLLBACK): {action!r}")
        if kind == "error" and arg not in Status.__members__:
            raise FailpointError(f"error needs a gRPC status name, e.g. error(UNAVAILABLE): {action!r}")
        actions[name] = _Action(kind, arg, int(count) if count else None)
    return actions


def arm(spec: str) -> None:
    """Replace the armed set (used at start-up from the environment, and by in-process tests)."""
    parsed = _parse(spec)
    with _lock:
        _armed.clear()
        _armed.update(parsed)


def disarm() -> None:
    with _lock:
        _armed.clear()


def armed(prefix: str = "") -> bool:
    """Whether a failpoint whose name starts with ``prefix`` (e.g. ``"participant."``) is armed."""
    if not _armed:
        return False
    with _lock:
        return any(name.startswith(prefix) for name in _armed)


def _take(name: str) -> _Action | None:
    with _lock:
        action = _armed.get(name)
        if action is None:
            return None
        if action.remaining is not None:
            action.remaining -= 1
            if action.remaining <= 0:
                del _armed[name]
        return action


def _fire(name: str, action: _Action) -> XaCode | None:
    if action.kind == "crash":
        sys.stderr.write(f"failpoint {name}: crash\n")
        sys.stderr.flush()
        os._exit(137)
    if action.kind == "return":
        return XaCode[action.arg]
    if action.kind == "error":
        raise error_for(Status[action.arg], f"failpoint {name} injected {action.arg}")
    return None


def hit(name: str) -> XaCode | None:
    """Pass a failpoint from synchronous code; returns an XA code when armed with return()."""
    action = _armed and _take(name)
    if not action:
        return None
    if action.kind == "sleep":
        time.sleep(int(action.arg) / 1000)
    return _fire(name, action)


async def ahit(name: str) -> XaCode | None:
    """Pass a failpoint from asyncio code without blocking the loop on sleep()."""
    action = _armed and _take(name)
    if not action:
        return None
    if action.kind == "sleep":
        await asyncio.sleep(int(action.arg) / 1000)
    return _fire(name, action)


if os.environ.get("XATM_FAILPOINTS"):
    try:
        arm(os.environ["XATM_FAILPOINTS"])
    except FailpointError as err:
        # Read when the process imports xatm, before any command line: a bad setting must still
        # be one line and exit 2, as for every other setting, not a traceback from an import.
        sys.stderr.write(f"XATM_FAILPOINTS: {err}\n")
        raise SystemExit(2) from None
