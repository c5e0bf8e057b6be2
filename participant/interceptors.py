"""gRPC interceptors that carry the active global transaction from call to call.

Client side: stamp ``xatm-gtrid``/``xatm-coordinator`` on outgoing calls made while a
transaction is active, and cap the call deadline at the transaction's (the coordinator
rolls back at that time anyway, so later work is wasted). Server side: read them back and
make the transaction active while the handler runs, in its thread or task.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from typing import Any, NamedTuple

import grpc

from .context import (
    COORDINATOR_KEY,
    GTRID_KEY,
    TxContext,
    current,
    from_metadata,
    to_metadata,
    use,
    with_deadline,
)
from .xa import XatmError

__all__ = [
    "AioServerInterceptor",
    "ClientInterceptor",
    "ServerInterceptor",
    "aio_client_interceptors",
    "intercept_channel",
]

Behavior = Callable[..., Any]
Metadata = Iterable[tuple[str, str | bytes]]


# ---------------------------------------------------------------- client side


def _stamp(
    metadata: Metadata | None, timeout: float | None
) -> tuple[list[tuple[str, Any]], float | None] | None:
    """Metadata and timeout for a call made now, or None when no transaction is active."""
    tx = current()
    if tx is None:
        return None
    pairs = [(k, v) for k, v in (metadata or ()) if k not in (GTRID_KEY, COORDINATOR_KEY)]
    pairs.extend(to_metadata(tx))
    remaining = tx.remaining()
    if remaining is not None and (timeout is None or remaining < timeout):
        timeout = remaining
    return pairs, timeout


class _CallDetails(
    NamedTuple(
        "_CallDetails",
        [
            ("method", str),
            ("timeout", float | None),
            ("metadata", Any),
            ("credentials", Any),
            ("wait_for_ready", bool | None),
            ("compression", Any),
        ],
    ),
    grpc.ClientCallDetails,
):
    """Concrete ClientCallDetails: grpc only ships the abstract class for sync channels."""


class ClientInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """Sync channels: ``grpc.intercept_channel(channel, ClientInterceptor())``."""

    @staticmethod
    def _details(details: grpc.ClientCallDetails) -> grpc.ClientCallDetails:
        stamped = _stamp(details.metadata, details.timeout)
        if stamped is None:
            return details
        metadata, timeout = stamped
        return _CallDetails(
            details.method,
            timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )

    def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(client_call_details), request)

    def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return continuation(self._details(client_call_details), request)

    def intercept_stream_unary(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]
        return continuation(self._details(client_call_details), request_iterator)

    def intercept_stream_stream(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]
        return continuation(self._details(client_call_details), request_iterator)


def intercept_channel(channel: grpc.Channel) -> grpc.Channel:
    """A sync channel whose calls carry the active transaction."""
    return grpc.intercept_channel(channel, ClientInterceptor())


def _aio_details(details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
    stamped = _stamp(details.metadata, details.timeout)
    if stamped is None:
        return details
    metadata, timeout = stamped
    return grpc.aio.ClientCallDetails(
        details.method, timeout, grpc.aio.Metadata(*metadata), details.credentials, details.wait_for_ready
    )


# grpc.aio files an interceptor under the first kind it is an instance of, so each kind
# needs its own class.
class _AioUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return await continuation(_aio_details(client_call_details), request)


class _AioUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return await continuation(_aio_details(client_call_details), request)


class _AioStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]
        return await continuation(_aio_details(client_call_details), request_iterator)


class _AioStreamStream(grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):  # type: ignore[no-untyped-def]
        return await continuation(_aio_details(client_call_details), request_iterator)


def aio_client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """For ``grpc.aio.insecure_channel(target, interceptors=aio_client_interceptors())``."""
    return [_AioUnaryUnary(), _AioUnaryStream(), _AioStreamUnary(), _AioStreamStream()]


# ---------------------------------------------------------------- server side

_FACTORIES: dict[tuple[bool, bool], tuple[Callable[..., grpc.RpcMethodHandler], str]] = {
    (False, False): (grpc.unary_unary_rpc_method_handler, "unary_unary"),
    (False, True): (grpc.unary_stream_rpc_method_handler, "unary_stream"),
    (True, False): (grpc.stream_unary_rpc_method_handler, "stream_unary"),
    (True, True): (grpc.stream_stream_rpc_method_handler, "stream_stream"),
}


def _replace_behavior(
    handler: grpc.RpcMethodHandler, make: Callable[[Behavior, bool], Behavior]
) -> grpc.RpcMethodHandler:
    """A handler of the same kind whose behavior is ``make(old_behavior, response_streaming)``."""
    factory, attr = _FACTORIES[(bool(handler.request_streaming), bool(handler.response_streaming))]
    return factory(
        make(getattr(handler, attr), bool(handler.response_streaming)),
        request_deserializer=handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


def _bind(tx: TxContext) -> Callable[[Behavior, bool], Behavior]:
    """Wrap a behavior so ``tx`` is active while it runs (each step, for streamed responses).

    Response streams are resumed by the server one item at a time, possibly after other
    work ran in the same thread or task, so the transaction is set around every step
    rather than once for the generator's lifetime.
    """

    def make(behavior: Behavior, response_streaming: bool) -> Behavior:
        if response_streaming and inspect.isasyncgenfunction(behavior):

            async def astream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                bound = with_deadline(tx, context.time_remaining())
                with use(bound):
                    items = behavior(request, context)
                while True:
                    with use(bound):
                        try:
                            item = await anext(items)
                        except StopAsyncIteration:
                            return
                    yield item

            return astream
        if inspect.iscoroutinefunction(behavior):

            async def acall(request: Any, context: grpc.aio.ServicerContext) -> Any:
                with use(with_deadline(tx, context.time_remaining())):
                    try:
                        return await behavior(request, context)
                    except XatmError as err:  # e.g. EnlistError: keep its status, not UNKNOWN
                        await context.abort(err.code, err.message)

            return acall
        if response_streaming:

            def stream(request: Any, context: grpc.ServicerContext) -> Any:
                bound = with_deadline(tx, context.time_remaining())
                with use(bound):
                    items = iter(behavior(request, context))
                while True:
                    with use(bound):
                        try:
                            item = next(items)
                        except StopIteration:
                            return
                    yield item

            return stream

        def call(request: Any, context: grpc.ServicerContext) -> Any:
            with use(with_deadline(tx, context.time_remaining())):
                try:
                    return behavior(request, context)
                except XatmError as err:  # e.g. EnlistError: keep its status, not UNKNOWN
                    context.abort(err.code, err.message)

        return call

    return make


def _intercept(
    handler: grpc.RpcMethodHandler | None,
    details: grpc.HandlerCallDetails,
    deny: Callable[[XatmError], Behavior],
) -> grpc.RpcMethodHandler | None:
    if handler is None:
        return None
    try:
        tx = from_metadata(details.invocation_metadata)
    except XatmError as error:
        refusal = deny(error)
        return _replace_behavior(handler, lambda _behavior, _streaming: refusal)
    if tx is None:
        return handler
    return _replace_behavior(handler, _bind(tx))


def _deny(error: XatmError) -> Behavior:
    def deny(request: Any, context: grpc.ServicerContext) -> None:
        context.abort(error.code, error.message)

    return deny


def _adeny(error: XatmError) -> Behavior:
    # A coroutine serves any handler kind on grpc.aio (streams may write via the context).
    async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(error.code, error.message)

    return deny


class ServerInterceptor(grpc.ServerInterceptor):
    """Threaded ``grpc.server``: the handler's thread sees the caller's transaction."""

    def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        return _intercept(continuation(handler_call_details), handler_call_details, _deny)


class AioServerInterceptor(grpc.aio.ServerInterceptor):
    """``grpc.aio.server``: the handler's task sees the caller's transaction."""

    async def intercept_service(self, continuation, handler_call_details):  # type: ignore[no-untyped-def]
        return _intercept(await continuation(handler_call_details), handler_call_details, _adeny)
