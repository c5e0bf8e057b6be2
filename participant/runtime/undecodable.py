"""Requests whose bytes are not their message: INVALID_ARGUMENT and one log line, on any gRPC server.
Likewise a method a servicer leaves out: UNIMPLEMENTED and one log line.

gRPC decodes a request before any handler or interceptor runs; bytes that do not parse are
answered by the library itself, with UNKNOWN or INTERNAL and a traceback in the log. Here a
method's parser is made lenient instead: such bytes become an ``Undecodable`` marker, and the
method's behaviour refuses it, so the caller learns its request was malformed and the log says
so once. A server that authenticates (the coordinator) parses leniently and refuses the marker
itself, after the caller is known (``lenient``, ``refusal``); the others install the
interceptors below, which guard every method of every service the server holds: unary and
streamed requests, threaded and asyncio servers.

The generated base of every servicer answers a method it does not implement by raising
NotImplementedError, which grpc logs as an application error with a traceback (grpcio-health-checking's
servicers leave ``Health/List`` out, for one): the guarded plain-function methods answer it
UNIMPLEMENTED instead.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio

from xatm.participant.errors import InvalidArgumentError, Status, XatmError, error_for
from xatm.participant.runtime.grpc_status import abort, abort_async

__all__ = ["AioRefuseUndecodable", "RefuseUndecodable", "Undecodable", "lenient", "refusal"]

log = logging.getLogger(__name__)

Behavior = Callable[..., Any]

#: gRPC's handler factory and behaviour attribute for each (request, response) streaming pair.
HANDLER_FACTORIES: dict[tuple[bool, bool], tuple[Callable[..., grpc.RpcMethodHandler], str]] = {
    (False, False): (grpc.unary_unary_rpc_method_handler, "unary_unary"),
    (False, True): (grpc.unary_stream_rpc_method_handler, "unary_stream"),
    (True, False): (grpc.stream_unary_rpc_method_handler, "stream_unary"),
    (True, True): (grpc.stream_stream_rpc_method_handler, "stream_stream"),
}


@dataclass(frozen=True)
class Undecodable:
    """What a request whose bytes are not its message parses to; ``size`` in bytes."""

    size: int


def lenient(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any]:
    """``deserialize``, but bytes that do not parse give an ``Undecodable`` instead of raising.

    A method without a parser receives its bytes as they are, which always "decode".
    """

    def parse(data: bytes) -> Any:
        if deserialize is None:
            return data
        try:
            return deserialize(data)
        except Exception:  # the protobuf runtime's DecodeError, or whatever a backend raises
            return Undecodable(len(data))

    return parse


def refusal(method: str, peer: str, request: Undecodable) -> InvalidArgumentError:
    """Log the refusal (one INFO line: a client's fault, not the server's) and return the error
    to answer it with. ``method`` is the full gRPC method name, ``/package.Service/Method``."""
    log.info("refused %s from %s: %d bytes that are not its request message", method, peer, request.size)
    return InvalidArgumentError(f"the request is not a {method.rsplit('/', 1)[-1]} request message")


def unimplemented(method: str, peer: str) -> XatmError:
    """Log (one INFO line) and return the answer to a call of a method the servicer leaves out."""
    log.info("refused %s from %s: not implemented by this server", method, peer)
    return error_for(Status.UNIMPLEMENTED, f"{method} is not implemented by this server")


# ---------------------------------------------------------------- threaded servers


def _checked(requests: Iterator[Any], context: grpc.ServicerContext, method: str) -> Iterator[Any]:
    for request in requests:
        if isinstance(request, Undecodable):
            abort(context, refusal(method, context.peer(), request))
        yield request


def _sync_behavior(behavior: Behavior, method: str, request_streaming: bool) -> Behavior:
    if request_streaming:

        def streamed(requests: Iterator[Any], context: grpc.ServicerContext) -> Any:
            return behavior(_checked(requests, context, method), context)

        return streamed

    def unary(request: Any, context: grpc.ServicerContext) -> Any:
        if isinstance(request, Undecodable):
            abort(context, refusal(method, context.peer(), request))
        try:
            return behavior(request, context)
        except NotImplementedError:
            abort(context, unimplemented(method, context.peer()))

    return unary


# ---------------------------------------------------------------- asyncio servers


async def _achecked(
    requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any], method: str
) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Undecodable):
            await abort_async(context, refusal(method, context.peer(), request))
        yield request


async def _arequest(
    request: Any, context: grpc.aio.ServicerContext[Any, Any], method: str, streaming: bool
) -> Any:
    """The argument to hand the behaviour: checked requests, or the one request once checked."""
    if streaming:
        return _achecked(request, context, method)
    if isinstance(request, Undecodable):
        await abort_async(context, refusal(method, context.peer(), request))
    return request


def _aio_behavior(behavior: Behavior, method: str, request_streaming: bool) -> Behavior | None:
    """The guarded behaviour, or None for a plain generator on an asyncio server (left as it is)."""
    if inspect.isasyncgenfunction(behavior):

        async def items(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            argument = await _arequest(request, context, method, request_streaming)
            async for item in behavior(argument, context):
                yield item

        return items
    if inspect.iscoroutinefunction(behavior):

        async def call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            argument = await _arequest(request, context, method, request_streaming)
            return await behavior(argument, context)

        return call
    if not request_streaming and not inspect.isgeneratorfunction(behavior):
        # A plain function on an asyncio server (grpc's default for a method a servicer leaves
        # out, say): grpc runs it in a worker thread, and so does this.
        async def threaded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            argument = await _arequest(request, context, method, request_streaming)
            try:
                return await asyncio.to_thread(behavior, argument, context)
            except NotImplementedError:
                await abort_async(context, unimplemented(method, context.peer()))

        return threaded
    return None


# ---------------------------------------------------------------- handlers and interceptors


def guard(handler: grpc.RpcMethodHandler | None, method: str, *, aio: bool) -> grpc.RpcMethodHandler | None:
    """``handler`` with a lenient parser and a behaviour that refuses undecodable requests."""
    if handler is None:
        return None
    streaming = bool(handler.request_streaming)
    factory, attr = HANDLER_FACTORIES[(streaming, bool(handler.response_streaming))]
    behavior = getattr(handler, attr)
    wrap = _aio_behavior if aio else _sync_behavior
    guarded = wrap(behavior, method, streaming)
    if guarded is None:
        return handler
    return factory(
        guarded,
        request_deserializer=lenient(handler.request_deserializer),
        response_serializer=handler.response_serializer,
    )


class RefuseUndecodable(grpc.ServerInterceptor):
    """Threaded ``grpc.server``: every method refuses undecodable requests with INVALID_ARGUMENT.

    ``inner`` (optional) runs first, on the handler as the server found it, so one entry in the
    server's ``interceptors`` does both.
    """

    def __init__(self, inner: grpc.ServerInterceptor | None = None):
        self.inner = inner

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        if self.inner is None:
            handler = continuation(handler_call_details)
        else:
            handler = self.inner.intercept_service(continuation, handler_call_details)
        return guard(handler, handler_call_details.method, aio=False)


class AioRefuseUndecodable(grpc.aio.ServerInterceptor):
    """``grpc.aio.server``: ``RefuseUndecodable`` for asyncio behaviours."""

    def __init__(self, inner: grpc.aio.ServerInterceptor | None = None):
        self.inner = inner

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        if self.inner is None:
            handler = await continuation(handler_call_details)
        else:
            handler = await self.inner.intercept_service(continuation, handler_call_details)
        return guard(handler, handler_call_details.method, aio=True)
