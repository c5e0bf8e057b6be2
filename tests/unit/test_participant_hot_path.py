"""What a participant does per call, pinned where it was made cheaper: a caller's coordinator
is parsed and checked once, a method's handler is wrapped once by the server interceptors, the
threaded Batch handler answers every branch, the results known together in one message, and an
RM whose verbs never wait has its batches served where they are read, no thread per branch."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from typing import Any

import grpc
import pytest

from xatm.participant import failpoints
from xatm.participant import stub as stub_module
from xatm.participant.api.v1 import participant_pb2, xa_pb2
from xatm.participant.client.interceptors import ServerInterceptor
from xatm.participant.errors import PermissionDeniedError
from xatm.participant.servicer import AsyncParticipantServicer, ParticipantCore, ParticipantServicer
from xatm.participant.stores.memory import MemoryRM
from xatm.participant.stub import ParticipantStub
from xatm.participant.xa import XaCode, Xid, new_bqual, new_gtrid


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every coordinator text the stub parses."""
    seen: list[str] = []
    parse = stub_module.parse_addresses

    def counting(text: str) -> Any:
        seen.append(text)
        return parse(text)

    monkeypatch.setattr(stub_module, "parse_addresses", counting)
    return seen


def test_a_named_coordinator_is_checked_once_and_a_refused_one_every_time(parses: list[str]) -> None:
    stub = ParticipantStub(MemoryRM("rm"), coordinator="127.0.0.1:7070", advertise="127.0.0.1:7101")
    parses.clear()  # the constructor's own
    try:
        for _ in range(3):
            assert stub._check_coordinator("127.0.0.1:7070") == "127.0.0.1:7070"
        assert parses == ["127.0.0.1:7070"]
        for _ in range(2):
            with pytest.raises(PermissionDeniedError, match=r"10\.9\.9\.9:7070"):
                stub._check_coordinator("10.9.9.9:7070")
        assert parses == ["127.0.0.1:7070", "10.9.9.9:7070", "10.9.9.9:7070"]
    finally:
        stub.close()


class _Inline:
    """An executor that runs what it is given at once, in the caller's thread."""

    def submit(self, fn: Callable[..., Any], *args: Any) -> Future[Any]:
        done: Future[Any] = Future()
        done.set_result(fn(*args))
        return done


def _prepared_batch(rm: MemoryRM, count: int) -> tuple[participant_pb2.BatchRequest, list[Xid]]:
    xids = [Xid(new_gtrid("hot"), new_bqual()) for _ in range(count)]
    items = []
    for n, xid in enumerate(xids):
        rm.start(xid)
        rm.end(xid)
        wire = xa_pb2.Xid(format_id=xid.format_id, gtrid=xid.gtrid, bqual=xid.bqual)
        items.append(participant_pb2.BatchItem(id=n, verb=participant_pb2.BATCH_PREPARE, xid=wire))
    return participant_pb2.BatchRequest(items=items), xids


def _replies(servicer: ParticipantServicer, request: participant_pb2.BatchRequest) -> Iterator[Any]:
    return servicer.Batch(request, None)  # type: ignore[arg-type]  # the threaded Batch reads no context


def test_results_known_together_leave_in_one_message() -> None:
    rm = MemoryRM("rm")
    servicer = ParticipantServicer(rm)
    servicer._batch_pool = _Inline()  # type: ignore[assignment]  # every branch done before the first wait
    request, _ = _prepared_batch(rm, 5)
    replies = list(_replies(servicer, request))
    assert len(replies) == 1
    assert sorted((r.id, r.code) for r in replies[0].results) == [(n, XaCode.XA_OK) for n in range(5)]


def test_a_branch_whose_serving_failed_unexpectedly_is_answered_all_the_same() -> None:
    rm = MemoryRM("rm")
    servicer = ParticipantServicer(rm)
    request, _ = _prepared_batch(rm, 3)
    serve = servicer.core.serve_item

    def broken(item: participant_pb2.BatchItem, received: float) -> participant_pb2.BatchResult:
        if item.id == 1:
            raise RuntimeError("a bug in the servicer")
        return serve(item, received)

    servicer.core.serve_item = broken  # type: ignore[method-assign]
    results = {r.id: r for reply in _replies(servicer, request) for r in reply.results}
    assert sorted(results) == [0, 1, 2]
    assert results[0].code == results[2].code == XaCode.XA_OK
    assert results[1].code == XaCode.XAER_RMFAIL
    assert results[1].reason == "INTERNAL: RuntimeError: a bug in the servicer"


def _details(method: str, metadata: tuple[tuple[str, str], ...]) -> Any:
    class Details(grpc.HandlerCallDetails):
        pass

    details = Details()
    details.method = method  # type: ignore[misc]
    details.invocation_metadata = metadata  # type: ignore[misc]
    return details


@pytest.mark.parametrize("make", [ServerInterceptor, ParticipantStub.server_interceptor], ids=["tx", "stub"])
def test_a_methods_handler_is_wrapped_once_whatever_the_calls_carry(make: Callable[[], Any]) -> None:
    """The server interceptors hand every call of a method the same wrapped handler: the
    transaction is read from each call's metadata when it runs, not baked into a new handler."""
    interceptor = make()
    handlers = {
        "/bank.v1.Accounts/Apply": grpc.unary_unary_rpc_method_handler(lambda request, context: request),
        "/xatm.v1.Participant/Batch": grpc.unary_stream_rpc_method_handler(lambda request, context: iter(())),
    }
    in_tx = (("xatm-gtrid", new_gtrid("hot")), ("xatm-coordinator", "127.0.0.1:7070"))
    seen: dict[str, set[int]] = {}
    for method, handler in handlers.items():
        for metadata in ((), in_tx, (("xatm-gtrid", new_gtrid("hot")),), (("xatm-gtrid", "bad gtrid"),)):
            wrapped = interceptor.intercept_service(lambda _details, h=handler: h, _details(method, metadata))
            assert wrapped is not handler
            seen.setdefault(method, set()).add(id(wrapped))
    assert {method: len(ids) for method, ids in seen.items()} == dict.fromkeys(handlers, 1)
    assert interceptor.intercept_service(lambda _details: None, _details("/x.Y/Z", in_tx)) is None


