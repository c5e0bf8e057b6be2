"""The participant stub end to end over real gRPC channels, with a fake coordinator.

The fake coordinator records what it is asked and drives the participants it enlisted
(one branch: one-phase commit; several: prepare then commit), which is enough to check the
stub's side of the contract without the real coordinator.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
import time
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from xatm.participant import (
    AioServerInterceptor,
    AsyncParticipantServicer,
    AsyncTransactionManager,
    EnlistError,
    ParticipantServicer,
    ParticipantStub,
    ResourceManager,
    ServerInterceptor,
    TransactionManager,
    TransactionRolledBack,
    TxContext,
    XaCode,
    XaError,
    XatmError,
    Xid,
    aio_client_interceptors,
    current,
    failpoints,
    intercept_channel,
)
from xatm.participant.api.v1 import (
    coordinator_pb2,
    coordinator_pb2_grpc,
    participant_pb2,
    participant_pb2_grpc,
    xa_pb2,
)
from xatm.participant.client.context import GTRID_KEY, use
from xatm.participant.errors import Status
from xatm.participant.stub import _Branch
from xatm.participant.xa import FORMAT_ID, TxOutcome, TxStatus

# ---------------------------------------------------------------- fakes


class MemoryRM(ResourceManager):
    """Keeps each branch's writes in memory; ``answers`` forces a verb's result."""

    rm_id = "mem"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, Xid]] = []
        self.active: dict[Xid, list[str]] = {}
        self.prepared: dict[Xid, list[str]] = {}
        self.committed: list[str] = []
        self.rolled_back: list[Xid] = []
        self.foreign: list[Xid] = []
        self.answers: dict[str, BaseException | XaCode] = {}

    def _called(self, verb: str, xid: Xid) -> XaCode | None:
        with self.lock:
            self.calls.append((verb, xid))
        forced = self.answers.get(verb)
        if isinstance(forced, BaseException):
            raise forced
        return forced

    def verbs(self) -> list[str]:
        with self.lock:
            return [verb for verb, _ in self.calls]

    def start(self, xid: Xid) -> None:
        self._called("start", xid)
        with self.lock:
            self.active.setdefault(xid, [])

    def end(self, xid: Xid) -> None:
        self._called("end", xid)

    def write(self, xid: Xid, value: str) -> None:
        with self.lock:
            self.active[xid].append(value)

    def _take(self, xid: Xid, *pools: dict[Xid, list[str]]) -> list[str]:
        with self.lock:
            for pool in pools:
                if xid in pool:
                    return pool.pop(xid)
        raise XaError(XaCode.XAER_NOTA, f"unknown branch {xid}")

    def prepare(self, xid: Xid) -> XaCode:
        forced = self._called("prepare", xid)
        if forced is not None:
            return forced
        work = self._take(xid, self.active)
        if not work:
            return XaCode.XA_RDONLY
        with self.lock:
            self.prepared[xid] = work
        return XaCode.XA_OK

    def commit(self, xid: Xid, one_phase: bool) -> None:
        self._called("commit", xid)
        work = self._take(xid, self.active if one_phase else self.prepared)
        with self.lock:
            self.committed.extend(work)

    def rollback(self, xid: Xid) -> None:
        self._called("rollback", xid)
        self._take(xid, self.active, self.prepared)
        with self.lock:
            self.rolled_back.append(xid)

    def recover(self) -> list[Xid]:
        self._called("recover", Xid("recover", "x"))
        with self.lock:
            return [*self.prepared, *self.foreign]

    def forget(self, xid: Xid) -> None:
        self._called("forget", xid)

    def savepoint(self, xid: Xid, savepoint_id: str) -> None:
        self._called("savepoint", xid)


@dataclass
class _FakeTx:
    status: int = xa_pb2.TRANSACTION_STATUS_CREATED
    branches: list[coordinator_pb2.EnlistRequest] = field(default_factory=list)
    codes: dict[str, int] = field(default_factory=dict)


class FakeCoordinator(coordinator_pb2_grpc.CoordinatorServicer):
    """Records every call; commits by calling the enlisted Participant services."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[str, Any]] = []
        self.metadata: list[dict[str, str]] = []
        self.txs: dict[str, _FakeTx] = {}
        self.enlist_delay = 0.0
        self.enlist_code = XaCode.XA_OK
        self.commit_outcome: TxOutcome | None = None

    def _record(self, name: str, request: Any, context: grpc.ServicerContext) -> None:
        with self.lock:
            self.calls.append((name, request))
            self.metadata.append(dict(context.invocation_metadata()))

    def names(self) -> list[str]:
        with self.lock:
            return [name for name, _ in self.calls]

    def requests(self, name: str) -> list[Any]:
        with self.lock:
            return [request for n, request in self.calls if n == name]

    def _tx(self, gtrid: str, context: grpc.ServicerContext) -> _FakeTx:
        if gtrid not in self.txs:
            context.abort(grpc.StatusCode.NOT_FOUND, f"unknown transaction {gtrid}")
        return self.txs[gtrid]

    def Begin(self, request, context):  # type: ignore[no-untyped-def]
        self._record("Begin", request, context)
        gtrid = f"fake.{len(self.txs) + 1:04d}{time.time_ns() % 10**6}"
        self.txs[gtrid] = _FakeTx()
        return coordinator_pb2.BeginResponse(
            gtrid=gtrid, format_id=FORMAT_ID, timeout_ms=request.timeout_ms or 60_000
        )

    def Enlist(self, request, context):  # type: ignore[no-untyped-def]
        self._record("Enlist", request, context)
        time.sleep(self.enlist_delay)
        tx = self._tx(request.gtrid, context)
        if self.enlist_code != XaCode.XA_OK:
            return coordinator_pb2.EnlistResponse(code=self.enlist_code, reason="refused by test")
        tx.branches.append(request)
        return coordinator_pb2.EnlistResponse(code=XaCode.XA_OK)

    def MarkRollbackOnly(self, request, context):  # type: ignore[no-untyped-def]
        self._record("MarkRollbackOnly", request, context)
        tx = self._tx(request.gtrid, context)
        tx.status = xa_pb2.TRANSACTION_STATUS_MARKED_ROLLBACK
        return xa_pb2.TransactionInfo(gtrid=request.gtrid, status=tx.status)

    def GetStatus(self, request, context):  # type: ignore[no-untyped-def]
        self._record("GetStatus", request, context)
        tx = self._tx(request.gtrid, context)
        return xa_pb2.TransactionInfo(gtrid=request.gtrid, status=tx.status)

    def CreateSavepoint(self, request, context):  # type: ignore[no-untyped-def]
        self._record("CreateSavepoint", request, context)
        self._tx(request.gtrid, context)
        return coordinator_pb2.CreateSavepointResponse(savepoint_id="sp1.abc")

    def RollbackToSavepoint(self, request, context):  # type: ignore[no-untyped-def]
        self._record("RollbackToSavepoint", request, context)
        tx = self._tx(request.gtrid, context)
        return xa_pb2.TransactionInfo(gtrid=request.gtrid, status=tx.status)

    @staticmethod
    def _call(branch: coordinator_pb2.EnlistRequest, verb: str, **fields: Any) -> int:
        xid = xa_pb2.Xid(format_id=FORMAT_ID, gtrid=branch.gtrid, bqual=branch.bqual)
        kind = participant_pb2.CommitBranchRequest if verb == "Commit" else participant_pb2.BranchRequest
        request = kind(xid=xid, **fields)
        with grpc.insecure_channel(branch.endpoint) as channel:
            return getattr(participant_pb2_grpc.ParticipantStub(channel), verb)(request, timeout=5).code

    def _reply(self, gtrid: str, tx: _FakeTx, outcome: TxOutcome) -> coordinator_pb2.CompletionResponse:
        branches = [
            xa_pb2.BranchInfo(bqual=b.bqual, rm_id=b.rm_id, last_code=tx.codes[b.bqual], has_last_code=True)
            for b in tx.branches
            if b.bqual in tx.codes
        ]
        return coordinator_pb2.CompletionResponse(
            gtrid=gtrid, outcome=outcome, status=tx.status, branches=branches
        )

    def _roll_back(self, tx: _FakeTx) -> None:
        for branch in tx.branches:
            tx.codes[branch.bqual] = self._call(branch, "Rollback")
        tx.status = xa_pb2.TRANSACTION_STATUS_ROLLEDBACK

    def Commit(self, request, context):  # type: ignore[no-untyped-def]
        self._record("Commit", request, context)
        tx = self._tx(request.gtrid, context)
        if self.commit_outcome is not None:
            tx.codes = {b.bqual: XaCode.XA_RBDEADLOCK for b in tx.branches}
            return self._reply(request.gtrid, tx, self.commit_outcome)
        if tx.status == xa_pb2.TRANSACTION_STATUS_MARKED_ROLLBACK:
            self._roll_back(tx)
            return self._reply(request.gtrid, tx, TxOutcome.TX_ROLLBACK)
        if len(tx.branches) == 1:
            tx.codes[tx.branches[0].bqual] = self._call(tx.branches[0], "Commit", one_phase=True)
        else:
            for branch in tx.branches:
                tx.codes[branch.bqual] = self._call(branch, "Prepare")
            for branch in tx.branches:
                if tx.codes[branch.bqual] == XaCode.XA_OK:
                    tx.codes[branch.bqual] = self._call(branch, "Commit")
        tx.status = xa_pb2.TRANSACTION_STATUS_COMMITTED
        return self._reply(request.gtrid, tx, TxOutcome.TX_OK)

    def Rollback(self, request, context):  # type: ignore[no-untyped-def]
        self._record("Rollback", request, context)
        tx = self._tx(request.gtrid, context)
        if tx.status != xa_pb2.TRANSACTION_STATUS_CREATED:
            context.abort(
                grpc.StatusCode.FAILED_PRECONDITION,
                f"cannot roll back {request.gtrid}: status is {TxStatus(tx.status)}",
            )
        self._roll_back(tx)
        return self._reply(request.gtrid, tx, TxOutcome.TX_OK)


