"""Participants that take phase calls from their coordinator only.

Found by a newcomer: anyone who reached a participant's port could roll back (or commit) a
prepared branch behind the coordinator's back, and the coordinator then reported an outcome the
data did not have. With ``--participant-token`` on the coordinator and the same token as the
agent's ``--coordinator-token`` (``coordinator_token=`` of a stub), every Participant call must
carry it: the coordinator's do, anybody else's are refused UNAUTHENTICATED.
"""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from tests.bank_system import TEST_COORDINATOR_ENV
from tests.system.test_agent import agent_client, agent_proc, integer
from xatm.coordinator.tools.procs import Proc, coordinator_proc
from xatm.participant import TransactionManager
from xatm.participant.api.v1 import (
    agent_pb2,
    coordinator_pb2,
    coordinator_pb2_grpc,
    participant_pb2,
    participant_pb2_grpc,
    xa_pb2,
)
from xatm.participant.xa import FORMAT_ID, TxStatus, XaCode

TOKEN = "phase-calls-7f3a9c"


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, list[Proc]]]:
    root = tmp_path_factory.mktemp("participant-auth")
    coordinator = coordinator_proc(
        root / "coordinator", root, env={**TEST_COORDINATOR_ENV, "XATM_PARTICIPANT_TOKEN": TOKEN}
    )
    agents = [
        agent_proc(
            name,
            coordinator.address,
            root,
            {"XATM_RESOURCE": f"sqlite:{root / name}.db", "XATM_COORDINATOR_TOKEN": TOKEN},
        )
        for name in ("kv-a", "kv-b")
    ]
    try:
        for proc in (coordinator, *agents):
            proc.start()
        yield coordinator, agents
    finally:
        for proc in (*agents, coordinator):
            proc.stop()


def test_the_coordinators_calls_carry_the_token_and_commit(system: tuple[Proc, list[Proc]]) -> None:
    coordinator, agents = system
    clients = [agent_client(agent.address) for agent in agents]
    try:
        with TransactionManager(coordinator.address) as tm, tm.begin() as tx:
            for n, (_, store) in enumerate(clients):
                store.Put(agent_pb2.PutRequest(key="k", value=integer(n)), timeout=10)
    finally:
        for channel, _ in clients:
            channel.close()
    with grpc.insecure_channel(coordinator.address) as channel:
        info = coordinator_pb2_grpc.CoordinatorStub(channel).GetStatus(
            coordinator_pb2.StatusRequest(gtrid=tx.gtrid), timeout=5
        )
    assert TxStatus(info.status) is TxStatus.COMMITTED and not info.one_phase
    assert [XaCode(b.last_code) for b in info.branches] == [XaCode.XA_OK, XaCode.XA_OK]


@pytest.mark.parametrize("given", [None, "Bearer not-the-token", f"Bearer {TOKEN}x", TOKEN])
def test_anybody_elses_phase_calls_are_refused(system: tuple[Proc, list[Proc]], given: str | None) -> None:
    _, agents = system
    xid = xa_pb2.Xid(format_id=FORMAT_ID, gtrid="n00000000." + "0" * 36, bqual="b")
    metadata = (("authorization", given),) if given else None
    with grpc.insecure_channel(agents[0].address) as channel:
        stub = participant_pb2_grpc.ParticipantStub(channel)
        given_with = {"timeout": 5, "metadata": metadata}
        calls = [
            lambda: stub.Recover(participant_pb2.RecoverRequest(format_id=FORMAT_ID), **given_with),
            lambda: stub.Rollback(participant_pb2.BranchRequest(xid=xid), **given_with),
            lambda: stub.Commit(participant_pb2.CommitBranchRequest(xid=xid), **given_with),
            lambda: list(stub.Batch(participant_pb2.BatchRequest(), **given_with)),
            lambda: list(stub.BatchStream(iter([participant_pb2.BatchRequest()]), **given_with)),
        ]
        for call in calls:
            with pytest.raises(grpc.RpcError) as caught:
                call()
            assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
            assert "takes phase calls from its coordinator only" in (caught.value.details() or "")
            assert TOKEN not in (caught.value.details() or "")


def test_the_coordinators_token_opens_the_same_calls(system: tuple[Proc, list[Proc]]) -> None:
    _, agents = system
    with grpc.insecure_channel(agents[0].address) as channel:
        stub = participant_pb2_grpc.ParticipantStub(channel)
        found = stub.Recover(
            participant_pb2.RecoverRequest(format_id=FORMAT_ID),
            timeout=5,
            metadata=(("authorization", f"Bearer {TOKEN}"),),
        )
    assert XaCode(found.code) is XaCode.XA_OK


def test_a_token_is_never_written_to_the_logs(system: tuple[Proc, list[Proc]]) -> None:
    coordinator, agents = system
    for proc in (coordinator, *agents):
        assert TOKEN not in proc.log_path.read_text()
