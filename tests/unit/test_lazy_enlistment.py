"""Lazy enlistment through the real interceptors and stub, against a fake coordinator.

Two in-process services link the stub: ``shop`` (RM ``rm-shop``) whose Order writes in its branch
and then calls ``bank`` (RM ``rm-bank``) inside the same transaction. The initiator makes its
gtrids (after one Begin that tells it the coordinator's node id), the participants report their
branches back in reply trailers, hop by hop, and the Commit carries them: no Begin, no Enlist.
"""

from __future__ import annotations

import asyncio
import contextvars
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from tests.unit.test_stub import FakeCoordinator, MemoryRM, _FakeTx, _server
from xatm.participant import (
    AsyncTransactionManager,
    ParticipantStub,
    ServerInterceptor,
    TransactionManager,
    TransactionRolledBack,
    aio_client_interceptors,
    intercept_channel,
)
from xatm.participant.api.v1 import (
    coordinator_pb2,
    coordinator_pb2_grpc,
    participant_pb2,
    participant_pb2_grpc,
    xa_pb2,
)
from xatm.participant.client.context import BRANCHES_KEY, REPORTS_KEY
from xatm.participant.xa import FORMAT_ID, Xid

_ORDER = "/test.Shop/Order"
_DEPOSIT = "/test.Bank/Deposit"
_DEPOSIT_STREAM = "/test.Bank/DepositStream"
_GARBLE = "/test.Bank/Garble"


class LazyCoordinator(FakeCoordinator):
    """The fake, speaking the lazy protocol: Begin says its node, and a transaction it does not
    hold comes into being with the first Enlist, Commit or Rollback naming it."""

    def Begin(self, request, context):  # type: ignore[no-untyped-def]
        reply = super().Begin(request, context)
        reply.node_id, reply.max_timeout_ms = "fake", 600_000
        return reply

    def _take(self, request: Any) -> _FakeTx:
        tx = self.txs.setdefault(request.gtrid, _FakeTx())
        held = {b.bqual for b in tx.branches}
        for ref in getattr(request, "branches", ()):
            if ref.bqual not in held:
                tx.branches.append(
                    coordinator_pb2.EnlistRequest(
                        gtrid=request.gtrid, bqual=ref.bqual, rm_id=ref.rm_id, endpoint=ref.endpoint
                    )
                )
        if getattr(request, "rollback_only", ""):
            tx.status = xa_pb2.TRANSACTION_STATUS_MARKED_ROLLBACK
        return tx

    def Enlist(self, request, context):  # type: ignore[no-untyped-def]
        self.txs.setdefault(request.gtrid, _FakeTx())
        return super().Enlist(request, context)

    def Commit(self, request, context):  # type: ignore[no-untyped-def]
        self._take(request)
        return super().Commit(request, context)

    def Rollback(self, request, context):  # type: ignore[no-untyped-def]
        self._take(request)
        return super().Rollback(request, context)


@dataclass
class Services:
    coordinator: LazyCoordinator
    address: str  # the coordinator's
    shop: ParticipantStub
    bank: ParticipantStub
    shop_rm: MemoryRM
    bank_rm: MemoryRM
    channel: grpc.Channel  # intercepted, to the shop
    bank_channel: grpc.Channel  # intercepted, to the bank


def _named(rm_id: str) -> MemoryRM:
    rm = MemoryRM()
    rm.rm_id = rm_id  # type: ignore[misc]
    return rm


