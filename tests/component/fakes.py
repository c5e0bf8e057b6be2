"""Participants in the test's own process, behind the interface the engine calls them through.

``FakePeers`` stands in for ``xatm.coordinator.engine.peers.Peers``: each endpoint's answers are scripted per
phase (XA codes, reasons, delays, answers held until the test lets them go), an endpoint can be
unreachable, and every call sent is kept in ``calls`` for the test to check.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from xatm.coordinator.engine.peers import PeerError, Peers
from xatm.participant.xa import Phase, XaCode, Xid

__all__ = ["Answer", "Call", "FakePeers"]

#: What ``Peers`` answers when a call's deadline passes (the gRPC status and its details).
DEADLINE_REASON = "DEADLINE_EXCEEDED: Deadline Exceeded"
UNREACHABLE_REASON = "UNAVAILABLE: failed to connect to all addresses"


@dataclass(frozen=True)
class Answer:
    """One scripted answer: ``code`` and ``reason`` after ``delay`` seconds, and not before
    ``until`` is set when given. A call whose deadline passes first answers XAER_RMFAIL with
    ``DEADLINE_REASON``, as a real call past its gRPC deadline does."""

    code: XaCode = XaCode.XA_OK
    reason: str = ""
    delay: float = 0.0
    until: asyncio.Event | None = None

    async def give(self, timeout: float) -> tuple[XaCode, str]:
        async def wait() -> None:
            await asyncio.sleep(self.delay)
            if self.until is not None:
                await self.until.wait()

        try:
            await asyncio.wait_for(wait(), timeout)
        except TimeoutError:
            return XaCode.XAER_RMFAIL, DEADLINE_REASON
        return self.code, self.reason


@dataclass(frozen=True)
class Call:
    """One call the engine sent (``timeout`` is the deadline it gave, in seconds)."""

    endpoint: str
    phase: Phase
    xid: Xid
    timeout: float
    savepoint_id: str = ""


class FakePeers(Peers):
    """Scriptable participants; anything not scripted answers XA_OK at once.

    ``answer(endpoint, phase, ...)`` gives the next answers of that endpoint to that phase, in
    order, the last one repeating. ``unreachable(endpoint)`` makes its calls fail as an
    unreachable participant's do. ``in_doubt`` sets what a recover scan of an endpoint lists.
    """

    def __init__(self) -> None:
        super().__init__()
        #: Every call sent, in the order the engine sent them.
        self.calls: list[Call] = []
        self._scripts: dict[tuple[str, Phase], list[Answer]] = {}
        self._down: set[str] = set()
        self._in_doubt: dict[str, tuple[list[Xid], str]] = {}

    def answer(self, endpoint: str, phase: Phase, *answers: XaCode | Answer) -> None:
        """Script the answers of ``endpoint`` to ``phase``: one per call, the last repeating."""
        if not answers:
            raise ValueError("answer() needs at least one answer")
        self._scripts[(endpoint, phase)] = [a if isinstance(a, Answer) else Answer(a) for a in answers]

    def unreachable(self, endpoint: str, down: bool = True) -> None:
        """Make ``endpoint`` unreachable (or reachable again with ``down=False``)."""
        if down:
            self._down.add(endpoint)
        else:
            self._down.discard(endpoint)

    def in_doubt(self, endpoint: str, rm_id: str, xids: list[Xid]) -> None:
        """What ``recover`` at ``endpoint`` answers: these prepared XIDs, held by ``rm_id``."""
        self._in_doubt[endpoint] = (list(xids), rm_id)

    def sent(self, phase: Phase | None = None, bqual: str | None = None) -> list[Call]:
        """The calls sent so far, of ``phase`` and to branch ``bqual`` when given."""
        return [
            c
            for c in self.calls
            if (phase is None or c.phase == phase) and (bqual is None or c.xid.bqual == bqual)
        ]

    async def call(
        self, endpoint: str, phase: Phase, xid: Xid, *, timeout: float, savepoint_id: str = ""
    ) -> tuple[XaCode, str]:
        self.calls.append(Call(endpoint, phase, xid, timeout, savepoint_id))
        if endpoint in self._down:  # the participant never hears of it: its script stays as it is
            answer = Answer(XaCode.XAER_RMFAIL, UNREACHABLE_REASON)
        else:
            script = self._scripts.get((endpoint, phase)) or [Answer()]
            answer = script.pop(0) if len(script) > 1 else script[0]
        # Even an immediate answer yields to the loop once, as a real call does.
        return await answer.give(timeout)

    async def recover(self, endpoint: str, format_id: int, *, timeout: float) -> tuple[list[Xid], str]:
        if endpoint in self._down:
            raise PeerError(UNREACHABLE_REASON, transport=True)
        xids, rm_id = self._in_doubt.get(endpoint, ([], ""))
        return [x for x in xids if x.format_id == format_id], rm_id

    async def close(self) -> None:
        """Nothing to close: no channel was opened."""
