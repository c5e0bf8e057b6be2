"""The initiator in process: commit answers map to exceptions a caller can tell apart, for every
outcome and status, and an async transaction never begun warns.

A held transaction on real processes is in tests/system/test_initiator.py.
"""

from __future__ import annotations

import asyncio
import gc
from concurrent import futures

import grpc
import pytest

import xatm.participant as xatm
from xatm.participant import (
    AsyncTransactionManager,
    TransactionManager,
    current,
)
from xatm.participant.api.v1 import coordinator_pb2
from xatm.participant.errors import Status
from xatm.participant.xa import TxOutcome, TxStatus


def test_an_async_transaction_never_begun_warns() -> None:
    tm = AsyncTransactionManager("127.0.0.1:1")
    with pytest.warns(RuntimeWarning, match="never begun"):
        tm.begin()  # forgot the await: the handle is dropped at once
        gc.collect()


# ---------------------------------------------------------------- commit answers


def _expected(outcome: TxOutcome, status: TxStatus | None) -> type[xatm.TransactionError] | None:
    if outcome == TxOutcome.TX_OK:
        return None
    if outcome == TxOutcome.TX_ROLLBACK:
        return xatm.TransactionRolledBack
    if outcome == TxOutcome.TX_MIXED:
        return xatm.TransactionHeuristicMixed
    if outcome == TxOutcome.TX_HAZARD:
        final = status is None or status.is_final
        return xatm.TransactionHeuristicHazard if final else xatm.TransactionOutcomeUnknown
    return xatm.TransactionError


@pytest.mark.parametrize("status", [None, *TxStatus], ids=lambda s: s.label if s else "unset")
@pytest.mark.parametrize("outcome", list(TxOutcome), ids=lambda o: o.name)
def test_every_outcome_and_status_maps_to_its_exception(outcome: TxOutcome, status: TxStatus | None) -> None:
    reply = coordinator_pb2.CompletionResponse(gtrid="n1.abc", outcome=outcome, status=status or 0)
    wanted = _expected(outcome, status)
    if wanted is None:
        return
    error = xatm.TransactionError.of("commit", reply)
    assert type(error) is wanted
    assert (error.gtrid, error.outcome, error.transaction_status) == ("n1.abc", outcome, status)
    assert error.status == (Status.ABORTED if wanted is xatm.TransactionRolledBack else Status.UNKNOWN)
    unknown = wanted is xatm.TransactionOutcomeUnknown
    assert ("not known yet" in error.message and "xactl show n1.abc" in error.message) is unknown


@pytest.mark.parametrize(
    ("outcome", "status", "wanted"),
    [
        (TxOutcome.TX_HAZARD, TxStatus.COMMITTING, xatm.TransactionOutcomeUnknown),
        (TxOutcome.TX_HAZARD, TxStatus.PREPARED, xatm.TransactionOutcomeUnknown),
        (TxOutcome.TX_HAZARD, TxStatus.HEURISTICALLY_COMPLETED, xatm.TransactionHeuristicHazard),
        (TxOutcome.TX_MIXED, TxStatus.HEURISTICALLY_COMPLETED, xatm.TransactionHeuristicMixed),
        (TxOutcome.TX_ROLLBACK, TxStatus.ROLLEDBACK, xatm.TransactionRolledBack),
    ],
)
def test_sync_and_async_commit_raise_the_mapped_exception(
    outcome: TxOutcome, status: TxStatus, wanted: type[xatm.TransactionError]
) -> None:
    """Through a coordinator whose Commit answers ``outcome`` with ``status``."""
    server = grpc.server(futures.ThreadPoolExecutor(2))
    answer = coordinator_pb2.CompletionResponse(outcome=outcome, status=status)

    def begin(request: coordinator_pb2.BeginRequest, context: grpc.ServicerContext) -> object:
        return coordinator_pb2.BeginResponse(gtrid="n1.abc", timeout_ms=60_000)

    def commit(request: coordinator_pb2.CompletionRequest, context: grpc.ServicerContext) -> object:
        answer.gtrid = request.gtrid
        return answer

    handlers = {
        "Begin": grpc.unary_unary_rpc_method_handler(
            begin, coordinator_pb2.BeginRequest.FromString, coordinator_pb2.BeginResponse.SerializeToString
        ),
        "Commit": grpc.unary_unary_rpc_method_handler(
            commit,
            coordinator_pb2.CompletionRequest.FromString,
            coordinator_pb2.CompletionResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("xatm.v1.Coordinator", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    address = f"127.0.0.1:{port}"
    try:
        with TransactionManager(address) as tm, pytest.raises(wanted), tm.begin():
            pass
        assert current() is None

        async def main() -> None:
            async with AsyncTransactionManager(address) as tm:
                tx = await tm.begin()
                with pytest.raises(wanted):
                    await tx.commit()

        asyncio.run(main())
    finally:
        server.stop(None)
