"""The coordinator's gRPC services registered already wrapped by ``CallerInterceptor``.

As a server interceptor, ``CallerInterceptor`` would run on every call: a coroutine that looks
the method up and builds a new handler around it, before the call itself. What it builds
depends on the method only, so here each method is wrapped once, when the services are
registered, and the server runs with no interceptor: every call still goes through the same
authentication, caller naming and undecodable-request check, with none of the per-call set-up.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import grpc

from xatm.coordinator.server.services import CallerInterceptor

__all__ = ["Services", "register_guarded"]


@dataclass
class _Details:
    """The ``grpc.HandlerCallDetails`` of a method, as the interceptor reads it."""

    method: str
    invocation_metadata: tuple[tuple[str, str | bytes], ...] = ()


class Services:
    """Stands in for the server while the generated ``add_*Servicer_to_server`` functions run,
    keeping the method handlers they register by service name."""

    def __init__(self) -> None:
        self.handlers: dict[str, dict[str, grpc.RpcMethodHandler]] = {}

    def add_generic_rpc_handlers(self, generic_handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        """Ignored: the same methods arrive by ``add_registered_method_handlers``."""

    def add_registered_method_handlers(
        self, service: str, handlers: dict[str, grpc.RpcMethodHandler]
    ) -> None:
        self.handlers[service] = handlers

    def add(self, adder: Callable[[Any, Any], None], servicer: object) -> None:
        """Run a generated ``add_*Servicer_to_server(servicer, server)`` against this stand-in."""
        adder(servicer, self)


async def register_guarded(
    server: grpc.aio.Server, services: Services, interceptor: CallerInterceptor
) -> None:
    """Register every method of ``services`` on ``server``, each wrapped once by ``interceptor``."""
    for service, handlers in services.handlers.items():
        wrapped: dict[str, grpc.RpcMethodHandler] = {}
        for name, handler in handlers.items():
            guarded = await interceptor.intercept_service(_returning(handler), _Details(f"/{service}/{name}"))
            assert guarded is not None  # it wraps what the continuation gave, never drops it
            wrapped[name] = guarded
        server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, wrapped),))
        server.add_registered_method_handlers(service, wrapped)


def _returning(handler: grpc.RpcMethodHandler) -> Callable[[Any], Any]:
    async def continuation(_: Any) -> grpc.RpcMethodHandler:
        return handler

    return continuation