@pytest.fixture
def services() -> Iterator[Services]:
    fake = LazyCoordinator()
    coordinator_server, address = _server()
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(fake, coordinator_server)
    coordinator_server.start()

    bank_rm, shop_rm = _named("rm-bank"), _named("rm-shop")
    bank_server, bank_address = _server(interceptors=(ServerInterceptor(),))
    bank = ParticipantStub(bank_rm, coordinator=address, advertise=bank_address, call_timeout=0.1)
    bank.add_to_server(bank_server)

    def deposit(request: bytes, context: grpc.ServicerContext) -> bytes:
        with bank.branch() as xid:
            if request == b"fail":
                raise ValueError("insufficient funds")
            bank_rm.write(xid, request.decode())
        return xid.bqual.encode()

    def deposit_stream(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        with bank.branch() as xid:
            bank_rm.write(xid, request.decode())
        yield xid.bqual.encode()

    def garble(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.set_trailing_metadata(((BRANCHES_KEY, b"\xff not a report"),))
        return b""

    bank_server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Bank",
                {
                    "Deposit": grpc.unary_unary_rpc_method_handler(deposit),
                    "DepositStream": grpc.unary_stream_rpc_method_handler(deposit_stream),
                    "Garble": grpc.unary_unary_rpc_method_handler(garble),
                },
            ),
        )
    )
    bank_server.start()
    bank_channel = intercept_channel(grpc.insecure_channel(bank_address))

    shop_server, shop_address = _server(interceptors=(ServerInterceptor(),))
    shop = ParticipantStub(shop_rm, coordinator=address, advertise=shop_address, call_timeout=0.1)
    shop.add_to_server(shop_server)
    to_bank = bank_channel.unary_unary(_DEPOSIT)

    def order(request: bytes, context: grpc.ServicerContext) -> bytes:
        with shop.branch() as xid:
            shop_rm.write(xid, "order")
        try:
            to_bank(request, timeout=5)  # a nested call, in the same transaction
        except grpc.RpcError:
            return b"refused"  # swallowed: the caller is not told, the report still travels
        return b"ok"

    shop_server.add_generic_rpc_handlers(
        (
            grpc.method_handlers_generic_handler(
                "test.Shop", {"Order": grpc.unary_unary_rpc_method_handler(order)}
            ),
        )
    )
    shop_server.start()
    channel = intercept_channel(grpc.insecure_channel(shop_address))
    yield Services(fake, address, shop, bank, shop_rm, bank_rm, channel, bank_channel)
    channel.close()
    bank_channel.close()
    for server in (shop_server, bank_server, coordinator_server):
        server.stop(None)
    shop.close()
    bank.close()


def _warm(services: Services, tm: TransactionManager) -> None:
    """The manager's first transaction begins at the coordinator, which tells its node id."""
    with tm.begin():
        pass
    services.coordinator.calls.clear()


def test_a_transaction_costs_one_coordinator_call_with_nested_branches(services: Services) -> None:
    with TransactionManager(services.address, timeout=20) as tm:
        _warm(services, tm)
        with tm.begin() as tx:
            assert services.channel.unary_unary(_ORDER)(b"ten", timeout=5) == b"ok"
        assert tx.gtrid.startswith("fake.")
    assert services.coordinator.names() == ["Commit"]  # no Begin, no Enlist
    (commit,) = services.coordinator.requests("Commit")
    assert [(b.rm_id, b.endpoint) for b in commit.branches] == [
        ("rm-shop", services.shop.advertise),
        ("rm-bank", services.bank.advertise),  # reported to the shop, passed on by it
    ]
    assert commit.gtrid == tx.gtrid and 0 < commit.timeout_ms <= 20_000 and not commit.rollback_only
    assert services.shop_rm.committed == ["order"] and services.bank_rm.committed == ["ten"]
    assert services.shop.active_branches() == services.bank.active_branches() == 0


def test_a_failure_in_a_nested_call_that_was_swallowed_still_rolls_the_transaction_back(
    services: Services,
) -> None:
    with TransactionManager(services.address, timeout=20) as tm:
        _warm(services, tm)
        with pytest.raises(TransactionRolledBack), tm.begin():
            assert services.channel.unary_unary(_ORDER)(b"fail", timeout=5) == b"refused"
    assert services.coordinator.names() == ["Commit"]  # the failure travelled in the reports
    (commit,) = services.coordinator.requests("Commit")
    assert commit.rollback_only == "rm-bank: UNKNOWN: ValueError: insufficient funds"
    assert services.shop_rm.committed == [] and services.bank_rm.committed == []
    assert "MarkRollbackOnly" not in services.coordinator.names()


def test_a_streamed_call_asks_for_no_report_so_its_participant_enlists(services: Services) -> None:
    with TransactionManager(services.address, timeout=20) as tm:
        _warm(services, tm)
        with tm.begin() as tx:
            list(services.bank_channel.unary_stream(_DEPOSIT_STREAM)(b"streamed", timeout=5))
    (enlist,) = services.coordinator.requests("Enlist")
    assert (enlist.gtrid, enlist.rm_id) == (tx.gtrid, "rm-bank") and 0 < enlist.timeout_ms <= 20_000
    assert services.coordinator.names() == ["Enlist", "Commit"]
    assert services.bank_rm.committed == ["streamed"]
    assert all(REPORTS_KEY not in md for md in services.coordinator.metadata)


