"""gRPC interceptors that carry the active global transaction from call to call.

Client side: stamp ``xatm-gtrid``/``xatm-coordinator`` on outgoing calls made while a
transaction is active, and cap the call deadline at the transaction's (the coordinator
rolls back at that time anyway, so later work is wasted); on unary calls, ask for branch
reports and gather the one the reply's trailing metadata carries. Server side: read them back
and make the transaction active while the handler runs, in its thread or task, tell the
participant stub when the handler fails, with the status its caller sees, and send the branches
reported during the call back in the reply's trailing metadata, whether it succeeded or failed.

Streamed calls never ask for reports: their trailers arrive only once the stream is read to its
end, possibly after the transaction was committed, so a participant they reach enlists itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any, NamedTuple

import grpc

from xatm.participant.client.context import (
    COORDINATOR_KEY,
    DEADLINE_KEY,
    GTRID_KEY,
    REPORTS_KEY,
    Binding,
    Reported,
    Serving,
    TxContext,
    call_status,
    current,
    describe_failure,
    from_metadata,
    reported,
    serving,
    to_metadata,
    use,
    with_deadline,
)
from xatm.participant.errors import XatmError
from xatm.participant.runtime import tracing
from xatm.participant.runtime.grpc_status import abort, abort_async, to_grpc
from xatm.participant.runtime.undecodable import HANDLER_FACTORIES as _FACTORIES

__all__ = [
    "AioServerInterceptor",
    "ClientInterceptor",
    "HandlerCache",
    "ServerInterceptor",
    "aio_client_interceptors",
    "intercept_channel",
]

log = logging.getLogger(__name__)

Behavior = Callable[..., Any]
Metadata = Iterable[tuple[str, str | bytes]]


# ---------------------------------------------------------------- client side


_OURS = (GTRID_KEY, COORDINATOR_KEY, REPORTS_KEY, DEADLINE_KEY)


def _stamp(
    metadata: Metadata | None, timeout: float | None, unary: bool
) -> tuple[list[tuple[str, Any]], float | None, Reported | None] | None:
    """Metadata, timeout and where the reply's branch report goes for a call made now, or None
    when no transaction is active."""
    tx = current()
    if tx is None:
        return None
    collector = reported(tx) if unary and tx.reports else None
    pairs = [(k, v) for k, v in (metadata or ()) if k not in _OURS]
    pairs.extend(to_metadata(tx, reports=collector is not None))
    pairs.extend(tracing.inject())
    remaining = tx.remaining()
    if remaining is not None and (timeout is None or remaining < timeout):
        timeout = remaining
    return pairs, timeout, collector


def _absorb_when_done(outcome: Any, collector: Reported | None) -> Any:
    """Gather the branch report of a sync call once it ends (at once for a blocking call)."""
    if collector is not None:
        outcome.add_done_callback(lambda call: collector.absorb(_trailers(call)))
    return outcome


def _trailers(call: Any) -> Any:
    try:
        return call.trailing_metadata()
    except Exception:  # a call that failed before any answer has none
        return None


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
    def _details(
        details: grpc.ClientCallDetails, unary: bool = False
    ) -> tuple[grpc.ClientCallDetails, Reported | None]:
        stamped = _stamp(details.metadata, details.timeout, unary)
        if stamped is None:
            return details, None
        metadata, timeout, collector = stamped
        return _CallDetails(
            details.method,
            timeout,
            metadata,
            details.credentials,
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        ), collector

    # One interceptor serves every method, so requests and calls are typed Any here.
    def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        details, collector = self._details(client_call_details, unary=True)
        return _absorb_when_done(continuation(details, request), collector)

    def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request: Any,
    ) -> Any:
        return continuation(self._details(client_call_details)[0], request)

    def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return continuation(self._details(client_call_details)[0], request_iterator)

    def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.ClientCallDetails, Any], Any],
        client_call_details: grpc.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return continuation(self._details(client_call_details)[0], request_iterator)


def intercept_channel(channel: grpc.Channel) -> grpc.Channel:
    """A sync channel whose calls carry the active transaction."""
    return grpc.intercept_channel(channel, ClientInterceptor())


def _aio_details(
    details: grpc.aio.ClientCallDetails, unary: bool = False
) -> tuple[grpc.aio.ClientCallDetails, Reported | None]:
    stamped = _stamp(details.metadata, details.timeout, unary)
    if stamped is None:
        return details, None
    metadata, timeout, collector = stamped
    return grpc.aio.ClientCallDetails(
        details.method, timeout, grpc.aio.Metadata(*metadata), details.credentials, details.wait_for_ready
    ), collector


# grpc.aio files an interceptor under the first kind it is an instance of, so each kind
# needs its own class. Each serves every method, so requests and calls are typed Any.
class _AioUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        details, collector = _aio_details(client_call_details, unary=True)
        call = await continuation(details, request)
        if collector is not None:
            # The report must be gathered before the caller can go on (and commit): wait for the
            # answer here; the caller's own await of the call then returns (or raises) at once.
            with contextlib.suppress(grpc.RpcError):  # the caller sees it; its report still counts
                await call
            collector.absorb(await call.trailing_metadata())
        return call


class _AioUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        return await continuation(_aio_details(client_call_details)[0], request)


class _AioStreamUnary(grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(_aio_details(client_call_details)[0], request_iterator)


class _AioStreamStream(grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Awaitable[Any]],
        client_call_details: grpc.aio.ClientCallDetails,
        request_iterator: Any,
    ) -> Any:
        return await continuation(_aio_details(client_call_details)[0], request_iterator)


def aio_client_interceptors() -> list[grpc.aio.ClientInterceptor]:
    """For ``grpc.aio.insecure_channel(target, interceptors=aio_client_interceptors())``."""
    return [_AioUnaryUnary(), _AioUnaryStream(), _AioStreamUnary(), _AioStreamStream()]


# ---------------------------------------------------------------- server side


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


def _report(tx: TxContext, call: Serving, reason: str) -> None:
    """Tell the hooks registered in the call (a stub that did work in ``tx``) why it failed."""
    for hook in call.on_failure:
        try:
            hook(tx, reason)
        except Exception as error:  # best effort: the caller still gets the handler's status
            log.warning("could not report the failure of a call in %s (%s): %s", tx.gtrid, reason, error)


def _with_report(call: Serving, trailers: Any = None) -> tuple[Any, ...]:
    """``trailers`` (default: those the handler set) plus the branches reported during the call."""
    if trailers is None:
        trailers = call.context.trailing_metadata()
    own = tuple(trailers or ())
    if not call.reported:
        return own
    key, value = call.reported.trailer()
    return (*[(k, v) for k, v in own if k != key], (key, value))


def _send_report(call: Serving) -> None:
    """Send the branches reported during the call back to its caller, in the trailing metadata."""
    if call.reported:
        call.context.set_trailing_metadata(_with_report(call))


@contextmanager
def _handling(tx: TxContext, call: Serving) -> Iterator[None]:
    """Run (a step of) a sync handler with ``tx`` active, reporting how it fails."""
    with use(_binding(tx, call)), serving(call):
        try:
            yield
        except Exception as failure:
            _report(tx, call, describe_failure(failure))
            _send_report(call)
            if isinstance(failure, XatmError):  # e.g. EnlistError: keep its status, not UNKNOWN
                abort(call.context, failure)
            raise


def _binding(tx: TxContext, call: Serving) -> Binding:
    """One binding per served call, so every step of a streamed one shares it."""
    if call.binding is None:
        call.binding = Binding(tx)
    return call.binding


class _DeferredAbort:
    """A grpc.aio servicer context whose ``abort()`` sends the status only after the handler's
    failure was reported.

    grpc.aio sends an abort's status at once, while the exception is still on its way out
    through the stub's branch: the caller's rollback would then race the stub marking the
    transaction rollback-only, and the reason could be lost. Everything else is the real
    context's.
    """

    def __init__(self, context: grpc.aio.ServicerContext):
        self._context = context
        #: The arguments of the handler's abort(), to replay on the real context.
        self.aborted: tuple[Any, ...] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._context, name)

    async def abort(self, code: grpc.StatusCode, details: str = "", trailing_metadata: Any = ()) -> None:
        self.aborted = (code, details, trailing_metadata)
        self._context.set_code(code)  # what describe_failure reads meanwhile
        self._context.set_details(details)
        raise grpc.aio.AbortError("Locally aborted.")


@asynccontextmanager
async def _ahandling(tx: TxContext, call: Serving, proxy: _DeferredAbort) -> AsyncIterator[None]:
    """``_handling`` for grpc.aio; the hooks block on the coordinator, so in a worker thread."""
    with use(_binding(tx, call)), serving(call):
        try:
            yield
        except Exception as failure:
            if call.on_failure:
                await asyncio.to_thread(_report, tx, call, describe_failure(failure))
            _send_report(call)
            if isinstance(failure, XatmError):
                await call.context.abort(to_grpc(failure.status), failure.message, _with_report(call))
            if proxy.aborted is not None:
                code, details, trailers = proxy.aborted
                await call.context.abort(code, details, _with_report(call, trailers))
            raise


def _ended(tx: TxContext, call: Serving) -> None:
    """The handler returned: if it set an error status (set_code, then return), report it; send
    the branches reported during the call back to the caller."""
    if call.on_failure and call_status(call.context) is not None:
        with use(_binding(tx, call)), serving(call):
            _report(tx, call, describe_failure())
    _send_report(call)


async def _aended(tx: TxContext, call: Serving) -> None:
    """``_ended`` for grpc.aio, off the event loop only when there is something to report."""
    if call.on_failure and call_status(call.context) is not None:
        await asyncio.to_thread(_ended, tx, call)
    else:
        _send_report(call)


def _serving(tx: TxContext, context: Any) -> tuple[TxContext, Serving]:
    """The transaction as this call sees it (with the call's deadline) and the call's record."""
    bound = with_deadline(tx, context.time_remaining())
    return bound, Serving(context, reported=Reported(tx.gtrid) if tx.reports else None)


def _bind(tx: TxContext) -> Callable[[Behavior, bool], Behavior]:
    """Wrap a behavior so ``tx`` is active while it runs (each step, for streamed responses).

    Response streams are resumed by the server one item at a time, possibly after other
    work ran in the same thread or task, so the transaction is set around every step
    rather than once for the generator's lifetime. However the handler fails, the hooks
    registered during the call hear of it (see ``on_call_failure``).
    """

    def make(behavior: Behavior, response_streaming: bool) -> Behavior:
        if response_streaming and inspect.isasyncgenfunction(behavior):

            async def astream(request: Any, context: grpc.aio.ServicerContext) -> Any:
                bound, call = _serving(tx, context)
                proxy = _DeferredAbort(context)
                async with _ahandling(bound, call, proxy):
                    items = behavior(request, proxy)
                while True:
                    async with _ahandling(bound, call, proxy):
                        try:
                            item = await anext(items)
                        except StopAsyncIteration:
                            break
                    yield item
                await _aended(bound, call)

            return astream
        if inspect.iscoroutinefunction(behavior):

            async def acall(request: Any, context: grpc.aio.ServicerContext) -> Any:
                bound, call = _serving(tx, context)
                proxy = _DeferredAbort(context)
                with tracing.incoming("xatm.service.call", context, gtrid=tx.gtrid):
                    async with _ahandling(bound, call, proxy):
                        reply = await behavior(request, proxy)
                await _aended(bound, call)
                return reply

            return acall
        # A plain function (grpc.aio runs it in a worker thread): as on a threaded server.
        return _sync_bound(behavior, response_streaming, lambda _context: tx)

    return make


def _call_tx(context: grpc.ServicerContext) -> TxContext | None:
    """The transaction a served call's metadata names, None for none; malformed metadata
    aborts the call (INVALID_ARGUMENT) before the handler runs."""
    try:
        return from_metadata(context.invocation_metadata())
    except XatmError as error:
        abort(context, error)


def _sync_bound(
    behavior: Behavior,
    response_streaming: bool,
    tx_of: Callable[[grpc.ServicerContext], TxContext | None] = _call_tx,
) -> Behavior:
    """A plain-function behavior that makes the call's transaction, ``tx_of(context)``, active
    while it runs (each step, for a streamed response; see ``_bind``). By default the transaction
    is read from each call's metadata, so one wrapped handler serves every call of the method."""
    if response_streaming:

        def stream(request: Any, context: grpc.ServicerContext) -> Any:
            tx = tx_of(context)
            if tx is None:
                yield from behavior(request, context)
                return
            bound, call = _serving(tx, context)
            with _handling(bound, call):
                items = iter(behavior(request, context))
            while True:
                with _handling(bound, call):
                    try:
                        item = next(items)
                    except StopIteration:
                        break
                yield item
            _ended(bound, call)

        return stream

    def unary(request: Any, context: grpc.ServicerContext) -> Any:
        tx = tx_of(context)
        if tx is None:
            try:
                return behavior(request, context)
            except XatmError as failure:  # e.g. a lock wait in a local call: its status, not UNKNOWN
                abort(context, failure)
        bound, call = _serving(tx, context)
        with tracing.incoming("xatm.service.call", context, gtrid=tx.gtrid), _handling(bound, call):
            reply = behavior(request, context)
        _ended(bound, call)
        return reply

    return unary


class HandlerCache:
    """Wrapped method handlers made once per method handler, for interceptors whose wrapping
    does not depend on the call: a server's handlers are the same objects call after call.

    Bounded: past ``limit`` handlers (a generic handler that makes a new one per call) the
    wrapping is made per call again, as without a cache.
    """

    def __init__(
        self, wrap: Callable[[grpc.RpcMethodHandler, str], grpc.RpcMethodHandler], limit: int = 1024
    ) -> None:
        self._wrap = wrap
        self._limit = limit
        self._made: dict[grpc.RpcMethodHandler, grpc.RpcMethodHandler] = {}

    def get(self, handler: grpc.RpcMethodHandler | None, method: str) -> grpc.RpcMethodHandler | None:
        """``wrap(handler, method)``, made at most once per handler; None for None."""
        if handler is None:
            return None
        wrapped = self._made.get(handler)
        if wrapped is None:
            wrapped = self._wrap(handler, method)
            if len(self._made) < self._limit:
                self._made[handler] = wrapped
        return wrapped


def _intercept(
    handler: grpc.RpcMethodHandler | None, details: grpc.HandlerCallDetails
) -> grpc.RpcMethodHandler | None:
    """(grpc.aio) ``handler`` bound to the transaction the call's metadata names; malformed
    metadata is refused."""
    if handler is None:
        return None
    try:
        tx = from_metadata(details.invocation_metadata)
    except XatmError as error:
        refusal = _adeny(error)
        return _replace_behavior(handler, lambda _behavior, _streaming: refusal)
    if tx is None:
        return handler
    return _replace_behavior(handler, _bind(tx))


def _adeny(error: XatmError) -> Behavior:
    # A coroutine serves any handler kind on grpc.aio (streams may write via the context).
    async def deny(request: Any, context: grpc.aio.ServicerContext) -> None:
        await abort_async(context, error)

    return deny


class ServerInterceptor(grpc.ServerInterceptor):
    """Threaded ``grpc.server``: the handler's thread sees the caller's transaction."""

    def __init__(self) -> None:
        self._handlers = HandlerCache(lambda handler, _method: _replace_behavior(handler, _sync_bound))

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        return self._handlers.get(continuation(handler_call_details), handler_call_details.method)


class AioServerInterceptor(grpc.aio.ServerInterceptor):
    """``grpc.aio.server``: the handler's task sees the caller's transaction."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        return _intercept(await continuation(handler_call_details), handler_call_details)
