"""Branch calls over the coordinator's long-lived ``BatchStream`` to a participant.

Against a scripted participant whose stream answers what the test hands it: results are matched
to their branches by item id whatever their order and grouping, an id nobody waits for is
dropped (and so is the answer to a caller that stopped waiting), a branch past its own deadline
fails alone and its late answer reaches no other branch, and a stream that breaks fails what it
carries and is replaced on the next call. Against the real servicers (threaded and grpc.aio):
branches on one stream are served concurrently, a slow one in an earlier message holding up
none sent after it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any, cast

import grpc
import pytest
from prometheus_client import REGISTRY

from tests.unit.test_batch_calls import ScriptedRM, serving
from xatm.coordinator.engine.peers import Peers
from xatm.coordinator.engine.streams import IDLE_CLOSE, Streams
from xatm.participant.api.v1 import participant_pb2
from xatm.participant.xa import Phase, XaCode, Xid, new_gtrid

Answer = tuple[XaCode, str]


class ScriptedStream:
    """A participant serving only ``BatchStream``: every request message it receives goes to
    ``requests``; it sends what the test ``give``s, or ends the stream with ``abort``."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[participant_pb2.BatchRequest] = asyncio.Queue()
        #: Streams the coordinator opened, and those that ended (the coordinator closed them).
        self.opened = 0
        self.ended = 0
        self._outbox: asyncio.Queue[participant_pb2.BatchReply | grpc.StatusCode] = asyncio.Queue()

    def give(self, *results: tuple[int, XaCode, str]) -> None:
        reply = participant_pb2.BatchReply()
        for ident, code, reason in results:
            reply.results.add(id=ident, code=code, reason=reason)
        self._outbox.put_nowait(reply)

    def abort(self, code: grpc.StatusCode) -> None:
        self._outbox.put_nowait(code)

    async def _serve(
        self,
        requests: AsyncIterator[participant_pb2.BatchRequest],
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> AsyncIterator[participant_pb2.BatchReply]:
        self.opened += 1
        await context.send_initial_metadata(())  # as the servicers do: the coordinator waits for it

        async def take() -> None:
            try:
                async for request in requests:
                    self.requests.put_nowait(request)
            finally:
                self.ended += 1

        reader = asyncio.ensure_future(take())
        try:
            while True:
                out = await self._outbox.get()
                if isinstance(out, grpc.StatusCode):
                    await context.abort(out, "scripted")
                yield out
        finally:
            reader.cancel()

    def handler(self) -> grpc.GenericRpcHandler:
        method = grpc.stream_stream_rpc_method_handler(
            self._serve,
            request_deserializer=participant_pb2.BatchRequest.FromString,
            response_serializer=participant_pb2.BatchReply.SerializeToString,
        )
        return grpc.method_handlers_generic_handler("xatm.v1.Participant", {"BatchStream": method})

    async def ids(self) -> list[int]:
        """The item ids of the next request message."""
        request = await self.requests.get()
        return [item.id for item in request.items]


@contextlib.asynccontextmanager
async def scripted() -> AsyncIterator[tuple[ScriptedStream, Peers, str]]:
    participant = ScriptedStream()
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((participant.handler(),))
    endpoint = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    peers = Peers()
    try:
        yield participant, peers, endpoint
    finally:
        await peers.close()
        await server.stop(None)


def _call(peers: Peers, endpoint: str, phase: Phase, bqual: str, timeout: float = 30) -> asyncio.Task[Answer]:
    xid = Xid(new_gtrid("t1"), bqual)
    return asyncio.ensure_future(peers.call(endpoint, phase, xid, timeout=timeout))


def test_results_are_matched_by_id_whatever_their_order_and_grouping() -> None:
    async def run() -> None:
        async with scripted() as (participant, peers, endpoint):
            a = _call(peers, endpoint, Phase.PREPARE, "a")
            b = _call(peers, endpoint, Phase.COMMIT, "b")
            c = _call(peers, endpoint, Phase.ROLLBACK, "c")
            ia, ib, ic = await participant.ids()  # one message carries the three
            assert len({ia, ib, ic}) == 3
            participant.give(
                (ic, XaCode.XA_OK, ""), (max(ia, ib, ic) + 100, XaCode.XA_RBROLLBACK, "nobody's")
            )
            assert await c == (XaCode.XA_OK, "")
            participant.give((ia, XaCode.XA_RBINTEGRITY, "veto"), (ib, XaCode.XAER_NOTA, "gone"))
            participant.give((ia, XaCode.XA_OK, "a second answer"))  # dropped: a was answered
            assert await a == (XaCode.XA_RBINTEGRITY, "veto")
            assert await b == (XaCode.XAER_NOTA, "gone")
            # The same stream carries the next calls, under ids of their own.
            d = _call(peers, endpoint, Phase.COMMIT, "d")
            (idd,) = await participant.ids()
            assert idd not in (ia, ib, ic)
            participant.give((idd, XaCode.XA_HEURRB, "rolled back"))
            assert await d == (XaCode.XA_HEURRB, "rolled back")
            assert participant.opened == 1

    asyncio.run(run())


def test_a_branch_past_its_deadline_fails_alone_and_its_late_answer_reaches_no_other() -> None:
    async def run() -> None:
        async with scripted() as (participant, peers, endpoint):
            short = _call(peers, endpoint, Phase.PREPARE, "short", timeout=0.2)
            long = _call(peers, endpoint, Phase.PREPARE, "long")
            i_short, i_long = await participant.ids()
            assert await short == (XaCode.XAER_RMFAIL, "DEADLINE_EXCEEDED: Deadline Exceeded")
            assert not long.done()
            after = _call(peers, endpoint, Phase.COMMIT, "after")
            (i_after,) = await participant.ids()
            # The late answer of the branch given up on comes first: it must reach nobody.
            participant.give((i_short, XaCode.XA_RBROLLBACK, "late"))
            participant.give((i_after, XaCode.XA_OK, "after"), (i_long, XaCode.XA_RDONLY, "long"))
            assert await after == (XaCode.XA_OK, "after")
            assert await long == (XaCode.XA_RDONLY, "long")
            assert participant.opened == 1

    asyncio.run(run())


def test_a_broken_stream_fails_what_it_carries_and_the_next_call_opens_another() -> None:
    async def run() -> None:
        async with scripted() as (participant, peers, endpoint):
            a = _call(peers, endpoint, Phase.PREPARE, "a")
            b = _call(peers, endpoint, Phase.COMMIT, "b")
            ia, _ = await participant.ids()
            participant.give((ia, XaCode.XA_OK, ""))
            assert await a == (XaCode.XA_OK, "")
            participant.abort(grpc.StatusCode.UNAVAILABLE)
            assert await b == (XaCode.XAER_RMFAIL, "UNAVAILABLE: scripted")
            c = _call(peers, endpoint, Phase.COMMIT, "c")
            (ic,) = await participant.ids()
            participant.give((ic, XaCode.XA_OK, ""))
            assert await c == (XaCode.XA_OK, "")
            assert participant.opened == 2

    asyncio.run(run())


def test_a_caller_that_stops_waiting_leaves_the_stream_to_the_others() -> None:
    async def run() -> None:
        async with scripted() as (participant, peers, endpoint):
            gone = _call(peers, endpoint, Phase.PREPARE, "gone")
            (i_gone,) = await participant.ids()
            gone.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await gone
            kept = _call(peers, endpoint, Phase.PREPARE, "kept")
            (i_kept,) = await participant.ids()
            participant.give((i_gone, XaCode.XA_RBROLLBACK, "nobody waits"), (i_kept, XaCode.XA_OK, ""))
            assert await kept == (XaCode.XA_OK, "")
            assert gone.cancelled() and participant.opened == 1

    asyncio.run(run())


def _sent(method: str) -> float:
    return REGISTRY.get_sample_value("xatm_participant_rpcs_sent_total", {"method": method}) or 0.0


@pytest.mark.parametrize("kind", ["threaded", "aio"])
def test_a_slow_branch_holds_up_no_branch_sent_after_it_on_the_stream(kind: str) -> None:
    async def run() -> None:
        rm = ScriptedRM()
        g = new_gtrid("t1")
        before = _sent("BatchStream")
        async with serving(rm, kind) as endpoint:
            peers = Peers()
            try:
                slow = asyncio.ensure_future(
                    peers.call(endpoint, Phase.PREPARE, Xid(g, "slow-1"), timeout=30)
                )
                while "slow-1" not in rm.prepares:  # its message is in, and held by the RM
                    await asyncio.sleep(0.01)
                fast = await peers.call(endpoint, Phase.PREPARE, Xid(g, "fast-1"), timeout=30)
                assert fast == (XaCode.XA_OK, "")
                assert not slow.done()
                rm.release("slow-1")
                assert await slow == (XaCode.XA_OK, "")
            finally:
                await peers.close()
        assert _sent("BatchStream") - before == 2  # two messages on the stream, no other call
        assert sorted(rm.recover(), key=str) == sorted([Xid(g, "slow-1"), Xid(g, "fast-1")], key=str)

    asyncio.run(run())


class _StalledCall:
    """A stream whose writes block until ``flowing`` is set (a participant not reading)."""

    def __init__(self) -> None:
        self.flowing = asyncio.Event()
        self.replies: asyncio.Queue[Exception] = asyncio.Queue()
        self._done = False

    async def initial_metadata(self) -> tuple[()]:
        return ()

    def done(self) -> bool:
        return self._done

    async def write(self, request: participant_pb2.BatchRequest) -> None:
        await self.flowing.wait()

    async def read(self) -> participant_pb2.BatchReply:
        failure = await self.replies.get()
        self._done = True
        raise failure

    def cancel(self) -> None:
        self._done = True


class _StalledChannels:
    """What ``Streams`` needs of ``Peers``: one stalled stream per open."""

    def __init__(self) -> None:
        self.streams: list[_StalledCall] = []

    def held_stub(self, endpoint: str) -> _StalledChannels:
        return self

    def release(self, endpoint: str) -> None:
        pass

    credentials = ()

    def BatchStream(self, wait_for_ready: bool = True, metadata: Any = None) -> _StalledCall:
        self.streams.append(_StalledCall())
        return self.streams[-1]

    def failure_reason(self, endpoint: str, code: grpc.StatusCode, details: str, timeout: float) -> str:
        return f"{code.name}: {details}"


@pytest.mark.parametrize("how", ["broken", "deadline"])
def test_calls_beyond_one_message_behind_a_stalled_write_are_still_answered(how: str) -> None:
    """Found by a review: 70 calls queued at once went out 64 to a message, and while the first
    message's write waited, the other 6 were held where neither the deadline timer nor the
    stream's end could see them: they waited for ever."""

    async def run() -> list[Answer]:
        channels = _StalledChannels()
        streams = Streams(cast(Any, channels), max_batch=64)
        calls = [
            asyncio.ensure_future(streams.call("ep", Phase.COMMIT, Xid(new_gtrid("t1"), f"b{i}"), 0.3))
            for i in range(70)
        ]
        await asyncio.sleep(0.05)  # the first message's write is waiting
        if how == "broken":
            channels.streams[0].replies.put_nowait(ConnectionResetError("reset by peer"))
        else:
            await asyncio.sleep(0.5)  # every deadline passes while that write waits
            channels.streams[0].flowing.set()
        answers = await asyncio.wait_for(asyncio.gather(*calls), 5)
        await streams.close()
        return answers

    answers = asyncio.run(run())
    assert len(answers) == 70 and {code for code, _ in answers} == {XaCode.XAER_RMFAIL}


def test_a_stream_nobody_uses_is_ended_so_a_stopping_participant_is_not_held() -> None:
    """Found in CI: a participant's graceful stop waited its whole grace period for the
    coordinator's stream, which never ended by itself (every test's teardown took 2 s more per
    bank). A stream with nothing out or queued for IDLE_CLOSE seconds ends; the next call opens
    another, and a call in flight keeps its stream open however long it takes."""

    async def run() -> None:
        async with scripted() as (participant, peers, endpoint):
            slow = _call(peers, endpoint, Phase.PREPARE, "slow")
            (ident,) = await participant.ids()
            await asyncio.sleep(IDLE_CLOSE * 3)  # out all this time: the stream stays
            participant.give((ident, XaCode.XA_OK, ""))
            assert await slow == (XaCode.XA_OK, "")
            assert participant.ended == 0
            await asyncio.sleep(IDLE_CLOSE * 3)  # now idle: ended
            assert participant.ended == 1
            after = _call(peers, endpoint, Phase.COMMIT, "after")
            (ident,) = await participant.ids()
            participant.give((ident, XaCode.XA_OK, ""))
            assert await after == (XaCode.XA_OK, "")
            assert participant.opened == 2

    asyncio.run(run())