# ---------------------------------------------------------------- fixtures

Client = participant_pb2_grpc.ParticipantStub
Coordinator = tuple[FakeCoordinator, str]
Bank = tuple[ParticipantStub, grpc.Channel, list[TxContext | None]]


def _server(*, interceptors: tuple[grpc.ServerInterceptor, ...] = ()) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), interceptors=interceptors)
    port = server.add_insecure_port("127.0.0.1:0")
    return server, f"127.0.0.1:{port}"


@pytest.fixture
def coordinator() -> Iterator[Coordinator]:
    fake = FakeCoordinator()
    server, address = _server()
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(fake, server)
    server.start()
    yield fake, address
    server.stop(None)


@pytest.fixture
def rm() -> MemoryRM:
    return MemoryRM()


@pytest.fixture(autouse=True)
def _no_failpoints() -> Iterator[None]:
    failpoints.disarm()
    yield
    failpoints.disarm()


@pytest.fixture
def participant(rm: MemoryRM) -> Iterator[Client]:
    """A threaded server with only the Participant service, and a client for it."""
    server, address = _server()
    participant_pb2_grpc.add_ParticipantServicer_to_server(ParticipantServicer(rm), server)
    server.start()
    with grpc.insecure_channel(address) as channel:
        yield participant_pb2_grpc.ParticipantStub(channel)
    server.stop(None)


