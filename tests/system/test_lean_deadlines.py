"""Lean (reported) and eager transactions at their edges, with real processes: a commit asked past
the transaction's timeout, a Commit that carries no time left, and an eager transaction whose
coordinator is killed and restarted before the commit (its forgotten branches must lose their
locks at once, not at the participant's own expiry).

Also: business calls made with a per-call timeout far shorter than the transaction's must not make
their participants end the branches at that call's deadline (they know the transaction's own).

Real processes: a coordinator and one shop participant of tests/shop_service.py, whose branches
write the key named in the request (a second write of the same key waits for the first's lock).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.bank_system import BankSystem
from tests.chaos import FAST_RECOVERY
from tests.shop_system import Shop, start_shop
from xatm.coordinator.tools.bank._proto import bank_pb2
from xatm.participant import TransactionManager, TransactionRolledBack
from xatm.participant.api.v1 import coordinator_pb2, coordinator_pb2_grpc, xa_pb2
from xatm.participant.xa import TxOutcome, TxStatus, XaCode


@pytest.fixture
def shop(tmp_path: Path) -> Iterator[Shop]:
    yield from start_shop(tmp_path, aio=False)


def _learnt(shop: Shop) -> None:
    """The manager's first transaction begins at the coordinator; the ones after are lean."""
    with shop.tm.begin():
        shop.order(b"ok:first", timeout=10)
    assert shop.tm.node_id is not None


@pytest.mark.parametrize("late", [1.0, 3.0])
def test_a_lean_commit_asked_past_the_timeout_rolls_back(shop: Shop, late: float) -> None:
    _learnt(shop)
    tx = shop.tm.begin(timeout=0.3)
    started = time.monotonic()
    shop.order(b"ok:late", timeout=10)  # a per-call timeout longer than the transaction's
    time.sleep(max(0.0, late - (time.monotonic() - started)))
    with pytest.raises(TransactionRolledBack) as caught:
        tx.commit()
    assert caught.value.rollback_code == XaCode.XA_RBTIMEOUT
    assert "300 ms" in caught.value.rollback_reason  # the real timeout, not what remained
    assert TxStatus(tx.status().status) == TxStatus.ROLLEDBACK
    assert int(shop.count(b"", timeout=10)) == 1  # only the first transaction's order
    # The branch was rolled back by the Rollback that carried it: its lock is gone now.
    with shop.tm.begin(timeout=10):
        shop.order(b"ok:late", timeout=10)
    assert int(shop.count(b"", timeout=10)) == 2


def test_a_commit_carrying_no_time_left_never_commits(shop: Shop) -> None:
    """The coordinator's side: a Commit that creates the transaction with the 1 ms initiators send
    once its timeout is spent rolls back for XA_RBTIMEOUT, even though it arrives within that 1 ms."""
    _learnt(shop)
    tx = shop.tm.begin(timeout=30)
    shop.order(b"ok:spent", timeout=10)
    branches, _ = tx._reported()
    assert len(branches) == 1
    tx._end()
    request = coordinator_pb2.CompletionRequest(gtrid=tx.gtrid, timeout_ms=1, branches=branches)
    with grpc.insecure_channel(shop.coordinator.address) as channel:
        reply = coordinator_pb2_grpc.CoordinatorStub(channel).Commit(request, timeout=10)
    assert TxOutcome(reply.outcome) == TxOutcome.TX_ROLLBACK
    assert reply.rollback_code == xa_pb2.XA_RBTIMEOUT
    assert int(shop.count(b"", timeout=10)) == 1


def test_an_eager_transaction_forgotten_by_a_restart_releases_its_locks_at_once(shop: Shop) -> None:
    with TransactionManager(shop.coordinator.address, timeout=30, eager=True) as tm:
        tx = tm.begin()
        shop.order(b"ok:eager", timeout=10)  # enlisted at the coordinator, and reported
        shop.coordinator.kill()
        shop.coordinator.start()
        with pytest.raises(TransactionRolledBack) as caught:
            tx.commit()
        assert "restarted" in caught.value.rollback_reason
        # The next transaction writes the key the forgotten branch had locked: it commits only if
        # the refused Commit rolled that branch back (else it waits out the lock and rolls back).
        with tm.begin():
            shop.order(b"ok:eager", timeout=10)
    assert int(shop.count(b"", timeout=10)) == 1


#: Past the per-call timeout by more than the banks' call_timeout (10 s) and in-doubt pass (1 s):
#: a participant that took the call's deadline for the transaction's has ended its branch by then.
PAST_THE_CALLS_DEADLINE = 14.0


def test_a_short_per_call_timeout_does_not_end_the_branches_early(tmp_path: Path) -> None:
    system = BankSystem(tmp_path)
    try:
        system.start(bank_env={name: dict(FAST_RECOVERY) for name in system.banks})
        bank = system.bank
        assert bank is not None
        with bank.tm.begin():  # the manager's first transaction begins at the coordinator
            bank.source.Apply(bank_pb2.ApplyRequest(account="alice", amount=-1), timeout=10)
        tx = bank.tm.begin(timeout=60)
        bank.source.Apply(bank_pb2.ApplyRequest(account="alice", amount=-10), timeout=1)
        bank.target.Apply(bank_pb2.ApplyRequest(account="bob", amount=10), timeout=1)
        time.sleep(PAST_THE_CALLS_DEADLINE)
        assert TxOutcome(tx.commit().outcome) == TxOutcome.TX_OK
        assert (system.balance("bank-a", "alice"), system.balance("bank-b", "bob")) == (989, 1010)
    finally:
        system.stop()
