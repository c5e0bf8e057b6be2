"""A participant dials only the coordinators it trusts, whatever a caller's metadata names.

A real coordinator (with an auth file: the participants' token is real) and a trap: a gRPC server
the test owns that records every call reaching it and the authorization metadata it carried. The
SDK stub runs in the test process, the agent as a real ``xatm participant`` process; each is
given the token, its ``coordinator`` and one more allowed address (a second "replica").
"""

from __future__ import annotations

from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import pytest

from tests.admin_support import write_auth_file
from tests.bank_system import TEST_COORDINATOR_ENV
from tests.system.test_agent import agent_client, agent_proc, integer
from xatm.coordinator.tools.procs import Proc, coordinator_proc, free_port
from xatm.participant import ParticipantStub, TransactionManager, TxContext, current, intercept_channel
from xatm.participant.api.v1 import agent_pb2, agent_pb2_grpc
from xatm.participant.client.context import use
from xatm.participant.stores.memory import MemoryRM
from xatm.participant.xa import Xid, new_bqual

TOKEN = "participant-secret-token"
SERVICE = "test.Shop"


@dataclass
class Trap:
    """Accepts any call on any method and remembers (method, authorization values)."""

    address: str
    calls: list[tuple[str, list[str | bytes]]] = field(default_factory=list)


class _Recorder(grpc.GenericRpcHandler):
    def __init__(self, trap: Trap):
        self.trap = trap

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> None:
        tokens = [v for k, v in handler_call_details.invocation_metadata if k == "authorization"]
        self.trap.calls.append((handler_call_details.method, tokens))
        return None  # UNIMPLEMENTED: enough for a caller to have sent its headers


class StartsRM(MemoryRM):
    """Remembers the branches it started and committed."""

    def __init__(self, rm_id: str) -> None:
        super().__init__(rm_id)
        self.started: list[Xid] = []
        self.committed: list[Xid] = []

    def start(self, xid: Xid) -> None:
        self.started.append(xid)

    def commit(self, xid: Xid, one_phase: bool) -> None:
        super().commit(xid, one_phase)
        self.committed.append(xid)


@dataclass
class Lab:
    coordinator: Proc
    trap: Trap
    #: An address both participants list in their allowed coordinators (nothing listens there).
    replica: str
    rm: StartsRM
    shop: grpc.Channel
    agent: agent_pb2_grpc.AgentStub


def _shop_handler(stub: ParticipantStub) -> grpc.GenericRpcHandler:
    def buy(request: bytes, context: grpc.ServicerContext) -> bytes:
        with stub.branch():
            return b"ok"

    return grpc.method_handlers_generic_handler(SERVICE, {"Buy": grpc.unary_unary_rpc_method_handler(buy)})


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    root = tmp_path_factory.mktemp("trust")
    auth = write_auth_file(root / "tokens.toml", {"svc": ("service", TOKEN, None)})
    coordinator = coordinator_proc(
        root / "coordinator", root, env={**TEST_COORDINATOR_ENV, "XATM_AUTH_FILE": str(auth)}
    )
    replica = f"127.0.0.1:{free_port()}"
    trap_server = grpc.server(futures.ThreadPoolExecutor(4))
    trap = Trap(f"127.0.0.1:{trap_server.add_insecure_port('127.0.0.1:0')}")
    trap_server.add_generic_rpc_handlers((_Recorder(trap),))
    env = {"XATM_RESOURCE": f"sqlite:{root / 'kv.db'}", "XATM_TOKEN": TOKEN}
    agent = agent_proc("agent-kv", coordinator.address, root, {**env, "XATM_ALLOW_COORDINATORS": replica})
    rm = StartsRM("shop")
    shop_server = grpc.server(
        futures.ThreadPoolExecutor(8), interceptors=[ParticipantStub.server_interceptor()]
    )
    port = shop_server.add_insecure_port("127.0.0.1:0")
    stub = ParticipantStub(
        rm,
        coordinator=coordinator.address,
        advertise=f"127.0.0.1:{port}",
        token=TOKEN,
        allowed_coordinators=[replica],
    )
    stub.add_to_server(shop_server)
    shop_server.add_generic_rpc_handlers((_shop_handler(stub),))
    channels: list[grpc.Channel] = []
    try:
        trap_server.start()
        shop_server.start()
        coordinator.start()
        agent.start()
        shop = intercept_channel(grpc.insecure_channel(f"127.0.0.1:{port}"))
        agent_channel, agent_stub = agent_client(agent.address)
        channels += [shop, agent_channel]
        yield Lab(coordinator, trap, replica, rm, shop, agent_stub)
    finally:
        for channel in channels:
            channel.close()
        agent.stop()
        coordinator.stop()
        shop_server.stop(None)
        trap_server.stop(None)
        stub.close()


