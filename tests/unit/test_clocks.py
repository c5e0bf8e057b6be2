"""Stepping a process's wall clock changes what it displays, never when anything times out.

The pure pieces (the recovery scanner's safety interval, the participant's deadline
bookkeeping) are checked here with a stepped clock injected in place of the ``time`` module they
read. Real processes on a libfaketime clock are in tests/system/test_clocks.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.faketime import STEP
from tests.unit.test_recovery import _FakePeers
from tests.unit.test_stub import MemoryRM
from xatm.coordinator.engine import recovery
from xatm.coordinator.engine.core import Engine
from xatm.coordinator.settings import Settings
from xatm.coordinator.txlog.file import FileWal
from xatm.participant import ParticipantStub, stub
from xatm.participant.client import context
from xatm.participant.client.context import TxContext, use, with_deadline
from xatm.participant.xa import Phase, Xid

# ------------------------------------------------------------------ injected clocks


class _SteppedTime:
    """Stands in for the ``time`` module of the code under test.

    ``offset`` steps the wall clock only; ``elapsed`` lets time pass, on both clocks.
    """

    def __init__(self) -> None:
        self.offset = 0.0
        self.elapsed = 0.0

    def time(self) -> float:
        return time.time() + self.offset + self.elapsed

    def monotonic(self) -> float:
        return time.monotonic() + self.elapsed


@pytest.fixture
def stepped(monkeypatch: pytest.MonkeyPatch) -> Callable[[object], _SteppedTime]:
    """Give a module a stepped ``time``; returns the clock to step."""

    def patch(module: object) -> _SteppedTime:
        clock = _SteppedTime()
        monkeypatch.setattr(module, "time", clock)
        return clock

    return patch


@pytest.mark.parametrize("step", [STEP, -STEP])
def test_a_step_neither_hastens_nor_holds_off_an_orphan_rollback(
    tmp_path: Path, stepped: Callable[[object], _SteppedTime], step: int
) -> None:
    clock = stepped(recovery)

    async def scenario() -> list[tuple[Phase, Xid]]:
        peers = _FakePeers([Xid("n1.00aa", "b1")])
        # The engine's own scanner stays asleep; the test drives one with a 5 s safety interval.
        settings = Settings(data_dir=tmp_path, node_id="n1", recovery_interval=3600)
        engine = Engine(settings, FileWal(tmp_path), "n1", peers=peers)  # type: ignore[arg-type]
        scanner = recovery.RecoveryScanner(engine, peers, interval=3600, safety=5, call_timeout=1)  # type: ignore[arg-type]
        await engine.start()
        await engine.register_participant("rm1", "fake:1")  # what the scan asks
        try:
            assert (await scanner.scan_once())["candidates"] == 1
            clock.offset = step
            # Right after a step, before the safety interval: a forward step must not make it due.
            assert (await scanner.scan_once())["orphan_rollback"] == 0
            clock.elapsed = 6
            # The interval has passed: a backward step must not hold the rollback off.
            assert (await scanner.scan_once())["orphan_rollback"] == 1
            return peers.calls
        finally:
            await engine.stop()

    assert asyncio.run(scenario()) == [(Phase.ROLLBACK, Xid("n1.00aa", "b1"))]


def test_a_participant_stepped_forward_keeps_its_deadlines(stepped: Callable[[object], _SteppedTime]) -> None:
    """A live branch is neither out of time nor stale after its process's wall clock jumps ahead."""
    clocks = [stepped(context), stepped(stub)]
    rm = MemoryRM()
    participant = ParticipantStub(rm, coordinator="127.0.0.1:1", advertise="127.0.0.1:2", call_timeout=0.01)
    participant._enlist = lambda tx, xid: None  # type: ignore[method-assign]
    asked: list[Xid] = []
    participant._resolve = lambda xid: asked.append(xid) or "rollback"  # type: ignore[method-assign]
    try:
        with use(with_deadline(TxContext("g.live", "127.0.0.1:1"), 30.0)) as tx, participant.branch():
            for clock in clocks:
                clock.offset = STEP
            remaining = tx.remaining() if tx is not None else None
            assert remaining is not None and remaining > STEP / 2  # about 30 s, not 0
            resolved = participant.resolve_in_doubt()
    finally:
        participant.close()
    assert resolved["rollback"] == 0 and asked == []  # not stale: the coordinator was not even asked
    assert "rollback" not in rm.verbs() and participant.active_branches() == 1
