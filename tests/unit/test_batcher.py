"""When the coordinator's batcher sends what, and how it reads odd replies, against a fake
channel whose answers the test hands out one by one.

Counted in passes of the event loop, never in time: a lone call leaves within a few passes
(no timer) on an RPC of its own; calls queued behind an RPC that has not answered yet leave
together when it does (or when ``max_batch`` of them wait, or after ``linger``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

import grpc

from xatm.coordinator.engine.batching import Batcher
from xatm.participant.api.v1 import participant_pb2
from xatm.participant.xa import Phase, XaCode, Xid

Answer = tuple[XaCode, str]


class FakeStream:
    """A Batch call's reply stream: yields what the test ``give``s, ends on ``end()``."""

    def __init__(self, request: participant_pb2.BatchRequest) -> None:
        self.request = request
        self._replies: asyncio.Queue[Any] = asyncio.Queue()
        self.cancelled = False

    def give(self, *results: tuple[int, int, str]) -> None:
        reply = participant_pb2.BatchReply()
        for number, code, reason in results:
            reply.results.add(id=number, code=code, reason=reason)
        self._replies.put_nowait(reply)

    def give_raw(self, reply: Any) -> None:
        self._replies.put_nowait(reply)

    def end(self) -> None:
        self._replies.put_nowait(None)

    def bquals(self) -> list[str]:
        return [item.xid.bqual for item in self.request.items]

    def __aiter__(self) -> FakeStream:
        return self

    async def __anext__(self) -> Any:
        reply = await self._replies.get()
        if reply is None:
            raise StopAsyncIteration
        return reply

    def cancel(self) -> None:
        self.cancelled = True


class FakeChannels:
    """Stands for ``Peers``: every Batch call is kept in ``streams``, every call sent on its own
    in ``singles`` (its bqual and the future the test answers it with)."""

    def __init__(self) -> None:
        self.streams: list[FakeStream] = []
        self.singles: list[tuple[str, asyncio.Future[Answer]]] = []
        self.held = 0

    async def single(
        self, endpoint: str, phase: Phase, xid: Xid, timeout: float, trace: tuple[tuple[str, str], ...]
    ) -> Answer:
        answer: asyncio.Future[Answer] = asyncio.get_running_loop().create_future()
        self.singles.append((xid.bqual, answer))
        return await answer

    def alone(self) -> list[str]:
        return [bqual for bqual, _ in self.singles]

    def held_stub(self, endpoint: str) -> FakeChannels:
        self.held += 1
        return self

    def release(self, endpoint: str) -> None:
        self.held -= 1

    def failure_reason(self, endpoint: str, code: grpc.StatusCode, details: str, timeout: float) -> str:
        return f"{code.name}: {details}"

    credentials = ()

    def Batch(self, request: participant_pb2.BatchRequest, **_: Any) -> FakeStream:
        stream = FakeStream(request)
        self.streams.append(stream)
        return stream


async def passes(n: int = 5) -> None:
    for _ in range(n):
        await asyncio.sleep(0)


def start(batcher: Batcher, bqual: str, timeout: float = 30) -> asyncio.Task[Answer]:
    call = batcher.call("p:1", Phase.PREPARE, Xid("t.1", bqual), timeout)
    return asyncio.ensure_future(call)