def _buy(lab: Lab) -> bytes:
    buy: grpc.UnaryUnaryMultiCallable[bytes, bytes] = lab.shop.unary_unary(f"/{SERVICE}/Buy")
    return buy(b"", timeout=10)


def _put(lab: Lab, key: str) -> None:
    lab.agent.Put(agent_pb2.PutRequest(key=key, value=integer(1)), timeout=10)


def _foreign_tx(coordinator: str, reports: bool) -> TxContext:
    return TxContext(f"evil.{new_bqual()}", coordinator, reports=reports)


@pytest.mark.parametrize("reports", [False, True], ids=["enlisting", "reporting"])
@pytest.mark.parametrize("who", ["stub", "agent"])
def test_an_unlisted_coordinator_is_refused_before_anything_is_dialled(
    lab: Lab, who: str, reports: bool
) -> None:
    started = len(lab.rm.started)
    for named in (lab.trap.address, f"{lab.coordinator.address},{lab.trap.address}"):
        with use(_foreign_tx(named, reports)), pytest.raises(grpc.RpcError) as refused:
            _put(lab, "stolen") if who == "agent" else _buy(lab)
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        message = refused.value.details() or ""
        assert lab.trap.address in message and TOKEN not in message and "\n" not in message
    assert lab.trap.calls == []
    assert len(lab.rm.started) == started  # no branch was opened


@pytest.mark.parametrize("eager", [True, False], ids=["enlisting", "reporting"])
@pytest.mark.parametrize("replicas", [False, True], ids=["coordinator", "replica-list"])
def test_a_listed_coordinator_commits(lab: Lab, eager: bool, replicas: bool) -> None:
    """The stub's and the agent's branches commit through their coordinator; named as a list of
    replicas (the real one first, then the listed address where nothing listens), too."""
    named = f"{lab.coordinator.address},{lab.replica}" if replicas else lab.coordinator.address
    key = f"k-{eager}-{replicas}"
    with TransactionManager(named, token=TOKEN, eager=eager) as tm:
        with tm.begin() as tx:
            assert current() is not None and current().coordinator == named  # type: ignore[union-attr]
            assert _buy(lab) == b"ok"
            _put(lab, key)
        assert tx.gtrid in [x.gtrid for x in lab.rm.committed]
        with tm.begin():
            assert lab.agent.Get(agent_pb2.GetRequest(key=key), timeout=10).value == integer(1)
    assert lab.trap.calls == []


def test_the_trap_would_record_a_token(lab: Lab) -> None:
    """The trap itself works: a call carrying the token to it is recorded with the token."""
    with grpc.insecure_channel(lab.trap.address) as channel, pytest.raises(grpc.RpcError):
        enlist: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/xatm.v1.Coordinator/Enlist"
        )
        enlist(b"", metadata=(("authorization", f"Bearer {TOKEN}"),), timeout=5)
    assert lab.trap.calls.pop() == ("/xatm.v1.Coordinator/Enlist", [f"Bearer {TOKEN}"])
