"""A tiny participant for the initiator and business-error tests: ``test.Shop/Order`` over a SQLite store.

    python -m tests.shop_service NAME DB COORDINATOR PORT [--aio]

The request is ``MODE:KEY`` (raw bytes, no proto). Every mode first writes KEY=1 in the
caller's branch (or a local transaction), then ends the way MODE says, so a test can see
both where the work went and what reason reached the coordinator:

    ok            return normally
    abort         context.abort(FAILED_PRECONDITION, "out of stock: KEY") inside the branch
    set_code      context.set_code + set_details inside the branch, then return normally
    raise         raise ValueError("bad KEY") inside the branch
    raise_empty   raise ValueError() inside the branch
    xatm          raise XatmError(RESOURCE_EXHAUSTED, "quota for KEY") inside the branch
    abort_after   the branch block ends well, then context.abort(FAILED_PRECONDITION, ...)

``OrderMany`` streams: it writes KEY=1 in a branch, yields the gtrid, then fails after the
branch block by MODE ``abort`` or ``raise`` (anything else ends the stream normally).
``Count`` (same service) answers how many committed keys the store holds, as ASCII digits.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from concurrent import futures
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from xatm.participant import ParticipantStub
from xatm.participant.errors import ResourceExhaustedError
from xatm.participant.stores.sqlite import SqliteRM
from xatm.participant.xa import Xid

SERVICE = "test.Shop"
ORDER = f"/{SERVICE}/Order"
ORDER_MANY = f"/{SERVICE}/OrderMany"
COUNT = f"/{SERVICE}/Count"
REFUSAL = grpc.StatusCode.FAILED_PRECONDITION


def _work(rm: SqliteRM, xid: Xid, key: str, mode: str) -> None:
    """The business step inside the branch; the modes that fail do it after the write."""
    rm.put(xid, key, 1)
    if mode == "raise":
        raise ValueError(f"bad {key}")
    if mode == "raise_empty":
        raise ValueError()
    if mode == "xatm":
        raise ResourceExhaustedError(f"quota for {key}")


def _parse(request: bytes) -> tuple[str, str]:
    mode, _, key = request.decode().partition(":")
    return mode, key


def _handlers(rm: SqliteRM, stub: ParticipantStub) -> dict[str, grpc.RpcMethodHandler]:
    def order(request: bytes, context: grpc.ServicerContext) -> bytes:
        mode, key = _parse(request)
        with stub.branch() as xid:
            _work(rm, xid, key, mode)
            if mode == "abort":
                context.abort(REFUSAL, f"out of stock: {key}")
            if mode == "set_code":
                context.set_code(REFUSAL)
                context.set_details(f"out of stock: {key}")
                return b""
        if mode == "abort_after":
            context.abort(REFUSAL, f"out of stock: {key}")
        return xid.gtrid.encode()

    def order_many(request: bytes, context: grpc.ServicerContext) -> Iterator[bytes]:
        mode, key = _parse(request)
        with stub.branch() as xid:
            rm.put(xid, key, 1)
        yield xid.gtrid.encode()
        if mode == "abort":
            context.abort(REFUSAL, f"out of stock: {key}")
        if mode == "raise":
            raise ValueError(f"bad {key}")

    def count(request: bytes, context: grpc.ServicerContext) -> bytes:
        return str(len(rm.items())).encode()

    return {
        "Order": grpc.unary_unary_rpc_method_handler(order),
        "OrderMany": grpc.unary_stream_rpc_method_handler(order_many),
        "Count": grpc.unary_unary_rpc_method_handler(count),
    }


def _aio_handlers(rm: SqliteRM, stub: ParticipantStub) -> dict[str, grpc.RpcMethodHandler]:
    async def order(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        mode, key = _parse(request)
        async with stub.abranch() as xid:
            await asyncio.to_thread(_work, rm, xid, key, mode)
            if mode == "abort":
                await context.abort(REFUSAL, f"out of stock: {key}")
            if mode == "set_code":
                context.set_code(REFUSAL)
                context.set_details(f"out of stock: {key}")
                return b""
        if mode == "abort_after":
            await context.abort(REFUSAL, f"out of stock: {key}")
        return xid.gtrid.encode()

    async def order_many(request: bytes, context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        mode, key = _parse(request)
        async with stub.abranch() as xid:
            await asyncio.to_thread(rm.put, xid, key, 1)
        yield xid.gtrid.encode()
        if mode == "abort":
            await context.abort(REFUSAL, f"out of stock: {key}")
        if mode == "raise":
            raise ValueError(f"bad {key}")

    async def count(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        return str(len(await asyncio.to_thread(rm.items))).encode()

    return {
        "Order": grpc.unary_unary_rpc_method_handler(order),
        "OrderMany": grpc.unary_stream_rpc_method_handler(order_many),
        "Count": grpc.unary_unary_rpc_method_handler(count),
    }


def _generic(handlers: dict[str, grpc.RpcMethodHandler]) -> Any:
    return grpc.method_handlers_generic_handler(SERVICE, handlers)


def serve(name: str, db: str, coordinator: str, port: int) -> None:
    rm = SqliteRM(db, name)
    stub = ParticipantStub(rm, coordinator=coordinator, advertise=f"127.0.0.1:{port}")
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), interceptors=[stub.server_interceptor()])
    stub.add_to_server(server)
    server.add_generic_rpc_handlers((_generic(_handlers(rm, stub)),))
    checker = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    checker.set("", health_pb2.HealthCheckResponse.SERVING)
    server.wait_for_termination()


async def aserve(name: str, db: str, coordinator: str, port: int) -> None:
    rm = SqliteRM(db, name)
    stub = ParticipantStub(rm, coordinator=coordinator, advertise=f"127.0.0.1:{port}")
    server = grpc.aio.server(interceptors=[stub.aio_server_interceptor()])
    stub.add_to_server(server)
    server.add_generic_rpc_handlers((_generic(_aio_handlers(rm, stub)),))
    checker = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(checker, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await checker.set("", health_pb2.HealthCheckResponse.SERVING)
    await server.wait_for_termination()


if __name__ == "__main__":
    name, db, coordinator, port = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    if "--aio" in sys.argv[5:]:
        asyncio.run(aserve(name, db, coordinator, port))
    else:
        serve(name, db, coordinator, port)
