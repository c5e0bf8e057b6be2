"""Branch calls carried in Batch RPCs, between the coordinator's ``Peers`` and both servicers
(threaded and grpc.aio) in this process, over a scripted resource manager.

A batch must answer every branch exactly as that branch's own call would have: the same XA
codes and reasons, failpoints and heuristics made true at the RM, and retries answered as
retries. Each branch keeps its own deadline, a slow one holds up nobody, and a participant
without ``Batch`` gets one call per branch.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from tests.fake_peer import FakePeer
from xatm.coordinator.engine.peers import Peers
from xatm.participant import failpoints
from xatm.participant.api.v1 import participant_pb2_grpc
from xatm.participant.servicer import AsyncParticipantServicer, ParticipantServicer
from xatm.participant.stores.memory import MemoryRM
from xatm.participant.xa import Phase, XaCode, XaError, Xid, new_gtrid

Answer = tuple[XaCode, str]


class ScriptedRM(MemoryRM):
    """MemoryRM whose answers depend on the bqual's first word: ``veto`` prepares XA_RBINTEGRITY,
    ``rdonly`` prepares XA_RDONLY, ``boom`` raises from any verb (a broken RM), ``slow`` waits
    in prepare until ``release(bqual)``."""

    blocking = True  # ``slow`` waits: its neighbours must not wait for it

    def __init__(self) -> None:
        super().__init__("scripted")
        self.held: dict[str, threading.Event] = {}
        #: Prepares that reached the RM, by bqual.
        self.prepares: list[str] = []

    def release(self, bqual: str) -> None:
        self.held.setdefault(bqual, threading.Event()).set()

    def prepare(self, xid: Xid) -> XaCode:
        self.prepares.append(xid.bqual)
        kind = xid.bqual.split("-")[0]
        if kind == "veto":
            raise XaError(XaCode.XA_RBINTEGRITY, "balance would be negative")
        if kind == "boom":
            raise RuntimeError("disk on fire")
        if kind == "rdonly":
            return XaCode.XA_RDONLY
        if kind == "slow":
            assert self.held.setdefault(xid.bqual, threading.Event()).wait(30)
        return super().prepare(xid)

    def rollback(self, xid: Xid) -> None:
        if xid.bqual.startswith("boom"):
            raise RuntimeError("disk on fire")
        super().rollback(xid)


class BatchOnly(ParticipantServicer):
    """A threaded participant built before ``BatchStream``: it answers it UNIMPLEMENTED."""

    BatchStream = participant_pb2_grpc.ParticipantServicer.BatchStream


class AsyncBatchOnly(AsyncParticipantServicer):
    """``BatchOnly`` on grpc.aio."""

    async def BatchStream(self, requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "Method not implemented!")
        yield  # an async generator, as a streamed method's behaviour is


@contextlib.asynccontextmanager
async def serving(
    rm: MemoryRM, kind: str, transport: str = "stream", caller_token: str | None = None
) -> AsyncIterator[str]:
    """The Participant service over ``rm`` on a loopback port; its host:port. ``transport``
    "batch": a participant that serves ``Batch`` but not ``BatchStream``. ``caller_token``: the
    token every call must carry."""
    streams = transport == "stream"
    if kind == "aio":
        aio_server = grpc.aio.server()
        aio_kind = AsyncParticipantServicer if streams else AsyncBatchOnly
        servicer = aio_kind(rm, caller_token=caller_token)
        participant_pb2_grpc.add_ParticipantServicer_to_server(servicer, aio_server)
        port = aio_server.add_insecure_port("127.0.0.1:0")
        await aio_server.start()
        try:
            yield f"127.0.0.1:{port}"
        finally:
            await aio_server.stop(None)
    else:
        server = grpc.server(ThreadPoolExecutor(max_workers=8))
        threaded_kind = ParticipantServicer if streams else BatchOnly
        threaded = threaded_kind(rm, caller_token=caller_token)
        participant_pb2_grpc.add_ParticipantServicer_to_server(threaded, server)
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        try:
            yield f"127.0.0.1:{port}"
        finally:
            server.stop(None)


def sent(method: str) -> float:
    return REGISTRY.get_sample_value("xatm_participant_rpcs_sent_total", {"method": method}) or 0.0


def carried() -> float:
    """Branch calls carried by all Batch RPCs so far."""
    return REGISTRY.get_sample_value("xatm_participant_batch_branches_sum") or 0.0


@pytest.fixture
def unarmed() -> Iterator[None]:
    yield
    failpoints.disarm()


async def _round(peers: Peers, endpoint: str, calls: list[tuple[Phase, Xid]]) -> list[Answer]:
    """The calls at once (started in one loop pass), their answers in order."""
    return list(await asyncio.gather(*(peers.call(endpoint, p, x, timeout=10) for p, x in calls)))


async def _scenario(
    kind: str, max_batch: int, transport: str = "stream"
) -> tuple[list[list[Answer]], list[Xid], dict[str, float]]:
    """Rounds of mixed calls to one participant: the answers of each round, what the RM still
    holds prepared at the end, and how many RPCs and batched branches it took."""
    g = new_gtrid("t1")
    ok, ok2, ok3, ok4 = (Xid(g, f"ok-{n}") for n in range(1, 5))
    rdonly, veto, boom = (Xid(g, b) for b in ("rdonly-1", "veto-1", "boom-1"))
    rounds = [
        # Mixed outcomes in one batch.
        [
            (Phase.PREPARE, ok),
            (Phase.PREPARE, ok2),
            (Phase.PREPARE, ok3),
            (Phase.PREPARE, ok4),
            (Phase.PREPARE, rdonly),
            (Phase.PREPARE, veto),
            (Phase.PREPARE, Xid("not a gtrid", "b")),  # refused as a whole call would be
            (Phase.COMMIT, Xid(g, "never-prepared")),
            (Phase.ROLLBACK, boom),
            (Phase.ONE_PHASE_COMMIT, Xid(g, "one-1")),
        ],
        # A heuristic rollback injected at commit is made true at the RM.
        [(Phase.COMMIT, ok), (Phase.COMMIT, ok3)],
        # Commits and their retries (the first answers lost): the retries find nothing to commit.
        [(Phase.COMMIT, ok2), (Phase.COMMIT, ok4)],
        [(Phase.COMMIT, ok2), (Phase.COMMIT, ok4)],
    ]
    rm = ScriptedRM()
    before = {
        "BatchStream": sent("BatchStream"),
        "Batch": sent("Batch"),
        "single": sent("Prepare") + sent("Commit") + sent("Rollback"),
        "carried": carried(),
    }
    answers = []
    async with serving(rm, kind, transport) as endpoint:
        peers = Peers(max_batch=max_batch)
        try:
            for number, calls in enumerate(rounds):
                if number == 1:
                    failpoints.arm("participant.commit=return(XA_HEURRB)")
                answers.append(await _round(peers, endpoint, calls))
                failpoints.disarm()
        finally:
            await peers.close()
    counts = {
        "BatchStream": sent("BatchStream") - before["BatchStream"],
        "Batch": sent("Batch") - before["Batch"],
        "single": sent("Prepare") + sent("Commit") + sent("Rollback") - before["single"],
        "carried": carried() - before["carried"],
    }
    return answers, sorted(rm.recover(), key=str), counts


@pytest.mark.parametrize("transport", ["stream", "batch"])
@pytest.mark.parametrize("kind", ["threaded", "aio"])
def test_a_batch_answers_each_branch_as_its_own_call_would(kind: str, transport: str, unarmed: None) -> None:
    batched, held_batched, counts = asyncio.run(_scenario(kind, max_batch=64, transport=transport))
    one_by_one, held_one_by_one, singles = asyncio.run(_scenario(kind, max_batch=1))

    codes = [[code for code, _ in answers] for answers in batched]
    assert codes == [
        [
            XaCode.XA_OK,
            XaCode.XA_OK,
            XaCode.XA_OK,
            XaCode.XA_OK,
            XaCode.XA_RDONLY,
            XaCode.XA_RBINTEGRITY,
            XaCode.XAER_RMFAIL,
            XaCode.XAER_NOTA,
            XaCode.XAER_RMERR,
            XaCode.XA_OK,
        ],
        [XaCode.XA_HEURRB] * 2,
        [XaCode.XA_OK] * 2,
        [XaCode.XAER_NOTA] * 2,
    ]
    assert batched[0][6][1].startswith("INVALID_ARGUMENT: malformed gtrid 'not a gtrid'")
    assert batched[0][5][1] == "balance would be negative"
    # Reasons that name an xid differ between the two runs only by the gtrid.
    assert [[c for c, _ in a] for a in one_by_one] == codes
    assert [a[6][1] for a in (batched[0], one_by_one[0])] == [batched[0][6][1]] * 2
    assert held_batched == held_one_by_one == []  # the heuristic rollback left nothing prepared
    # Four rounds, four messages: every branch went in its round's batch (on the stream, or by
    # Batch once the participant refused the stream, which it did before serving anything).
    if transport == "stream":
        assert counts == {"BatchStream": 4, "Batch": 0, "single": 0, "carried": 16}
    else:
        assert (counts["Batch"], counts["single"]) == (4, 0)
    assert singles["BatchStream"] == singles["Batch"] == 0 and singles["single"] == 16


@pytest.mark.parametrize("transport", ["stream", "batch"])
@pytest.mark.parametrize("kind", ["threaded", "aio"])
def test_a_slow_branch_delays_no_neighbour_and_its_own_deadline_still_holds(
    kind: str, transport: str
) -> None:
    method = "BatchStream" if transport == "stream" else "Batch"

    async def run() -> None:
        g = new_gtrid("t1")
        rm = ScriptedRM()
        before = (sent(method), carried())
        async with serving(rm, kind, transport) as endpoint:
            peers = Peers()
            try:

                def prepare(bqual: str, timeout: float) -> asyncio.Task[Answer]:
                    return asyncio.create_task(
                        peers.call(endpoint, Phase.PREPARE, Xid(g, bqual), timeout=timeout)
                    )

                # Started in one loop pass: one batch carries all three.
                late = prepare("slow-late", 30)  # held by the RM, a long deadline
                short = prepare("slow-short", 0.3)  # held by the RM past its own deadline
                fast = prepare("fast-1", 30)
                assert await fast == (XaCode.XA_OK, "")
                assert not late.done()  # still held: the fast answer did not wait for it
                assert await short == (XaCode.XAER_RMFAIL, "DEADLINE_EXCEEDED: Deadline Exceeded")
                assert not late.done()
                rm.release("slow-late")
                assert await late == (XaCode.XA_OK, "")
                rm.release("slow-short")
            finally:
                await peers.close()
        assert sent(method) - before[0] == 1
        if transport == "stream":
            assert carried() - before[1] == 3
        assert sorted(rm.prepares) == ["fast-1", "slow-late", "slow-short"]

    asyncio.run(run())


def test_a_participant_without_batch_gets_one_call_per_branch_from_then_on() -> None:
    async def run() -> None:
        fake = FakePeer()  # serves Prepare, Commit, ... but not Batch, like an older stub
        peers = Peers()
        g = new_gtrid("t1")
        try:
            first = [(Phase.PREPARE, Xid(g, f"b{n}")) for n in range(3)]
            assert await _round(peers, fake.endpoint, first) == [(XaCode.XA_OK, "")] * 3
            second = [(Phase.COMMIT, Xid(g, f"b{n}")) for n in range(3)]
            assert await _round(peers, fake.endpoint, second) == [(XaCode.XA_OK, "")] * 3
        finally:
            await peers.close()
            fake.stop()
        assert fake.refused == ["BatchStream", "Batch"]  # asked once each, remembered for the endpoint
        assert fake.methods() == ["Prepare"] * 3 + ["Commit"] * 3

    asyncio.run(run())
