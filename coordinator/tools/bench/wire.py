"""Messages that cross the wire, counted at the benchmark's own ends of each connection.

The coordinator talks only to the harness (the RPCs it serves) and to the bench participants
(what it sends them: prepare, commit, rollback, however they are batched or streamed). Counting
at those ends counts what really travels, whatever the protocol of the day, and costs the
measured coordinator nothing:

- ``CallCounter``: a client interceptor on the harness's channel, RPCs by method;
- ``MessageCounter``: a server interceptor in each bench participant, request messages received
  by method (every message of a stream, not just the stream), exported as
  ``xatm_bench_messages_received_total{method}`` on the participant's ``/metrics``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from prometheus_client import Counter as PromCounter

__all__ = ["RECEIVED", "CallCounter", "MessageCounter", "method_name"]

RECEIVED = PromCounter(
    "xatm_bench_messages_received_total", "Request messages a bench participant received", ["method"]
)
#: Health checks are the harness's, not the coordinator's.
_IGNORED = ("/grpc.health.",)


def method_name(full: str) -> str:
    """``/package.Service/Method`` -> ``Method``."""
    return full.rsplit("/", 1)[-1]


class CallCounter(grpc.aio.UnaryUnaryClientInterceptor):
    """Unary RPCs made on a channel, by method name: read ``counts`` at both ends of a window."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    async def intercept_unary_unary(
        self, continuation: Callable[[Any, Any], Any], client_call_details: Any, request: Any
    ) -> Any:
        method = client_call_details.method
        self.counts[method_name(method.decode() if isinstance(method, bytes) else method)] += 1
        return await continuation(client_call_details, request)


def _counted(method: str, requests: Iterator[Any]) -> Iterator[Any]:
    for request in requests:
        RECEIVED.labels(method=method).inc()
        yield request


class MessageCounter(grpc.ServerInterceptor):
    """Counts every request message of a threaded server in ``RECEIVED``."""

    def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], grpc.RpcMethodHandler | None],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
        handler = continuation(handler_call_details)
        full = handler_call_details.method
        if handler is None or full.startswith(_IGNORED):
            return handler
        method = method_name(full)
        if not handler.request_streaming:
            RECEIVED.labels(method=method).inc()
            return handler
        if handler.stream_stream is not None:
            inner_stream = handler.stream_stream
            return grpc.stream_stream_rpc_method_handler(
                lambda requests, context: inner_stream(_counted(method, requests), context),
                handler.request_deserializer,
                handler.response_serializer,
            )
        inner_unary = handler.stream_unary
        assert inner_unary is not None, f"{full}: a streaming handler without a behaviour"
        return grpc.stream_unary_rpc_method_handler(
            lambda requests, context: inner_unary(_counted(method, requests), context),
            handler.request_deserializer,
            handler.response_serializer,
        )