def run(test: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(test())


def test_a_lone_call_leaves_at_once_on_its_own_rpc() -> None:
    async def test() -> None:
        channels = FakeChannels()
        batcher = Batcher(channels, linger=3600)  # a timer would never fire within the test
        call = start(batcher, "b1")
        await passes()
        assert channels.alone() == ["b1"] and channels.streams == []
        channels.singles[0][1].set_result((XaCode.XA_OK, ""))
        assert await call == (XaCode.XA_OK, "")

    run(test)


def test_a_lone_call_is_sent_from_its_callers_task_with_its_own_deadline() -> None:
    async def test() -> None:
        channels = FakeChannels()
        senders: list[tuple[asyncio.Task[Any] | None, float]] = []
        single = channels.single

        async def noting(endpoint: str, phase: Phase, xid: Xid, timeout: float, trace: Any) -> Answer:
            senders.append((asyncio.current_task(), timeout))
            return await single(endpoint, phase, xid, timeout, trace)

        channels.single = noting  # type: ignore[method-assign]
        batcher = Batcher(channels, linger=3600)
        call = start(batcher, "b1", timeout=20)
        await passes()
        assert [task for task, _ in senders] == [call]  # no task of the batcher's in between
        assert 19 < senders[0][1] <= 20
        channels.singles[0][1].set_result((XaCode.XAER_RMERR, "failed"))
        assert await call == (XaCode.XAER_RMERR, "failed")
        assert batcher._queues == {}  # the endpoint is not waited on any more

    run(test)


def test_a_lone_call_cancelled_as_it_was_to_leave_holds_up_nothing() -> None:
    async def test() -> None:
        channels = FakeChannels()
        batcher = Batcher(channels, linger=3600)
        gone = start(batcher, "b1")
        await passes(2)  # flushed: told to go alone, not resumed yet
        gone.cancel()
        await passes()
        assert gone.cancelled() and channels.alone() == []
        kept = start(batcher, "b2")
        await passes()
        assert channels.alone() == ["b2"]  # not queued behind a call that never left
        channels.singles[0][1].set_result((XaCode.XA_OK, ""))
        assert await kept == (XaCode.XA_OK, "")
        assert batcher._queues == {}

    run(test)


def test_calls_queued_behind_a_silent_rpc_leave_together_when_it_answers() -> None:
    async def test() -> None:
        channels = FakeChannels()
        batcher = Batcher(channels, linger=3600)
        first = start(batcher, "b1")
        await passes()
        queued = [start(batcher, "b2")]
        await passes()
        queued.append(start(batcher, "b3"))
        await passes()
        assert channels.alone() == ["b1"] and channels.streams == []  # b1 not answered: the others wait
        channels.singles[0][1].set_result((XaCode.XA_OK, ""))
        await passes()
        assert [s.bquals() for s in channels.streams] == [["b2", "b3"]]
        assert await first == (XaCode.XA_OK, "")
        start(batcher, "b4")
        await passes()
        assert len(channels.streams) == 1  # the batch is silent in its turn
        channels.streams[0].give((1, XaCode.XA_RBROLLBACK, "no"))
        await passes()
        assert channels.alone() == ["b1", "b4"]  # the first reply let b4 go
        channels.streams[0].give((0, XaCode.XA_OK, ""))
        channels.streams[0].end()
        assert await asyncio.gather(*queued) == [(XaCode.XA_OK, ""), (XaCode.XA_RBROLLBACK, "no")]
        await batcher.close()

    run(test)


def test_a_full_queue_does_not_wait_for_the_silent_batch() -> None:
    async def test() -> None:
        channels = FakeChannels()
        batcher = Batcher(channels, max_batch=2, linger=3600)
        start(batcher, "b1")
        await passes()
        start(batcher, "b2")
        await passes()
        assert channels.streams == []
        start(batcher, "b3")
        await passes()
        assert channels.alone() == ["b1"]
        assert [s.bquals() for s in channels.streams] == [["b2", "b3"]]
        await batcher.close()

    run(test)


def test_queued_calls_leave_after_linger_when_the_silent_rpc_never_answers() -> None:
    async def test() -> None:
        channels = FakeChannels()
        batcher = Batcher(channels, linger=0.01)
        start(batcher, "b1")
        await passes()
        start(batcher, "b2")
        for _ in range(500):
            if len(channels.singles) == 2:
                break
            await asyncio.sleep(0.01)
        assert channels.alone() == ["b1", "b2"]
        await batcher.close()

    run(test)


def test_a_cancelled_call_is_not_sent() -> None:
    async def test() -> None:
        channels = FakeChannels()
        batcher = Batcher(channels, linger=3600)
        start(batcher, "b1")
        await passes()
        gone = start(batcher, "b2")
        kept = start(batcher, "b3")
        await passes(1)
        gone.cancel()
        channels.singles[0][1].set_result((XaCode.XA_OK, ""))
        await passes()
        assert channels.alone() == ["b1", "b3"] and channels.streams == []
        assert not kept.done()
        await batcher.close()

    run(test)


def test_odd_replies_fail_only_the_branches_they_concern() -> None:
    async def test() -> None:
        channels = FakeChannels()
        batcher = Batcher(channels, linger=3600)
        calls = [start(batcher, f"b{n}") for n in range(3)]
        await passes()
        (stream,) = channels.streams
        stream.give((0, 42, "made up"), (1, XaCode.XA_OK, ""))
        stream.end()  # b2 never answered
        assert await asyncio.gather(*calls) == [
            (XaCode.XAER_RMFAIL, "participant answered Prepare with unknown XaCode 42 in code"),
            (XaCode.XA_OK, ""),
            (XaCode.XAER_RMFAIL, "participant ended the batch without answering this branch"),
        ]
        more = [start(batcher, f"c{n}") for n in range(2)]
        await passes()
        stream = channels.streams[1]
        stream.give((0, XaCode.XA_OK, ""))
        stream.give((7, XaCode.XA_OK, ""))  # no item 7: nothing more of this reply can be trusted
        assert await asyncio.gather(*more) == [
            (XaCode.XA_OK, ""),
            (XaCode.XAER_RMFAIL, "participant answered Batch with a result for unknown item 7"),
        ]
        assert stream.cancelled
        last = [start(batcher, f"d{n}") for n in range(2)]
        await passes()
        channels.streams[2].give_raw(participant_pb2.XaReply())  # not a BatchReply at all
        not_valid = (
            XaCode.XAER_RMFAIL,
            "participant answered Batch with bytes that are not a valid BatchReply",
        )
        assert await asyncio.gather(*last) == [not_valid] * 2

    run(test)


def test_each_branch_has_its_own_deadline() -> None:
    async def test() -> None:
        channels = FakeChannels()
        batcher = Batcher(channels, linger=3600)
        short = start(batcher, "short", timeout=0.02)
        answered = start(batcher, "answered", timeout=0.04)
        later = start(batcher, "later", timeout=0.06)
        long = start(batcher, "long", timeout=30)
        await passes()
        (stream,) = channels.streams
        assert [item.timeout_ms <= 60 for item in stream.request.items] == [True, True, True, False]
        stream.give((1, XaCode.XA_OK, ""))  # answered before its deadline: that answer stands
        assert await answered == (XaCode.XA_OK, "")
        expired = (XaCode.XAER_RMFAIL, "DEADLINE_EXCEEDED: Deadline Exceeded")
        assert await short == expired
        assert await later == expired  # each earlier deadline in turn, the batch still out
        assert not long.done()
        stream.give((3, XaCode.XA_RDONLY, ""))
        assert await long == (XaCode.XA_RDONLY, "")
        stream.end()

    run(test)
