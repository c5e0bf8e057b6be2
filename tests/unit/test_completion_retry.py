"""A Commit or Rollback that got no answer is asked again for ``completion_retry`` seconds.

An in-process coordinator fails the first calls as a restarting one would (UNAVAILABLE), then
answers; refusals that are answers (INVALID_ARGUMENT here) are never asked again.
"""

from __future__ import annotations

import asyncio
import gc
import weakref
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field

import grpc
import pytest

from xatm.participant import AsyncTransactionManager, TransactionManager
from xatm.participant.api.v1 import coordinator_pb2
from xatm.participant.errors import InvalidArgumentError, Status, XatmError
from xatm.participant.xa import TxOutcome


@dataclass
class FlakyCoordinator:
    """Fails the first ``failures`` Commit/Rollback calls with ``code``, then answers TX_OK."""

    failures: int = 0
    code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    asked: list[tuple[str, coordinator_pb2.CompletionRequest]] = field(default_factory=list)
    address: str = ""

    def complete(self, verb: str) -> grpc.RpcMethodHandler:
        def serve(request: coordinator_pb2.CompletionRequest, context: grpc.ServicerContext) -> object:
            self.asked.append((verb, request))
            if len(self.asked) <= self.failures:
                context.abort(self.code, "restarting")
            return coordinator_pb2.CompletionResponse(gtrid=request.gtrid, outcome=TxOutcome.TX_OK)

        return grpc.unary_unary_rpc_method_handler(
            serve,
            coordinator_pb2.CompletionRequest.FromString,
            coordinator_pb2.CompletionResponse.SerializeToString,
        )


@pytest.fixture
def coordinator() -> Iterator[FlakyCoordinator]:
    fake = FlakyCoordinator()

    def begin(request: coordinator_pb2.BeginRequest, context: grpc.ServicerContext) -> object:
        return coordinator_pb2.BeginResponse(gtrid="n1.abc", timeout_ms=60_000)

    handlers = {
        "Begin": grpc.unary_unary_rpc_method_handler(
            begin, coordinator_pb2.BeginRequest.FromString, coordinator_pb2.BeginResponse.SerializeToString
        ),
        "Commit": fake.complete("Commit"),
        "Rollback": fake.complete("Rollback"),
    }
    server = grpc.server(futures.ThreadPoolExecutor(2))
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("xatm.v1.Coordinator", handlers),))
    fake.address = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    try:
        yield fake
    finally:
        server.stop(None)


@pytest.mark.parametrize("verb", ["Commit", "Rollback"])
def test_a_completion_without_answer_is_asked_again_until_answered(
    coordinator: FlakyCoordinator, verb: str
) -> None:
    coordinator.failures = 3
    with TransactionManager(coordinator.address) as tm:
        tx = tm.begin()
        reply = tx.commit() if verb == "Commit" else tx.rollback()
    assert reply.outcome == TxOutcome.TX_OK
    assert [v for v, _ in coordinator.asked] == [verb] * 4
    # Each try says what is left of the timeout then, never more than the try before.
    left = [r.timeout_ms for _, r in coordinator.asked]
    assert left == sorted(left, reverse=True) and len(set(left)) == 4


def test_the_async_manager_asks_again_too(coordinator: FlakyCoordinator) -> None:
    coordinator.failures = 2

    async def main() -> coordinator_pb2.CompletionResponse:
        async with AsyncTransactionManager(coordinator.address) as tm:
            tx = await tm.begin()
            return await tx.commit()

    assert asyncio.run(main()).outcome == TxOutcome.TX_OK
    assert len(coordinator.asked) == 3


def test_without_retry_the_first_failure_says_the_outcome_is_unknown(coordinator: FlakyCoordinator) -> None:
    coordinator.failures = 1
    with TransactionManager(coordinator.address, completion_retry=0) as tm:
        tx = tm.begin()
        with pytest.raises(XatmError) as raised:
            tx.commit()
    assert raised.value.status == Status.UNAVAILABLE
    assert f"the outcome of the commit of {tx.gtrid} is unknown" in raised.value.message
    assert len(coordinator.asked) == 1


def test_a_coordinator_that_stays_away_is_given_up_in_the_retry_time(
    coordinator: FlakyCoordinator,
) -> None:
    coordinator.failures = 10_000
    with TransactionManager(coordinator.address, completion_retry=0.3) as tm:
        tx = tm.begin()
        with pytest.raises(XatmError) as raised:
            tx.commit()
    assert raised.value.status == Status.UNAVAILABLE and "is unknown" in raised.value.message
    # Pauses of 0.05, 0.1, 0.2 (cut to what is left) fit in 0.3 s: a handful of tries, not a spin.
    assert 2 <= len(coordinator.asked) <= 5


def test_an_answer_that_refuses_is_not_asked_again(coordinator: FlakyCoordinator) -> None:
    coordinator.failures, coordinator.code = 1, grpc.StatusCode.INVALID_ARGUMENT
    with TransactionManager(coordinator.address) as tm:
        tx = tm.begin()
        with pytest.raises(InvalidArgumentError):
            tx.commit()
    assert len(coordinator.asked) == 1


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0])
def test_a_bad_retry_time_is_refused_at_construction(bad: float) -> None:
    with pytest.raises(InvalidArgumentError, match="completion_retry"):
        TransactionManager("127.0.0.1:1", completion_retry=bad)


def test_a_negative_retry_time_says_that_0_is_allowed() -> None:
    with pytest.raises(InvalidArgumentError, match=r"must be 0 \(ask once\) or more seconds"):
        TransactionManager("127.0.0.1:1", completion_retry=-1)


def test_a_manager_never_closed_is_still_collected(coordinator: FlakyCoordinator) -> None:
    """The manager looks at its channel's connection (to relearn after a restart): nothing it
    leaves behind (a connectivity watch held by gRPC's threads) may keep a manager its
    application dropped alive."""
    tm = TransactionManager(coordinator.address)
    tm.begin().commit()
    dropped = weakref.ref(tm)
    del tm
    gc.collect()
    assert dropped() is None