def _xid(gtrid: str = "g.1", bqual: str = "b1", format_id: int = FORMAT_ID) -> xa_pb2.Xid:
    return xa_pb2.Xid(format_id=format_id, gtrid=gtrid, bqual=bqual)


def _branch(**kw: Any) -> participant_pb2.BranchRequest:
    return participant_pb2.BranchRequest(xid=_xid(**kw))


def _calls_metric(verb: str, code: str) -> float:
    return REGISTRY.get_sample_value("xatm_participant_calls_total", {"verb": verb, "code": code}) or 0.0


# ---------------------------------------------------------------- the Participant service


@pytest.mark.parametrize(
    ("forced", "code", "reason"),
    [
        (None, XaCode.XA_OK, ""),
        (XaCode.XA_RDONLY, XaCode.XA_RDONLY, ""),
        (XaError(XaCode.XA_RBROLLBACK, "constraint violated"), XaCode.XA_RBROLLBACK, "constraint violated"),
        (XaError(XaCode.XA_RBTIMEOUT), XaCode.XA_RBTIMEOUT, ""),
        (XaError(XaCode.XAER_RMFAIL, "db down"), XaCode.XAER_RMFAIL, "db down"),
        (RuntimeError("disk full"), XaCode.XAER_RMERR, "RuntimeError: disk full"),
    ],
)
def test_prepare_maps_rm_answers(
    participant: Client, rm: MemoryRM, forced: Any, code: XaCode, reason: str
) -> None:
    rm.start(Xid("g.1", "b1"))
    rm.write(Xid("g.1", "b1"), "w")
    if forced is not None:
        rm.answers["prepare"] = forced
    reply = participant.Prepare(_branch())
    assert (reply.code, reply.reason) == (code, reason)


@pytest.mark.parametrize(
    ("verb", "forced", "code"),
    [
        ("Commit", None, XaCode.XA_OK),
        ("Commit", XaError(XaCode.XA_HEURMIX, "half"), XaCode.XA_HEURMIX),
        ("Commit", XaError(XaCode.XA_RETRY), XaCode.XA_RETRY),
        ("Commit", ValueError("boom"), XaCode.XAER_RMERR),
        ("Rollback", None, XaCode.XA_OK),
        ("Rollback", XaError(XaCode.XAER_NOTA), XaCode.XAER_NOTA),
        ("Rollback", KeyError("x"), XaCode.XAER_RMERR),
        ("Forget", None, XaCode.XA_OK),
        ("Forget", XaError(XaCode.XAER_PROTO, "not heuristic"), XaCode.XAER_PROTO),
    ],
)
def test_phase_two_verbs_map_rm_answers(
    participant: Client, rm: MemoryRM, verb: str, forced: Any, code: XaCode
) -> None:
    rm.prepared[Xid("g.1", "b1")] = ["w"]
    if forced is not None:
        rm.answers[verb.lower()] = forced
    request = participant_pb2.CommitBranchRequest(xid=_xid()) if verb == "Commit" else _branch()
    assert getattr(participant, verb)(request).code == code


