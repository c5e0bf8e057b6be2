"""The component tier: the coordinator engine in this process, on a memory log, with fake participants.

Tests here are ``async def``; the hook below runs each on its own event loop and stops the rig's
engine afterwards, whatever happened. Settings are short so retries and timeouts play out in
fractions of a second.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.component.fakes import FakePeers
from xatm.coordinator.engine.core import Engine, Result
from xatm.coordinator.protocol import Transaction
from xatm.coordinator.settings import Settings
from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.memory import MemoryLog
from xatm.participant.xa import TxStatus as S

NODE = "n1"
#: A component test that runs longer than this is stuck, not slow.
TEST_PATIENCE = 30.0


def fast_settings(**changes: Any) -> Settings:
    """Short timings (seconds); background loops (checkpoints, recovery scans) stay asleep."""
    base = {
        "call_timeout": 0.5,
        "commit_wait": 1.0,
        "retry_initial": 0.01,
        "retry_max": 0.05,
        "default_timeout": 10.0,
        "checkpoint_interval": 3600.0,
        "recovery_interval": 3600.0,
    }
    return Settings(**{**base, **changes})


def with_settings(**changes: Any) -> pytest.MarkDecorator:
    """Give one test's rig ``fast_settings(**changes)``."""
    return pytest.mark.parametrize("settings", [fast_settings(**changes)], ids=["settings"])


def endpoint(bqual: str) -> str:
    """Where branch ``bqual``'s participant is served in these tests."""
    return f"{bqual}.test:1"


def rm_of(bqual: str) -> str:
    return f"rm-{bqual}"


class Rig:
    """An ``Engine`` on a ``MemoryLog`` with ``FakePeers``, wired as the coordinator process wires it
    (a stopped log fences the engine)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.peers = FakePeers()
        self.log = MemoryLog()
        self.engine: Engine | None = None
        self._watcher: asyncio.Task[None] | None = None

    async def start(self) -> Engine:
        """Start an engine on the current log (replaying its store)."""
        engine = Engine(self.settings, self.log, NODE, peers=self.peers)
        await engine.start()
        self.engine = engine
        self._watcher = asyncio.get_running_loop().create_task(self._fence_when_stopped(engine))
        return engine

    async def _fence_when_stopped(self, engine: Engine) -> None:
        engine.fence(await engine.log.watch(0.1))

    async def restart(self, *, crash: bool = True) -> Engine:
        """A new engine on a new log over the same store: after kill -9 (``crash``: only durable
        records survive) or after a clean stop. Calls sent from now on are in ``peers.calls``."""
        if crash:
            self.log.crash()
        await self.stop()
        self.log = MemoryLog(self.log.store)
        self.peers.calls.clear()
        return await self.start()

    async def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.cancel()
            self._watcher = None
        if self.engine is not None:
            engine, self.engine = self.engine, None
            await engine.stop()

    async def tx(self, *bquals: str, timeout_ms: int = 0) -> Transaction:
        """A begun transaction with one branch per bqual (rm ``rm-<bqual>`` at ``endpoint(bqual)``)."""
        assert self.engine is not None
        tx = await self.engine.begin(timeout_ms)
        for bqual in bquals:
            await self.engine.enlist(tx.gtrid, bqual, rm_of(bqual), endpoint(bqual))
        return tx

    async def deciding(self) -> tuple[Transaction, asyncio.Future[Result]]:
        """A commit of branches a and b whose yes votes are in and whose decision is written but
        held back from durability (``log.hold``); returns the transaction and the pending commit."""
        assert self.engine is not None
        tx = await self.tx("a", "b")
        self.log.hold()
        commit = asyncio.ensure_future(self.engine.commit(tx.gtrid))
        await until("both branches prepared", lambda: tx.status == S.PREPARED)
        return tx, commit

    def records(self, gtrid: str, kind: str | None = None) -> list[wal_pb2.WalRecord]:
        """Records appended for ``gtrid`` since the current log opened, of body ``kind`` if given."""
        return [
            r
            for r in self.log.appended
            if r.gtrid == gtrid and (kind is None or r.WhichOneof("body") == kind)
        ]

    def answers(self, gtrid: str, bqual: str) -> list[wal_pb2.BranchResultRecord]:
        """The answers logged for branch ``bqual`` of ``gtrid``, in order: its branch results, and
        its prepare vote where a commit decision carries it."""
        results = []
        for record in self.records(gtrid):
            kind = record.WhichOneof("body")
            if kind == "branch_result":
                results.append(record.branch_result)
            elif kind == "decision":
                results.append(vote(record.decision.transaction, bqual))
        return [result for result in results if result.bqual == bqual]

    def ended(self, gtrid: str) -> list[S]:
        """The final statuses of the end records logged for ``gtrid`` (one once it ended)."""
        return [S(r.end.status) for r in self.records(gtrid, "end")]

    def kinds(self, gtrid: str) -> list[str]:
        """The body kinds of ``records(gtrid)``, in order."""
        return [str(r.WhichOneof("body")) for r in self.records(gtrid)]

    def durable(self, gtrid: str, kind: str) -> list[wal_pb2.WalRecord]:
        """Records of ``gtrid`` and body ``kind`` that a crash now would keep."""
        return [r for r in self.log.store.records if r.gtrid == gtrid and r.WhichOneof("body") == kind]


def vote(snapshot: wal_pb2.TransactionSnapshot, bqual: str) -> wal_pb2.BranchResultRecord:
    """The last answer of branch ``bqual`` that ``snapshot`` (a decision's, a snapshot record's)
    carries, as the branch result that would have logged it."""
    (branch,) = [b for b in snapshot.branches if b.bqual == bqual]
    assert branch.has_last_code, f"no answer of {bqual} in the snapshot"
    return wal_pb2.BranchResultRecord(
        bqual=bqual,
        phase=branch.last_phase,
        code=branch.last_code,
        reason=branch.last_reason,
        status=branch.status,
    )


async def until(what: str, probe: Callable[[], object], timeout: float = 5.0) -> None:
    """Wait (polling on the loop's monotonic clock) until ``probe()`` is true; AssertionError naming
    ``what`` after ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not probe():
        if loop.time() > deadline:
            raise AssertionError(f"never: {what}")
        await asyncio.sleep(0.005)


@pytest.fixture
def settings() -> Settings:
    """The rig's settings; a test or module overrides this fixture to change them."""
    return fast_settings()


@pytest.fixture
def rig(settings: Settings) -> Iterator[Rig]:
    yield Rig(settings)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run an ``async def`` test on a fresh event loop, then stop its rig's engine."""
    if not inspect.iscoroutinefunction(pyfuncitem.obj):
        return None
    kwargs = {name: pyfuncitem.funcargs[name] for name in inspect.signature(pyfuncitem.obj).parameters}

    async def run() -> None:
        rig = kwargs.get("rig")
        try:
            await asyncio.wait_for(pyfuncitem.obj(**kwargs), TEST_PATIENCE)
        finally:
            if isinstance(rig, Rig):
                await rig.stop()

    asyncio.run(run())
    return True