def test_an_eager_manager_begins_and_its_participants_enlist(services: Services) -> None:
    with TransactionManager(services.address, timeout=20, eager=True) as tm, tm.begin():
        services.channel.unary_unary(_ORDER)(b"five", timeout=5)
    assert services.coordinator.names() == ["Begin", "Enlist", "Enlist", "Commit"]
    assert services.shop_rm.committed == ["order"] and services.bank_rm.committed == ["five"]


def test_an_eager_stub_enlists_and_reports(services: Services) -> None:
    services.bank.eager = True
    with TransactionManager(services.address, timeout=20) as tm:
        _warm(services, tm)
        with tm.begin():
            services.bank_channel.unary_unary(_DEPOSIT)(b"seen early", timeout=5)
    assert services.coordinator.names() == ["Enlist", "Commit"]
    (commit,) = services.coordinator.requests("Commit")
    assert [b.rm_id for b in commit.branches] == ["rm-bank"]  # a restart cannot lose it either
    assert services.bank_rm.committed == ["seen early"]


def test_a_reply_with_an_unreadable_report_dooms_the_transaction(services: Services) -> None:
    with TransactionManager(services.address, timeout=20) as tm:
        _warm(services, tm)
        with pytest.raises(TransactionRolledBack), tm.begin():
            services.bank_channel.unary_unary(_DEPOSIT)(b"kept?", timeout=5)
            services.bank_channel.unary_unary(_GARBLE)(b"", timeout=5)
    (commit,) = services.coordinator.requests("Commit")
    assert "a reply carried a branch report that cannot be read" in commit.rollback_only
    assert services.bank_rm.committed == []


def test_an_asyncio_initiator_gathers_the_reports(services: Services) -> None:
    shop_address = services.shop.advertise

    async def main() -> str:
        async with AsyncTransactionManager(services.address, timeout=20) as tm:
            async with tm.begin():
                pass
            services.coordinator.calls.clear()
            interceptors = aio_client_interceptors()
            async with (
                grpc.aio.insecure_channel(shop_address, interceptors=interceptors) as ch,
                tm.begin() as tx,
            ):
                assert await ch.unary_unary(_ORDER)(b"aio", timeout=5) == b"ok"
            return tx.gtrid

    gtrid = asyncio.run(main())
    (commit,) = services.coordinator.requests("Commit")
    assert commit.gtrid == gtrid and [b.rm_id for b in commit.branches] == ["rm-shop", "rm-bank"]
    assert services.bank_rm.committed == ["aio"]


def _abandoned(services: Services, tm: TransactionManager, work: bytes) -> str:
    """A transaction whose initiator does work and is never heard of again (it crashed)."""
    tx = tm.begin()
    services.bank_channel.unary_unary(_DEPOSIT)(work, timeout=5)
    tx._end()  # what a crash leaves: the coordinator never hears of it
    return tx.gtrid


def test_a_reported_branch_nobody_reached_is_rolled_back_past_the_deadline(services: Services) -> None:
    with TransactionManager(services.address) as tm:
        _warm(services, tm)
        abandoned = contextvars.copy_context().run(
            _abandoned,
            services,
            tm,
            b"lost",
        )
        prepared = contextvars.copy_context().run(_abandoned, services, tm, b"in doubt")
        abandoned_too_soon = tm.begin(timeout=60)
        services.bank_channel.unary_unary(_DEPOSIT)(b"young", timeout=5)
        abandoned_too_soon._end()
    xids = {xid.gtrid: xid for xid in services.bank_rm.active}
    # The coordinator reached one branch before the deadline: it prepared, and stays in doubt.
    with grpc.insecure_channel(services.bank.advertise) as channel:
        wire = xa_pb2.Xid(format_id=FORMAT_ID, gtrid=prepared, bqual=xids[prepared].bqual)
        reply = participant_pb2_grpc.ParticipantStub(channel).Prepare(participant_pb2.BranchRequest(xid=wire))
    assert reply.code == 0
    assert services.bank.resolve_in_doubt()["expired"] == 0  # nothing is past its deadline yet
    # Once reached, the stub stops remembering the branch: no expiry can touch it.
    assert prepared not in services.bank._branches
    services.bank._branches[abandoned].deadline = time.monotonic() - 1  # past it, and past the grace
    counts = services.bank.resolve_in_doubt()
    assert counts["expired"] == 1
    assert services.bank_rm.rolled_back == [xids[abandoned]]
    assert list(services.bank_rm.prepared) == [Xid(prepared, xids[prepared].bqual)]  # never touched
    assert Xid(abandoned_too_soon.gtrid, xids[abandoned_too_soon.gtrid].bqual) in services.bank_rm.active
    assert "Enlist" not in services.coordinator.names()