def test_unknown_branch_answers_nota(participant: Client) -> None:
    reply = participant.Commit(participant_pb2.CommitBranchRequest(xid=_xid(), one_phase=False))
    assert reply.code == XaCode.XAER_NOTA


def test_savepoints_default_to_protocol_error(participant: Client) -> None:
    request = participant_pb2.SavepointBranchRequest(xid=_xid(), savepoint_id="sp1.a")
    assert participant.Savepoint(request).code == XaCode.XA_OK  # MemoryRM implements it
    assert participant.RollbackToSavepoint(request).code == XaCode.XAER_PROTO


@pytest.mark.parametrize(
    "xid",
    [
        xa_pb2.Xid(),
        _xid(gtrid=""),
        _xid(gtrid="bad gtrid"),
        _xid(gtrid="g" * 65),
        _xid(bqual=""),
        _xid(bqual="b/1"),
    ],
)
def test_malformed_xid_is_invalid_argument(participant: Client, rm: MemoryRM, xid: xa_pb2.Xid) -> None:
    for call in (participant.Prepare, participant.Rollback, participant.Forget):
        with pytest.raises(grpc.RpcError) as caught:
            call(participant_pb2.BranchRequest(xid=xid))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "malformed" in caught.value.details()
    assert rm.calls == []


def test_malformed_savepoint_id_is_invalid_argument(participant: Client) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        participant.Savepoint(participant_pb2.SavepointBranchRequest(xid=_xid(), savepoint_id=""))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_failpoint_return_answers_without_rm(participant: Client, rm: MemoryRM) -> None:
    failpoints.arm("participant.commit=1*return(XA_RETRY);participant.rollback=return(XA_RETRY)")
    assert participant.Commit(participant_pb2.CommitBranchRequest(xid=_xid())).code == XaCode.XA_RETRY
    assert participant.Rollback(_branch()).code == XaCode.XA_RETRY
    assert rm.calls == []
    assert participant.Prepare(_branch()).code == XaCode.XAER_NOTA
    assert rm.verbs() == ["prepare"]


def test_failpoint_rollback_vote_rolls_the_branch_back(participant: Client, rm: MemoryRM) -> None:
    """An XA_RB* vote states the branch is rolled back, so the injected vote makes it true."""
    failpoints.arm("participant.prepare=1*return(XA_RBDEADLOCK)")
    assert participant.Prepare(_branch()).code == XaCode.XA_RBDEADLOCK
    assert rm.verbs() == ["rollback"]


def test_failpoint_after_prepare_answers_after_rm_prepared(participant: Client, rm: MemoryRM) -> None:
    xid = Xid("g.1", "b1")
    rm.start(xid)
    rm.write(xid, "w")
    failpoints.arm("participant.after_prepare=return(XAER_RMFAIL)")
    assert participant.Prepare(_branch()).code == XaCode.XAER_RMFAIL
    assert xid in rm.prepared


def test_failpoint_error_is_grpc_status(participant: Client, rm: MemoryRM) -> None:
    failpoints.arm("participant.commit=error(UNAVAILABLE)")
    with pytest.raises(grpc.RpcError) as caught:
        participant.Commit(participant_pb2.CommitBranchRequest(xid=_xid()))
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "participant.commit" in caught.value.details()
    assert rm.calls == []


def test_recover_filters_by_format_id(participant: Client, rm: MemoryRM) -> None:
    ours, foreign = Xid("g.1", "b1"), Xid("other", "b2", format_id=42)
    rm.prepared[ours] = ["w"]
    rm.foreign.append(foreign)

    def gtrids(format_id: int) -> list[str]:
        reply = participant.Recover(participant_pb2.RecoverRequest(format_id=format_id))
        assert (reply.code, reply.rm_id) == (XaCode.XA_OK, "mem")
        return sorted(x.gtrid for x in reply.xids)

    assert gtrids(FORMAT_ID) == ["g.1"]
    assert gtrids(42) == ["other"]
    assert gtrids(0) == ["g.1", "other"]
    assert gtrids(7) == []
    rm.answers["recover"] = OSError("gone")
    assert participant.Recover(participant_pb2.RecoverRequest()).code == XaCode.XAER_RMERR


def test_calls_are_counted_by_verb_and_code(participant: Client) -> None:
    before_nota = _calls_metric("rollback", "XAER_NOTA")
    before_invalid = _calls_metric("rollback", "INVALID_ARGUMENT")
    participant.Rollback(_branch())
    with pytest.raises(grpc.RpcError):
        participant.Rollback(_branch(gtrid=""))
    assert _calls_metric("rollback", "XAER_NOTA") == before_nota + 1
    assert _calls_metric("rollback", "INVALID_ARGUMENT") == before_invalid + 1
    count = REGISTRY.get_sample_value("xatm_participant_call_duration_seconds_count", {"verb": "rollback"})
    assert count is not None and count >= 2


