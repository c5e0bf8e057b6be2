"""The coordinator's HTTP port: the REST admin API, ``/metrics`` and ``/healthz``.

A small threaded stdlib server: handlers that need the engine hop onto the asyncio loop
with ``run_coroutine_threadsafe`` so the engine stays single-threaded. The admin routes are
a thin JSON skin over AdminOps, which the Admin gRPC service shares. Every response carries
an ``X-Trace-Id`` header; admin bodies carry it as ``traceId`` and so does the audit record.

``/healthz`` and ``/metrics`` stay open when auth is on: probes and Prometheus scrape them,
and metrics carry no transaction ids. Everything else needs a bearer token.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import logging
import socket
import ssl
import threading
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import grpc
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from participant.xa import TxStatus, XatmError

from .admin import MAX_PAGE, AdminOps
from .auth import Authenticator, Caller, bearer_token, trace_id
from .engine import Engine
from .openapi import OPENAPI_PATH, document
from .views import completion_view, forget_view, list_view, parse_since, transaction_view

__all__ = ["HTTP_STATUS", "HttpServer", "split_hostport"]

log = logging.getLogger("xatm.coordinator")

#: gRPC status -> HTTP status, as docs/contract.md tabulates.
HTTP_STATUS = {
    grpc.StatusCode.INVALID_ARGUMENT: HTTPStatus.BAD_REQUEST,
    grpc.StatusCode.UNAUTHENTICATED: HTTPStatus.UNAUTHORIZED,
    grpc.StatusCode.PERMISSION_DENIED: HTTPStatus.FORBIDDEN,
    grpc.StatusCode.NOT_FOUND: HTTPStatus.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION: HTTPStatus.PRECONDITION_FAILED,
    grpc.StatusCode.UNAVAILABLE: HTTPStatus.SERVICE_UNAVAILABLE,
}
COLLECTION = "/admin/v1/xa-transaction"
MAX_BODY = 1 << 20
_OPENAPI = json.dumps(document(), indent=1).encode()
_NEEDS_TLS = (
    b'{"error": "this port requires TLS: use https:// (and a client certificate if the coordinator '
    b'asks for one)"}'
)


def split_hostport(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {address!r} must be HOST:PORT")
    return host.strip("[]"), int(port)


class _HttpError(Exception):
    """A refusal that has no gRPC counterpart (405, 413)."""

    def __init__(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.headers = status, message, headers or {}


def _bad(message: str) -> XatmError:
    return XatmError(grpc.StatusCode.INVALID_ARGUMENT, message)


def _params(query: str, allowed: tuple[str, ...]) -> dict[str, list[str]]:
    try:
        params = parse_qs(query, keep_blank_values=True, strict_parsing=False, max_num_fields=50)
    except ValueError as err:
        raise _bad(f"malformed query string: {err}") from None
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        accepted = ", ".join(allowed) or "none"
        raise _bad(f"unknown query parameter {unknown[0][:40]!r}; accepted: {accepted}")
    return params


def _single(params: dict[str, list[str]], name: str) -> str | None:
    values = params.get(name)
    if not values:
        return None
    if len(values) > 1:
        raise _bad(f"query parameter {name} given more than once")
    return values[0]


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    #: Idle keep-alive connections give their thread back after this many seconds.
    timeout = 60
    trace = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Access logs are noise at scrape rate; refusals and errors are logged where decided."""

    # ------------------------------------------------------------ responses

    def _send(
        self, status: int, body: bytes, content_type: str, headers: dict[str, str] | None = None
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Trace-Id", self.trace)
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        body = {**payload, "traceId": self.trace}
        self._send(status, json.dumps(body).encode(), "application/json", headers)

    def _error(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        self._json(status, {"error": message}, headers)

    # ------------------------------------------------------------ dispatch

    def __getattr__(self, name: str) -> Any:
        """Every method (``do_GET``, ``do_TRACE``...) is dispatched, so a verb a resource does not
        support gets 405 with ``Allow`` instead of the stdlib's 501."""
        if name.startswith("do_"):
            return self._dispatch
        raise AttributeError(name)

    def _dispatch(self) -> None:
        self.trace = trace_id(self.headers.get("X-Trace-Id"))
        url = urlsplit(self.path)
        if url.path in ("/metrics", "/healthz"):
            self._open(url.path)
            return
        try:
            body = self._body()  # read first, so any answer leaves a keep-alive connection in sync
            routes, gtrid = self._routes(url.path)
            action = routes.get(self.command)
            if action is None:
                raise _HttpError(
                    HTTPStatus.METHOD_NOT_ALLOWED,
                    f"{self.command} is not allowed on {url.path[:100]}; allowed: {', '.join(routes)}",
                    {"Allow": ", ".join(routes)},
                )
            principal = self.server.auth.authenticate(bearer_token(self.headers.get("Authorization")))
            caller = Caller(principal, f"http {self.client_address[0]}:{self.client_address[1]}", self.trace)
            payload = action(caller, gtrid, url.query, body)
        except _HttpError as err:
            self._error(err.status, err.message, err.headers)
        except XatmError as err:
            status = HTTP_STATUS.get(err.code, HTTPStatus.INTERNAL_SERVER_ERROR)
            if err.code == grpc.StatusCode.UNAUTHENTICATED:
                log.info(
                    "refused %s %s from %s: %s",
                    self.command,
                    url.path[:100],
                    self.client_address[0],
                    err.message,
                )
                self._error(status, err.message, {"WWW-Authenticate": 'Bearer realm="xatm"'})
            else:
                self._error(status, err.message)
        except Exception:
            log.exception("internal error serving %s %s (trace %s)", self.command, url.path[:100], self.trace)
            self._error(
                HTTPStatus.INTERNAL_SERVER_ERROR,
                f"internal error; see the coordinator log (trace id {self.trace})",
            )
        else:
            if isinstance(payload, bytes):
                self._send(HTTPStatus.OK, payload, "application/json")
            else:
                self._json(HTTPStatus.OK, payload)

    def _open(self, path: str) -> None:
        if self.command != "GET":
            self._error(HTTPStatus.METHOD_NOT_ALLOWED, f"only GET is allowed on {path}", {"Allow": "GET"})
        elif path == "/metrics":
            self._send(HTTPStatus.OK, generate_latest(), CONTENT_TYPE_LATEST)
        else:
            engine = self.server.engine
            body = {"status": "ok", "node": engine.node_id}
            if engine.log_stopped is not None:
                body.update(status="log stopped", reason=engine.log_stopped.reason)
            elif engine.closing:
                body["status"] = "shutting down"
            self._json(HTTPStatus.OK if body["status"] == "ok" else HTTPStatus.SERVICE_UNAVAILABLE, body)

    def _routes(self, path: str) -> tuple[dict[str, Callable[..., Any]], str]:
        if path == OPENAPI_PATH:
            return {"GET": self._openapi}, ""
        if path == COLLECTION:
            return {"GET": self._list}, ""
        if path == COLLECTION + "/bulk":
            return {"POST": self._forget}, ""
        prefix = COLLECTION + "/"
        parts = path[len(prefix) :].split("/")
        if path.startswith(prefix) and len(parts) == 4 and parts[1:4:2] == ["branches", "resolve"]:
            gtrid, bqual = unquote(parts[0]), unquote(parts[2])
            return {
                "POST": lambda caller, _, query, body: self._resolve(caller, gtrid, bqual, query, body)
            }, gtrid
        if path.startswith(prefix) and "/" not in path[len(prefix) :]:
            return {"GET": self._show, "PUT": self._commit, "DELETE": self._rollback}, unquote(
                path[len(prefix) :]
            )
        raise _HttpError(HTTPStatus.NOT_FOUND, f"no resource at {path[:100]}; see {OPENAPI_PATH}")

    def _body(self) -> bytes:
        if "Transfer-Encoding" in self.headers:
            self.close_connection = True
            raise _bad("chunked request bodies are not supported; send Content-Length")
        length = self.headers.get("Content-Length", "0").strip() or "0"
        if not length.isdigit():
            self.close_connection = True
            raise _bad("malformed Content-Length")
        if int(length) > MAX_BODY:
            self.close_connection = True
            raise _HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body over {MAX_BODY} bytes")
        return self.rfile.read(int(length)) if int(length) else b""

    def _run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run an AdminOps call on the engine's loop and wait for it (bounded)."""
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self.server.loop)
        except RuntimeError:
            coro.close()
            raise XatmError(
                grpc.StatusCode.UNAVAILABLE, "coordinator is shutting down; retry later"
            ) from None
        wait = self.server.engine.settings.commit_wait + 30
        try:
            return future.result(wait)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise XatmError(
                grpc.StatusCode.UNAVAILABLE, f"coordinator did not answer within {wait:.0f}s; retry later"
            ) from None

    # ------------------------------------------------------------ admin resources

    def _openapi(self, caller: Caller, gtrid: str, query: str, body: bytes) -> bytes:
        return _OPENAPI

    def _list(self, caller: Caller, gtrid: str, query: str, body: bytes) -> dict[str, Any]:
        params = _params(query, ("status", "begin", "limit", "pageToken"))
        statuses = [TxStatus.parse(s) for v in params.get("status", []) for s in v.split(",")]
        begin = _single(params, "begin")
        limit = _single(params, "limit")
        limit = "100" if limit is None else limit
        if not limit.isdigit() or not 1 <= int(limit) <= MAX_PAGE:
            raise _bad(f"limit must be a whole number from 1 to {MAX_PAGE}")
        coro = self.server.ops.list_transactions(
            caller,
            statuses,
            parse_since(begin) if begin is not None else None,
            int(limit),
            _single(params, "pageToken") or "",
        )
        return list_view(self._run(coro))

    def _show(self, caller: Caller, gtrid: str, query: str, body: bytes) -> dict[str, Any]:
        _params(query, ())
        return transaction_view(self._run(self.server.ops.get(caller, gtrid)))

    def _commit(self, caller: Caller, gtrid: str, query: str, body: bytes) -> dict[str, Any]:
        reason = _single(_params(query, ("reason",)), "reason") or ""
        return completion_view(self._run(self.server.ops.force_commit(caller, gtrid, reason)))

    def _rollback(self, caller: Caller, gtrid: str, query: str, body: bytes) -> dict[str, Any]:
        reason = _single(_params(query, ("reason",)), "reason") or ""
        return completion_view(self._run(self.server.ops.force_rollback(caller, gtrid, reason)))

    def _resolve(self, caller: Caller, gtrid: str, bqual: str, query: str, body: bytes) -> dict[str, Any]:
        _params(query, ())
        usage = 'the body must be {"outcome": "committed" or "rolledback", "reason": "..."}'
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise _bad(usage) from None
        if not isinstance(request, dict) or set(request) != {"outcome", "reason"}:
            raise _bad(usage)
        outcome, reason = request["outcome"], request["reason"]
        if not isinstance(outcome, str) or not isinstance(reason, str):
            raise _bad(usage)
        coro = self.server.ops.resolve_branch(caller, gtrid, bqual, outcome, reason)
        return completion_view(self._run(coro))

    def _forget(self, caller: Caller, gtrid: str, query: str, body: bytes) -> dict[str, Any]:
        _params(query, ())
        try:
            request = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise _bad('the body must be JSON: {"txids": ["<gtrid>", ...]}') from None
        txids = request.get("txids") if isinstance(request, dict) and set(request) == {"txids"} else None
        if not isinstance(txids, list) or not all(isinstance(t, str) for t in txids):
            raise _bad('the body must be {"txids": ["<gtrid>", ...]}')
        return forget_view(self._run(self.server.ops.forget(caller, txids)))


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        address: tuple[str, int],
        engine: Engine,
        loop: asyncio.AbstractEventLoop,
        ops: AdminOps,
        auth: Authenticator,
        ssl_context: ssl.SSLContext | None,
    ):
        super().__init__(address, _Handler)
        self.engine, self.loop, self.ops, self.auth = engine, loop, ops, auth
        self.ssl_context = ssl_context

    def finish_request(self, request: Any, client_address: Any) -> None:
        """In the connection's own thread, so a slow TLS handshake never blocks accepting."""
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(10)
        try:
            first = request.recv(1, socket.MSG_PEEK)
            if first and first[0] != 0x16:  # not a TLS handshake record: a plaintext client
                request.sendall(
                    b"HTTP/1.1 400 Bad Request\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    + f"Content-Length: {len(_NEEDS_TLS)}\r\n\r\n".encode()
                    + _NEEDS_TLS
                )
                return
            secure = self.ssl_context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError) as err:
            log.info("TLS handshake with %s failed: %s", client_address[0], err)
            return
        try:
            super().finish_request(secure, client_address)
        finally:
            secure.close()


class HttpServer:
    def __init__(
        self,
        listen: str,
        engine: Engine,
        loop: asyncio.AbstractEventLoop,
        *,
        ops: AdminOps,
        auth: Authenticator,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self._server = _Server(split_hostport(listen), engine, loop, ops, auth, ssl_context)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="xatm-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
