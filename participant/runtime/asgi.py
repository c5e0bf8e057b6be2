"""HTTP ports served by uvicorn: the coordinator's (admin API, ``/metrics``, ``/healthz``) and the
participant agent's (``/metrics``, ``/healthz``).

``Uvicorn`` runs an ASGI app on the caller's asyncio loop (the coordinator: handlers run next to
the engine, no thread hop) or on a loop in a thread of its own (the agent, whose gRPC server is
threaded). The port is bound when the object is made, so a busy address fails start-up with an
OSError. uvicorn's own records (access lines, refused connections) go to the ``uvicorn.*``
loggers and so through whatever ``xatm.participant.runtime.logs.setup`` configured: one line per event.

With TLS, a client that speaks plaintext HTTP to the port gets a one-line 400 telling it to use
https instead of a dropped connection.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.exceptions import HTTPException

from xatm.participant.runtime import logs
from xatm.participant.runtime.address import Address

__all__ = ["Health", "Uvicorn", "add_probes", "probe_app"]

log = logging.getLogger("xatm.http")

#: Seconds a client gets to send its first byte and finish the TLS handshake.
HANDSHAKE_TIMEOUT = 10.0
#: Idle keep-alive connections are closed after this many seconds.
KEEP_ALIVE = 60
#: Seconds that stop() lets requests in progress finish before cancelling them.
STOP_GRACE = 2
_TLS_HANDSHAKE_RECORD = 0x16
_NEEDS_TLS = json.dumps(
    {
        "error": "this port requires TLS: use https:// (and a client certificate if the coordinator "
        "asks for one)"
    }
).encode()

#: ``/healthz``: the request in, its status code and JSON body out.
Health = Callable[[Request], Awaitable[tuple[int, dict[str, Any]]]]


def add_probes(app: FastAPI, health: Health, *, health_model: type | None = None) -> None:
    """Add the open ``GET /metrics`` (Prometheus text) and ``GET /healthz`` (``health``'s answer).

    ``health_model`` documents the ``/healthz`` body in the app's OpenAPI document.
    """
    documented: dict[int, dict[str, Any]] = {
        200: {"description": "Serving."},
        503: {"description": "Not serving; see status."},
    }
    if health_model is not None:
        documented = {code: {**doc, "model": health_model} for code, doc in documented.items()}

    @app.get(
        "/metrics",
        operation_id="metrics",
        summary="Prometheus metrics; open without a token (no transaction ids in labels)",
        response_class=Response,
        responses={200: {"description": "Prometheus text format.", "content": {"text/plain": {}}}},
    )
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get(
        "/healthz",
        operation_id="health",
        summary="Liveness; open without a token",
        response_class=JSONResponse,
        responses=documented,  # type: ignore[arg-type]
    )
    async def healthz(request: Request) -> JSONResponse:
        status, body = await health(request)
        return JSONResponse(body, status)


async def _refused(request: Request, err: Exception) -> Response:
    assert isinstance(err, HTTPException)
    return JSONResponse({"error": str(err.detail).lower()}, err.status_code, err.headers)


def probe_app(health: Health) -> FastAPI:
    """An app with only the probes; any other path is 404 ``{"error": "not found"}``."""
    app = FastAPI(
        openapi_url=None, docs_url=None, redoc_url=None, exception_handlers={HTTPException: _refused}
    )
    add_probes(app, health)
    return app


class _TlsFirst(asyncio.Protocol):
    """The first bytes of a connection decide: a TLS handshake goes on to TLS and the HTTP
    protocol; anything else is a plaintext client, which is told to use https and closed."""

    def __init__(self, http: Callable[[], asyncio.Protocol], context: ssl.SSLContext):
        self._http, self._context = http, context
        self._loop = asyncio.get_running_loop()
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        self._timer = self._loop.call_later(HANDSHAKE_TIMEOUT, transport.close)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        if self._timer is not None:
            self._timer.cancel()
        if data[0] != _TLS_HANDSHAKE_RECORD:
            transport.write(
                b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n"
                + f"Content-Length: {len(_NEEDS_TLS)}\r\n\r\n".encode()
                + _NEEDS_TLS
            )
            transport.close()
            return
        # What loop.create_server(ssl=...) does for every connection, begun after the first
        # bytes were read here, which are then handed to the TLS layer.
        from asyncio.sslproto import SSLProtocol

        # typeshed types the waiter as required and the timeout as int; CPython takes None
        # (no one waits for the handshake) and any number of seconds.
        secure = SSLProtocol(
            self._loop, self._http(), self._context, None, server_side=True,  # type: ignore[arg-type]
            ssl_handshake_timeout=HANDSHAKE_TIMEOUT,  # type: ignore[arg-type]
        )  # fmt: skip
        transport.set_protocol(secure)
        secure.connection_made(transport)
        view = memoryview(data)
        while view:
            buffer = secure.get_buffer(len(view))
            size = min(len(buffer), len(view))
            buffer[:size] = view[:size]
            secure.buffer_updated(size)
            view = view[size:]


class Uvicorn:
    """One ASGI app on one bound port; ``start``/``stop`` on a loop, or ``start_thread``/``stop_thread``.

    Raises OSError (from the constructor) when ``listen`` cannot be bound, AddressError (a
    ValueError) when it is not ``HOST:PORT``.
    """

    def __init__(self, app: Any, listen: str, *, ssl_context: ssl.SSLContext | None = None):
        where = Address.parse(listen, listen=True)
        self._socket = socket.create_server((where.host, where.port), family=where.family)
        self._socket.setblocking(False)
        self.port: int = self._socket.getsockname()[1]
        self._context = ssl_context
        self._config = uvicorn.Config(
            app,
            lifespan="off",
            log_config=None,  # records go through the process's logging set-up
            server_header=False,
            timeout_keep_alive=KEEP_ALIVE,
            timeout_graceful_shutdown=STOP_GRACE,
        )
        self._server = uvicorn.Server(self._config)
        self._ticker: asyncio.Task[None] | None = None
        self._thread: threading.Thread | None = None

    def _protocol(self) -> Callable[[], asyncio.Protocol]:
        config, server = self._config, self._server
        loop = asyncio.get_running_loop()

        def http() -> asyncio.Protocol:
            return config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=server.server_state, app_state=server.lifespan.state, _loop=loop
            )

        context = self._context
        if context is None:
            return http
        return lambda: _TlsFirst(http, context)

    async def start(self) -> None:
        """Serve on the running loop until stop()."""
        config, server = self._config, self._server
        config.load()
        server.lifespan = config.lifespan_class(config)
        loop = asyncio.get_running_loop()
        logs.quiet_disconnects(loop)  # a client's reset is a debug line, never raw stderr
        listening = await loop.create_server(self._protocol(), sock=self._socket, backlog=config.backlog)
        server.servers = [listening]
        server.started = True
        # uvicorn's once-a-second housekeeping (the Date header) and its exit flag.
        self._ticker = loop.create_task(server.main_loop(), name="xatm-http")

    async def stop(self) -> None:
        """Stop accepting, let requests in progress finish (at most STOP_GRACE s), close."""
        if self._ticker is None:
            self._socket.close()
            return
        self._server.should_exit = True
        await self._ticker
        await self._server.shutdown()

    def start_thread(self, name: str) -> None:
        """Serve on a loop of its own in a daemon thread; returns once the port is serving."""
        ready = threading.Event()
        failed: list[Exception] = []

        async def serve() -> None:
            try:
                await self.start()
            except Exception as err:  # raised again in the caller's thread, below
                failed.append(err)
                return
            finally:
                ready.set()
            assert self._ticker is not None
            await self._ticker
            await self._server.shutdown()

        self._thread = threading.Thread(target=asyncio.run, args=(serve(),), name=name, daemon=True)
        self._thread.start()
        ready.wait()
        if failed:
            self._thread.join()
            raise failed[0]

    def stop_thread(self) -> None:
        """stop() for a server started with start_thread(); returns when its thread has ended."""
        if self._thread is None:
            self._socket.close()
            return
        self._server.should_exit = True
        self._thread.join()