def test_async_servicer_maps_the_same(rm: MemoryRM) -> None:
    rm.answers["prepare"] = RuntimeError("broken")

    async def main() -> None:
        server = grpc.aio.server()
        participant_pb2_grpc.add_ParticipantServicer_to_server(AsyncParticipantServicer(rm), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                client = participant_pb2_grpc.ParticipantStub(channel)
                reply = await client.Prepare(_branch())
                assert (reply.code, reply.reason) == (XaCode.XAER_RMERR, "RuntimeError: broken")
                assert (await client.Rollback(_branch())).code == XaCode.XAER_NOTA
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await client.Commit(participant_pb2.CommitBranchRequest(xid=_xid(bqual="")))
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
                failpoints.arm("participant.rollback=error(ABORTED)")
                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await client.Rollback(_branch())
                assert caught.value.code() == grpc.StatusCode.ABORTED
        finally:
            await server.stop(None)

    asyncio.run(main())


# ---------------------------------------------------------------- business services using the stub

_DEPOSIT = "/test.Bank/Deposit"
_WATCH = "/test.Bank/Watch"


def _sync_bank(stub: ParticipantStub, rm: MemoryRM, seen: list[TxContext | None]) -> grpc.GenericRpcHandler:
    def deposit(request: bytes, context: grpc.ServicerContext) -> bytes:
        seen.append(current())
        with stub.branch() as xid:
            if request == b"fail":
                raise ValueError("insufficient funds")
            if request == b"locked":
                raise XaError(XaCode.XA_RBTIMEOUT, "waited 2.0s for the lock on 'k'")
            rm.write(xid, request.decode())
        return xid.gtrid.encode()

    def fan_out(request: bytes, context: grpc.ServicerContext) -> bytes:
        """Calls Deposit from worker threads, handed the handler's context (docs/initiator.md)."""
        with intercept_channel(grpc.insecure_channel(stub.advertise)) as channel:
            deposit = channel.unary_unary(_DEPOSIT)
            with futures.ThreadPoolExecutor(2) as pool:
                jobs = [pool.submit(contextvars.copy_context().run, deposit, b"fan") for _ in range(2)]
                return b",".join(job.result() for job in jobs)

    def watch(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        for _ in range(2):
            tx = current()
            yield (tx.gtrid if tx else "-").encode()

    return grpc.method_handlers_generic_handler(
        "test.Bank",
        {
            "Deposit": grpc.unary_unary_rpc_method_handler(deposit),
            "FanOut": grpc.unary_unary_rpc_method_handler(fan_out),
            "Watch": grpc.unary_stream_rpc_method_handler(watch),
        },
    )


@pytest.fixture
def bank(rm: MemoryRM, coordinator: Coordinator) -> Iterator[Bank]:
    """A threaded business server linking the stub, and an intercepted channel to it."""
    server, address = _server(interceptors=(ServerInterceptor(),))
    stub = ParticipantStub(rm, coordinator=coordinator[1], advertise=address)
    seen: list[TxContext | None] = []
    stub.add_to_server(server)
    server.add_generic_rpc_handlers((_sync_bank(stub, rm, seen),))
    server.start()
    with intercept_channel(grpc.insecure_channel(address)) as channel:
        yield stub, channel, seen
    server.stop(None)
    stub.close()


def test_global_transaction_enlists_once_and_commits(
    bank: Bank,
    coordinator: Coordinator,
    rm: MemoryRM,
) -> None:
    stub, channel, seen = bank
    fake, address = coordinator
    deposit = channel.unary_unary(_DEPOSIT)
    with TransactionManager(address, timeout=20) as tm, tm.begin() as tx:
        answers = {deposit(f"w{i}".encode()) for i in range(3)}
        assert current() == tx.context
        assert stub.active_branches() == 1
    assert current() is None
    assert answers == {tx.gtrid.encode()}
    enlists = fake.requests("Enlist")
    assert [(e.gtrid, e.rm_id, e.endpoint) for e in enlists] == [(tx.gtrid, "mem", stub.advertise)]
    assert fake.names() == ["Begin", "Enlist", "Commit"]
    assert rm.committed == ["w0", "w1", "w2"]  # one-phase commit reached the RM through the stub
    assert rm.verbs() == ["start", "end"] * 3 + ["commit"]
    assert stub.active_branches() == 0  # forgotten once the coordinator committed it
    assert {s.gtrid for s in seen if s} == {tx.gtrid}
    assert all(
        s and s.coordinator == address and s.deadline and s.deadline <= time.monotonic() + 20 for s in seen
    )


def test_concurrent_first_calls_enlist_once(
    bank: Bank,
    coordinator: Coordinator,
    rm: MemoryRM,
) -> None:
    _, channel, _ = bank
    fake, address = coordinator
    fake.enlist_delay = 0.1  # keeps the first enlist in flight while the others arrive
    deposit = channel.unary_unary(_DEPOSIT)
    with TransactionManager(address) as tm, tm.begin(), futures.ThreadPoolExecutor(6) as pool:
        jobs = [pool.submit(contextvars.copy_context().run, deposit, f"w{i}".encode()) for i in range(6)]
        assert len({job.result() for job in jobs}) == 1
    assert len(fake.requests("Enlist")) == 1
    assert sorted(rm.committed) == [f"w{i}" for i in range(6)]


def test_outside_transaction_runs_local_one_phase(
    bank: Bank,
    coordinator: Coordinator,
    rm: MemoryRM,
) -> None:
    _, channel, seen = bank
    deposit = channel.unary_unary(_DEPOSIT)
    gtrids = {deposit(b"a"), deposit(b"b")}
    assert len(gtrids) == 2 and all(g.startswith(b"local.") for g in gtrids)
    assert seen == [None, None]
    assert coordinator[0].names() == []
    assert rm.committed == ["a", "b"]
    assert rm.verbs() == ["start", "end", "commit"] * 2
    with pytest.raises(grpc.RpcError):
        deposit(b"fail")
    assert rm.verbs()[-3:] == ["start", "end", "rollback"]
    assert rm.committed == ["a", "b"]


def test_failure_in_branch_marks_rollback_only_and_rolls_back(
    bank: Bank,
    coordinator: Coordinator,
    rm: MemoryRM,
) -> None:
    stub, channel, _ = bank
    fake, address = coordinator
    deposit = channel.unary_unary(_DEPOSIT)
    with TransactionManager(address) as tm, pytest.raises(grpc.RpcError) as caught, tm.begin() as tx:
        deposit(b"ok")
        deposit(b"fail")
    assert caught.value.code() == grpc.StatusCode.UNKNOWN  # the business error, not a rollback error
    [mark] = fake.requests("MarkRollbackOnly")
    assert mark.gtrid == tx.gtrid and "insufficient funds" in mark.reason and mark.reason.startswith("mem:")
    # Rollback is refused in MarkedRollback; the initiator completes it with commit, which rolls back.
    assert fake.names()[-3:] == ["Rollback", "GetStatus", "Commit"]
    assert rm.committed == [] and len(rm.rolled_back) == 1
    assert stub.active_branches() == 0


def test_server_stream_handler_sees_transaction(bank: Bank, coordinator: Coordinator) -> None:
    _, channel, _ = bank
    watch = channel.unary_stream(_WATCH)
    with TransactionManager(coordinator[1]) as tm, tm.begin() as tx:
        assert list(watch(b"")) == [tx.gtrid.encode()] * 2
    assert list(watch(b"")) == [b"-"] * 2


def test_malformed_gtrid_metadata_is_invalid_argument(bank: Bank, rm: MemoryRM) -> None:
    _, channel, seen = bank
    deposit = channel.unary_unary(_DEPOSIT)
    for bad in ("", "has space", "x" * 65):
        with pytest.raises(grpc.RpcError) as caught:
            deposit(b"a", metadata=((GTRID_KEY, bad),))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert seen == [] and rm.calls == []


def test_enlist_refused_raises_and_forgets(rm: MemoryRM, coordinator: Coordinator) -> None:
    fake, address = coordinator
    fake.enlist_code = XaCode.XAER_DUPID
    stub = ParticipantStub(rm, coordinator=address, advertise="127.0.0.1:1")
    with TransactionManager(address) as tm:
        tx = tm.begin()
        with use(tx.context), pytest.raises(EnlistError) as caught, stub.branch():
            pytest.fail("the block must not run")
        tx.rollback()
    assert caught.value.xa_code is XaCode.XAER_DUPID
    assert caught.value.status == Status.ALREADY_EXISTS
    assert "XAER_DUPID" in caught.value.message and tx.gtrid in caught.value.message
    assert stub.active_branches() == 0 and rm.calls == []
    with use(TxContext("fake.unknown", address)), pytest.raises(EnlistError) as caught, stub.branch():
        pass
    assert caught.value.status == Status.NOT_FOUND
    stub.close()


# ---------------------------------------------------------------- the initiator


def test_initiator_commits_and_rolls_back(coordinator: Coordinator) -> None:
    fake, address = coordinator
    with TransactionManager(address, token="s3cret") as tm:
        with tm.begin(timeout=2.5) as tx:
            assert tx.savepoint() == "sp1.abc"
            assert tx.rollback_to("sp1.abc").gtrid == tx.gtrid
            assert TxStatus(tx.status().status) is TxStatus.CREATED
        assert fake.requests("Begin")[0].timeout_ms == 2500
        assert fake.names()[-1] == "Commit"
        with pytest.raises(RuntimeError, match="business"), tm.begin() as tx2:
            raise RuntimeError("business failure")
        assert fake.names()[-1] == "Rollback" and fake.requests("Rollback")[0].gtrid == tx2.gtrid
    assert all(m.get("authorization") == "Bearer s3cret" for m in fake.metadata)


def test_commit_outcome_other_than_ok_raises(coordinator: Coordinator) -> None:
    fake, address = coordinator
    fake.commit_outcome = TxOutcome.TX_ROLLBACK
    with TransactionManager(address) as tm:
        tx = tm.begin()
        enlisted = coordinator_pb2.EnlistRequest(gtrid=tx.gtrid, bqual="b1", rm_id="db")
        fake.txs[tx.gtrid].branches.append(enlisted)
        with pytest.raises(TransactionRolledBack) as caught:
            tx.commit()
    error = caught.value
    assert (error.outcome, error.gtrid) == (TxOutcome.TX_ROLLBACK, tx.gtrid)
    assert (error.status, error.transaction_status) == (Status.ABORTED, TxStatus.CREATED)
    assert error.branch_codes == {"b1": XaCode.XA_RBDEADLOCK}
    assert "TX_ROLLBACK" in error.message and "XA_RBDEADLOCK" in error.message


def test_explicit_completion_and_errors(coordinator: Coordinator) -> None:
    fake, address = coordinator
    with TransactionManager(address) as tm:
        with tm.begin() as tx:
            assert tx.rollback().outcome == TxOutcome.TX_OK
        assert fake.names().count("Commit") == 0  # already completed: the block exit does nothing
        assert TxStatus(tx.status().status) is TxStatus.ROLLEDBACK
        tx = tm.begin()
        fake.txs[tx.gtrid].status = xa_pb2.TRANSACTION_STATUS_COMMITTED
        with pytest.raises(XatmError) as caught:
            tx.rollback()
        assert caught.value.status == Status.FAILED_PRECONDITION
        assert caught.value.message == f"cannot roll back {tx.gtrid}: status is Committed"
        del fake.txs[tx.gtrid]
        with pytest.raises(XatmError) as caught:
            tx.status()
        assert (caught.value.status, caught.value.message) == (
            Status.NOT_FOUND,
            f"unknown transaction {tx.gtrid}",
        )
    with TransactionManager("127.0.0.1:1", call_timeout=2) as tm, pytest.raises(XatmError) as caught:
        tm.begin()
    assert caught.value.status == Status.UNAVAILABLE


def test_rollback_failure_keeps_business_exception(coordinator: Coordinator) -> None:
    fake, address = coordinator
    with TransactionManager(address) as tm, pytest.raises(KeyError) as caught, tm.begin() as tx:
        del fake.txs[tx.gtrid]
        raise KeyError("business")
    assert caught.value.__notes__ == [f"xatm: rollback of {tx.gtrid} failed: unknown transaction {tx.gtrid}"]


# ---------------------------------------------------------------- asyncio end to end


def test_asyncio_service_enlists_once_and_commits(rm: MemoryRM, coordinator: Coordinator) -> None:
    fake, address = coordinator
    seen: list[TxContext | None] = []
    fake.enlist_delay = 0.05  # concurrent first calls below must still enlist once

    async def main() -> None:
        server = grpc.aio.server(interceptors=[AioServerInterceptor()])
        port = server.add_insecure_port("127.0.0.1:0")
        stub = ParticipantStub(rm, coordinator=address, advertise=f"127.0.0.1:{port}")

        async def deposit(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
            seen.append(current())
            async with stub.abranch() as xid:
                if request == b"fail":
                    raise ValueError("insufficient funds")
                rm.write(xid, request.decode())
            return xid.gtrid.encode()

        stub.add_to_server(server)
        server.add_generic_rpc_handlers(
            (
                grpc.method_handlers_generic_handler(
                    "test.Bank", {"Deposit": grpc.unary_unary_rpc_method_handler(deposit)}
                ),
            )
        )
        await server.start()
        try:
            target = f"127.0.0.1:{port}"
            async with (
                grpc.aio.insecure_channel(target, interceptors=aio_client_interceptors()) as channel,
                AsyncTransactionManager(address) as tm,
            ):
                call = channel.unary_unary(_DEPOSIT)
                async with tm.begin() as tx:
                    answers = set(await asyncio.gather(*(call(f"w{i}".encode()) for i in range(3))))
                    answers.add(await call(b"w3"))
                assert answers == {tx.gtrid.encode()}
                assert [e.gtrid for e in fake.requests("Enlist")] == [tx.gtrid]
                assert sorted(rm.committed) == ["w0", "w1", "w2", "w3"]
                assert stub.active_branches() == 0

                local = await call(b"solo")
                assert local.startswith(b"local.") and rm.committed[-1] == "solo"
                assert len(fake.requests("Enlist")) == 1

                with pytest.raises(grpc.aio.AioRpcError):
                    async with tm.begin() as failed:
                        await call(b"fail")
                assert fake.requests("MarkRollbackOnly")[0].gtrid == failed.gtrid

                with pytest.raises(grpc.aio.AioRpcError) as caught:
                    await call(b"a", metadata=((GTRID_KEY, "bad gtrid"),))
                assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT

                later = await tm.begin()
                await later.rollback()
                assert fake.requests("Rollback")[-1].gtrid == later.gtrid
        finally:
            await server.stop(None)
            stub.close()

    asyncio.run(main())
    assert [s.gtrid if s else None for s in seen][4] is None
    assert rm.committed[-1] == "solo"


def test_a_join_overtaken_by_the_coordinator_leaves_no_active_branch() -> None:
    rm = MemoryRM()
    stub = ParticipantStub(rm, coordinator="127.0.0.1:1", advertise="127.0.0.1:2")
    # The coordinator's rollback reaches the servicer while Enlist is still being answered.
    stub._enlist = lambda tx, xid: stub._completed(xid)  # type: ignore[method-assign]
    with use(TxContext("g.overtaken", "127.0.0.1:1")), pytest.raises(XatmError) as err, stub.branch():
        pytest.fail("the business block must not run on a finished transaction")
    assert err.value.status == Status.ABORTED
    assert rm.verbs() == ["start", "rollback"] and not rm.active
    assert stub.active_branches() == 0


def test_stale_active_branches_are_asked_about_and_rolled_back() -> None:
    rm = MemoryRM()
    stub = ParticipantStub(rm, coordinator="127.0.0.1:1", advertise="127.0.0.1:2", call_timeout=0.01)
    stub._enlist = lambda tx, xid: None  # type: ignore[method-assign]
    asked: list[Xid] = []

    def resolve(xid: Xid) -> str:  # the coordinator lost the enlistment: presumed abort
        asked.append(xid)
        rm.rollback(xid)
        return "rollback"

    stub._resolve = resolve  # type: ignore[method-assign]
    with use(TxContext("g.stale", "127.0.0.1:1", deadline=time.monotonic() - 1)), stub.branch() as xid:
        pass
    assert stub.resolve_in_doubt()["rollback"] == 1
    assert asked == [xid] and not rm.active and stub.active_branches() == 0


def test_a_rollback_only_mark_that_fails_rolls_the_branch_back_here(rm: MemoryRM) -> None:
    """A failed handler's work must not commit even when the coordinator cannot be told: the
    branch goes at once, so its prepare votes no (XAER_NOTA)."""
    stub = ParticipantStub(rm, coordinator="127.0.0.1:1", advertise="127.0.0.1:2", call_timeout=0.5)
    xid = Xid("n1.abc", "b1", FORMAT_ID)
    rm.start(xid)
    stub._branches[xid.gtrid] = _Branch(xid, None, enlisted=True)
    with pytest.raises(XatmError):
        stub._doom(TxContext(xid.gtrid, "127.0.0.1:1"), "handler failed")
    assert rm.rolled_back == [xid]
    stub.close()


def test_a_rollback_code_escaping_a_handler_answers_aborted_in_a_transaction_or_not(
    bank: Bank, coordinator: Coordinator
) -> None:
    """A lock wait is a conflict to retry, not a server fault (it answered INTERNAL inside a
    transaction, and UNKNOWN with a logged traceback outside one)."""
    _, channel, _ = bank
    deposit = channel.unary_unary(_DEPOSIT)
    with pytest.raises(grpc.RpcError) as outside:
        deposit(b"locked")
    assert outside.value.code() == grpc.StatusCode.ABORTED
    assert outside.value.details() == "XA_RBTIMEOUT: waited 2.0s for the lock on 'k'"
    with TransactionManager(coordinator[1], timeout=20) as tm:
        tx = tm.begin()
        with pytest.raises(grpc.RpcError) as inside:
            deposit(b"locked")
        tx.rollback()
    assert inside.value.code() == grpc.StatusCode.ABORTED


def test_a_handler_fanning_out_to_threads_with_its_context_keeps_them_in_the_transaction(
    bank: Bank, coordinator: Coordinator, rm: MemoryRM
) -> None:
    _, channel, _ = bank
    with TransactionManager(coordinator[1], timeout=20) as tm:
        tx = tm.begin()
        assert channel.unary_unary("/test.Bank/FanOut")(b"") == f"{tx.gtrid},{tx.gtrid}".encode()
        tx.rollback()
    assert "fan" not in rm.committed  # rolled back with the transaction, not committed alone