class _Noting(MemoryRM):
    """MemoryRM noting the thread each prepare ran on (a subclass says itself it never waits)."""

    blocking = False

    def __init__(self) -> None:
        super().__init__("rm")
        self.threads: list[int] = []

    def prepare(self, xid: Xid) -> XaCode:
        self.threads.append(threading.get_ident())
        return super().prepare(xid)


class _Context:
    """What BatchStream asks of its call's context, threaded or asyncio."""

    def send_initial_metadata(self, metadata: Any) -> None:
        pass


class _AioContext:
    async def send_initial_metadata(self, metadata: Any) -> None:
        pass


@pytest.fixture
def unarmed() -> Iterator[None]:
    yield
    failpoints.disarm()


def _ids(replies: list[participant_pb2.BatchReply]) -> list[list[int]]:
    assert all(r.code == XaCode.XA_OK for reply in replies for r in reply.results)
    return [sorted(r.id for r in reply.results) for reply in replies]


def _messages(rm: MemoryRM) -> list[participant_pb2.BatchRequest]:
    """Two messages of prepares with an empty one between them."""
    return [_prepared_batch(rm, 3)[0], participant_pb2.BatchRequest(), _prepared_batch(rm, 2)[0]]


def test_a_stream_over_an_rm_that_never_waits_is_served_where_it_is_read() -> None:
    """No reader thread, no worker per branch: each message's branches are served on the
    stream's own thread, one after another, and answered together in one message."""
    rm = _Noting()
    servicer = ParticipantServicer(rm)
    stream = servicer.BatchStream(iter(_messages(rm)), _Context())  # type: ignore[arg-type]
    assert _ids(list(stream)) == [[0, 1, 2], [0, 1]]
    assert set(rm.threads) == {threading.get_ident()}
    assert servicer._batch_pool is None


def test_a_batch_over_an_rm_that_never_waits_is_answered_in_one_message() -> None:
    rm = _Noting()
    servicer = ParticipantServicer(rm)
    request, _ = _prepared_batch(rm, 4)
    assert _ids(list(_replies(servicer, request))) == [[0, 1, 2, 3]]
    assert set(rm.threads) == {threading.get_ident()}
    assert servicer._batch_pool is None
    assert list(_replies(servicer, participant_pb2.BatchRequest())) == []  # nothing to answer


def test_an_armed_participant_failpoint_puts_each_branch_in_a_worker_again(unarmed: None) -> None:
    """A failpoint may sleep: with one armed, no branch waits behind another's."""
    failpoints.arm("participant.rollback=sleep(1)")
    rm = _Noting()
    servicer = ParticipantServicer(rm)
    replies = list(servicer.BatchStream(iter(_messages(rm)), _Context()))  # type: ignore[arg-type]
    assert sorted(n for ids in _ids(replies) for n in ids) == [0, 0, 1, 1, 2]
    assert threading.get_ident() not in rm.threads
    assert servicer._batch_pool is not None


def test_an_asyncio_stream_over_an_rm_that_never_waits_is_served_on_the_event_loop() -> None:
    rm = _Noting()
    servicer = AsyncParticipantServicer(rm)

    async def requests() -> AsyncIterator[participant_pb2.BatchRequest]:
        for request in _messages(rm):
            yield request

    async def run() -> list[participant_pb2.BatchReply]:
        stream = servicer.BatchStream(requests(), _AioContext())  # type: ignore[arg-type]
        replies = [reply async for reply in stream]
        request, _ = _prepared_batch(rm, 2)
        replies += [reply async for reply in servicer.Batch(request, None)]  # type: ignore[arg-type]
        empty = participant_pb2.BatchRequest()
        assert [reply async for reply in servicer.Batch(empty, None)] == []  # type: ignore[arg-type]
        return replies

    replies = asyncio.run(run())
    assert sorted(n for ids in _ids(replies[:-1]) for n in ids) == [0, 0, 1, 1, 2]
    assert _ids(replies[-1:]) == [[0, 1]]
    assert set(rm.threads) == {threading.get_ident()}  # asyncio.run's loop runs on this thread


def test_armed_tells_whether_a_failpoint_of_a_prefix_is_armed(unarmed: None) -> None:
    assert not failpoints.armed() and not failpoints.armed("participant.")
    failpoints.arm("wal.before_fsync=sleep(1)")
    assert failpoints.armed() and failpoints.armed("wal.")
    assert not failpoints.armed("participant.")
    failpoints.arm("participant.commit=2*return(XA_HEURRB)")
    assert failpoints.armed("participant.")


def test_a_subclass_of_memory_rm_is_blocking_unless_it_says_otherwise() -> None:
    class Slowed(MemoryRM):
        def prepare(self, xid: Xid) -> XaCode:
            time.sleep(0.001)
            return super().prepare(xid)

    assert MemoryRM.blocking is False and _Noting.blocking is False
    assert Slowed.blocking is True
    assert not ParticipantCore(Slowed("slowed")).in_turn()
