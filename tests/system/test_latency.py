"""Slow and paused peers: latency or a pause well inside a call's deadline only delays the call.

Real processes, a real delaying proxy, real SIGSTOP. Every client here is fresh (its first call
opens the connection), because that is where a connect timeout shorter than the peer's
handshake used to fail: TCP connects, then the peer's HTTP/2 SETTINGS frame comes too late.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.bank_system import TEST_COORDINATOR_ENV, BankSystem
from tests.certs import make_certs
from tests.latency_proxy import LatencyProxy, paused
from xatm.coordinator.server import tls
from xatm.coordinator.tools.bank._proto import bank_pb2
from xatm.coordinator.tools.bank.transfer import Bank
from xatm.coordinator.tools.procs import Proc, coordinator_proc, wait_healthy
from xatm.participant.client.context import use
from xatm.participant.client.initiator import Transaction, TransactionManager, TransactionRolledBack
from xatm.participant.xa import TxStatus

#: One-way delay of a coordinator "far away" (a round trip is twice this).
FAR = 0.040
#: How long a paused peer stays stopped: well inside every call deadline used here.
PAUSE = 0.3
CLIENTS = 10


def _pid(proc: Proc) -> int:
    assert proc.popen is not None
    return proc.popen.pid


@pytest.fixture(scope="module", params=["plain", "tls"])
def far_coordinator(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[LatencyProxy, grpc.ChannelCredentials | None]]:
    """A coordinator reached through a proxy FAR seconds away each way, with its client credentials."""
    root = tmp_path_factory.mktemp(f"far-{request.param}")
    env = dict(TEST_COORDINATOR_ENV)
    credentials = None
    if request.param == "tls":
        certs = make_certs(root / "certs")
        env.update({"XATM_TLS_CERT": str(certs.server_cert), "XATM_TLS_KEY": str(certs.server_key)})
        credentials = tls.channel_credentials(certs.ca)
    proc = coordinator_proc(root / "data", root, env=env).start(wait=0)
    try:
        assert proc.popen is not None
        wait_healthy(proc.address, 20, proc.popen, credentials)
        with LatencyProxy(proc.address, delay=FAR) as proxy:
            yield proxy, credentials
    finally:
        proc.stop()


def test_fresh_clients_of_a_distant_coordinator_connect(
    far_coordinator: tuple[LatencyProxy, grpc.ChannelCredentials | None],
) -> None:
    proxy, credentials = far_coordinator
    ended = []
    for _ in range(CLIENTS):
        with TransactionManager(proxy.address, channel_credentials=credentials, call_timeout=10) as tm:
            tx = tm.begin()
            ended.append(TxStatus(tx.rollback().status))
    assert ended == [TxStatus.ROLLEDBACK] * CLIENTS


def test_begin_waits_out_a_paused_coordinator(tmp_path: Path) -> None:
    proc = coordinator_proc(tmp_path / "data", tmp_path, env=TEST_COORDINATOR_ENV).start()
    try:
        with TransactionManager(proc.address, call_timeout=10) as tm:
            with paused(_pid(proc), PAUSE):
                tx = tm.begin()  # the first call: the connection opens while the coordinator is stopped
            assert TxStatus(tx.rollback().status) is TxStatus.ROLLEDBACK
    finally:
        proc.stop()


def _debit_and_credit(bank: Bank, amount: int) -> Transaction:
    """A begun transfer whose branches have done their work; commit is the caller's."""
    tx = bank.tm.begin()
    with use(tx.context):
        bank.source.Apply(bank_pb2.ApplyRequest(account="alice", amount=-amount), timeout=10)
        bank.target.Apply(bank_pb2.ApplyRequest(account="bob", amount=amount), timeout=10)
    return tx


def test_a_participant_paused_during_its_first_prepare_still_commits(tmp_path: Path) -> None:
    # A call deadline far above the pause, so only a connect timeout below it could fail the prepare.
    system = BankSystem(tmp_path, coordinator_env={"XATM_CALL_TIMEOUT": "5"}).start()
    try:
        assert system.bank is not None
        tx = _debit_and_credit(system.bank, 10)
        # The coordinator has not called bank-b yet: its prepare opens the connection, paused.
        with paused(_pid(system.banks["bank-b"]), PAUSE):
            tx.commit()
        assert TxStatus(system.status(tx.gtrid).status) is TxStatus.COMMITTED
        assert (system.balance("bank-a", "alice"), system.balance("bank-b", "bob")) == (990, 1010)
    finally:
        system.stop()


def test_a_restarted_participant_is_reconnected(bank_system: BankSystem) -> None:
    bank = bank_system.bank
    assert bank is not None
    assert bank.transfer("alice", "bob", 1).committed  # the coordinator's channel to bank-b is up
    tx = _debit_and_credit(bank, 10)
    bank_b = bank_system.banks["bank-b"]
    bank_b.kill()
    with pytest.raises(TransactionRolledBack):
        tx.commit()
    # Phase two keeps calling the dead peer until it is back, and each failed attempt lets
    # gRPC's reconnect backoff grow; the restarted peer must still be reached by those retries.
    assert TxStatus(bank_system.status(tx.gtrid).status) is TxStatus.ROLLINGBACK
    bank_b.start()
    bank_system.wait_status(tx.gtrid, TxStatus.ROLLEDBACK)
    assert bank.transfer("alice", "bob", 2).committed
    assert (bank_system.balance("bank-a", "alice"), bank_system.balance("bank-b", "bob")) == (997, 1003)


def test_a_participant_restarted_at_its_address_takes_part_in_the_next_prepare(
    bank_system: BankSystem,
) -> None:
    """Right after a restart the coordinator's channel may still sit in its reconnect backoff
    from the calls that failed while the peer was down: the next prepare waits for the
    connection within its deadline instead of failing with the stale error."""
    bank = bank_system.bank
    assert bank is not None
    bank_b = bank_system.banks["bank-b"]
    for _ in range(4):
        tx = _debit_and_credit(bank, 1)
        bank_b.kill()
        with pytest.raises(TransactionRolledBack):
            tx.commit()  # its rollback keeps calling the dead peer: the channel backs off
        bank_b.start()
        result = bank.transfer("alice", "bob", 1)
        assert result.committed, result.detail
