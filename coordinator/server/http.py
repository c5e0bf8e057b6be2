"""The coordinator's HTTP port: the REST admin API, the console, ``/metrics`` and ``/healthz``.

A FastAPI app served by uvicorn on the coordinator's own asyncio loop, so handlers call the
engine directly. The admin routes are a thin JSON skin over AdminOps, which the Admin gRPC
service shares; the bodies are the pydantic models of ``views``, and the OpenAPI document at
``/admin/v1/openapi.json`` is generated from them. Every response carries an ``X-Trace-Id``
header; admin bodies carry it as ``traceId`` and so does the audit record.

``/healthz`` and ``/metrics`` stay open when auth is on: probes and Prometheus scrape them,
and metrics carry no transaction ids. Everything else needs a bearer token, checked before
the request's parameters or body are looked at. Every refusal is one line of JSON,
``{"error": ..., "traceId": ...}``, with the status of the table below; malformed input
(including what the framework's validation rejects) is 400.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable, Coroutine
from http import HTTPStatus
from importlib.metadata import PackageNotFoundError, version
from typing import Annotated, Any, Literal, get_args, get_origin

from fastapi import APIRouter, Depends, FastAPI, Header, Path, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from fastapi.security import HTTPBearer
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from xatm.coordinator.cluster.forwarding import PASS_ON, pass_on
from xatm.coordinator.engine.core import Engine
from xatm.coordinator.server.admin import MAX_FORGET, MAX_PAGE, AdminOps
from xatm.coordinator.server.approvals import ApprovalPending, approval_view
from xatm.coordinator.server.auth import (
    Authenticator,
    Caller,
    Permission,
    Principal,
    bearer_token,
    trace_id,
)
from xatm.coordinator.server.console import mount_console
from xatm.coordinator.server.json_limits import check_json_body
from xatm.coordinator.server.views import (
    CompletionView,
    ForgetView,
    TransactionListView,
    TransactionView,
    completion_view,
    forget_view,
    list_view,
    parse_since,
    transaction_view,
)
from xatm.participant.api.v1.coordinator_pb2 import CompletionResponse
from xatm.participant.errors import InvalidArgumentError, Status, XatmError, surface
from xatm.participant.runtime.asgi import Uvicorn, add_probes
from xatm.participant.xa import TxStatus

__all__ = ["MAX_BODY", "OPENAPI_PATH", "HttpServer", "build_app", "document"]

log = logging.getLogger("xatm.coordinator")

COLLECTION = "/admin/v1/xa-transaction"
OPENAPI_PATH = "/admin/v1/openapi.json"
#: Request bodies over this many bytes are refused (413) from their Content-Length alone.
MAX_BODY = 1 << 20
_ID = r"^[A-Za-z0-9._:-]{1,64}$"
_SECONDS = r"^[0-9]{1,12}(\.[0-9]{1,9})?$"
_PAGE = r"^[0-9]{0,12}$"


# ------------------------------------------------------------------ models


class Error(BaseModel):
    """Every refusal."""

    error: str = Field(description="One line saying what to do.")
    traceId: str = Field(description="Also the X-Trace-Id header and the audit record's trace id.")


class _Traced(BaseModel):
    traceId: str = Field(description="Also the X-Trace-Id header and the audit record's trace id.")


class Transaction(TransactionView, _Traced):
    """A transaction and its branches."""


class TransactionList(TransactionListView, _Traced):
    """One page of transactions, oldest first."""


class Completion(CompletionView, _Traced):
    """The request was carried out; status is its tx.h outcome."""


class ForgetResponse(ForgetView, _Traced):
    """One result per id."""


class Health(BaseModel):
    """``/healthz``: ``ok``, ``shutting down`` or ``log stopped`` (with the reason)."""

    status: str
    node: str
    reason: str | None = None
    traceId: str


class ResolveRequest(BaseModel):
    """A branch whose resource manager is gone for good, and what happened to it there."""

    model_config = ConfigDict(extra="forbid")

    outcome: Literal["committed", "rolledback"] = Field(
        description="What happened to the branch at its resource manager, as the operator knows it: "
        "recorded as XA_HEURCOM or XA_HEURRB."
    )
    reason: str = Field(min_length=1, description="Recorded in the audit log (kept to 200 characters).")


class ForgetRequest(BaseModel):
    """Heuristically completed transactions to forget."""

    model_config = ConfigDict(extra="forbid")

    txids: list[Annotated[str, StringConstraints(pattern=_ID)]] = Field(min_length=1, max_length=MAX_FORGET)


_ERRORS: dict[int, str] = {
    400: "Malformed transaction id, parameter or body.",
    401: "Missing or invalid bearer token.",
    403: "The token's role does not allow this operation.",
    404: "No such transaction (completed ones are kept for history_retention).",
    412: "The transaction's status forbids the operation; the message names the allowed ones.",
    413: "Request body over 1 MiB.",
    503: "The coordinator is shutting down or overloaded; retry later.",
}


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {code: {"model": Error, "description": _ERRORS[code]} for code in codes}


#: A forced operation that needs a second operator's approval (coordinator --require-approval).
_FILED: dict[int | str, dict[str, Any]] = {
    202: {"description": "Filed as an approval request (message, approval, traceId); not carried out yet."}
}


# ------------------------------------------------------------------ refusals


def _error(
    request: Request, status: int, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse({"error": message, "traceId": request.state.trace}, status, headers)


def _path(scope: Scope) -> str:
    """The request's path as sent (percent-encoded, so it cannot break a log line), shortened."""
    raw: bytes = scope.get("raw_path") or scope["path"].encode()
    return raw.decode("latin-1")[:100]


async def _refused(request: Request, err: Exception) -> Response:
    assert isinstance(err, XatmError)
    if isinstance(err, ApprovalPending):  # filed, not refused: 202 and the request
        filed = approval_view(err.request)
        return JSONResponse({"message": err.message, "approval": filed, "traceId": request.state.trace}, 202)
    status = HTTPStatus(surface(err.status).http)
    if err.status != Status.UNAUTHENTICATED:
        return _error(request, status, err.message)
    client = request.client.host if request.client else "?"
    log.info("refused %s %s from %s: %s", request.method, _path(request.scope), client, err.message)
    return _error(request, status, err.message, {"WWW-Authenticate": 'Bearer realm="xatm"'})


async def _no_route(request: Request, err: Exception) -> Response:
    """404 and 405 from routing; a 405 names every verb the path has, as ``Allow`` does."""
    assert isinstance(err, HTTPException)
    path = _path(request.scope)
    if err.status_code == HTTPStatus.NOT_FOUND:
        return _error(request, err.status_code, f"no resource at {path}; see {OPENAPI_PATH}")
    if err.status_code != HTTPStatus.METHOD_NOT_ALLOWED:
        return _error(request, err.status_code, str(err.detail))
    allowed: list[str] = []
    for route in request.app.state.routes:
        if route.matches(request.scope)[0] is not Match.NONE:
            allowed += [m for m in ("GET", "PUT", "POST", "DELETE") if m in route.methods]
    allow = ", ".join(dict.fromkeys(allowed))
    return _error(
        request,
        err.status_code,
        f"{request.method} is not allowed on {path}; allowed: {allow}",
        {"Allow": allow},
    )


async def _malformed(request: Request, err: Exception) -> Response:
    """The framework's validation errors: one line, 400 (the contract's status for malformed input)."""
    assert isinstance(err, RequestValidationError)
    first = err.errors()[0] if err.errors() else {}
    source, *where = [str(part) for part in first.get("loc", ("request",))]
    message = " ".join(str(first.get("msg", "")).split())
    if source == "body":
        what = ".".join(["body", *where])
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if not where and kind != "application/json":  # the framework read it as text, not JSON
            message = f"send it as JSON with Content-Type: application/json (it came as {kind or 'no type'})"
    else:  # a path, query or header parameter: name it and quote what was sent
        given = first.get("input")
        shown = ""
        if isinstance(given, str):  # quoted whole, or its start and how long it is
            shown = repr(given) if len(given) <= 40 else f"{given[:32]!r}... ({len(given)} characters)"
        what = " ".join([*where, shown]).strip()
    return _error(request, HTTPStatus.BAD_REQUEST, f"malformed {what}: {message}")


# ------------------------------------------------------------------ the request envelope


class _Envelope:
    """Outermost layer of every request: the trace id (taken from ``X-Trace-Id`` when
    well-formed), the ``X-Trace-Id`` and ``Cache-Control`` headers of every answer, the body-size
    limit, and a one-line 500 (logged with its traceback) for anything unexpected."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        trace = trace_id(headers.get("x-trace-id"))
        scope.setdefault("state", {})["trace"] = trace
        started = False

        async def traced(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (b"x-trace-id", trace.encode()),
                    (b"cache-control", b"no-store"),
                ]
            await send(message)

        refusal = _body_refusal(headers)
        if refusal is not None:
            status, text = refusal
            await _send_error(traced, status, text, trace)
            return
        try:
            await self.app(scope, receive, traced)
        except Exception:
            log.exception("internal error serving %s %s (trace %s)", scope["method"], _path(scope), trace)
            if not started:
                text = f"internal error; see the coordinator log (trace id {trace})"
                await _send_error(traced, HTTPStatus.INTERNAL_SERVER_ERROR, text, trace)


def _body_refusal(headers: dict[str, str]) -> tuple[int, str] | None:
    if "transfer-encoding" in headers:
        return HTTPStatus.BAD_REQUEST, "chunked request bodies are not supported; send Content-Length"
    length = headers.get("content-length", "0").strip() or "0"
    if not length.isdigit():
        return HTTPStatus.BAD_REQUEST, "malformed Content-Length"
    if int(length) > MAX_BODY:
        return HTTPStatus.REQUEST_ENTITY_TOO_LARGE, f"request body over {MAX_BODY} bytes"
    return None


async def _send_error(send: Send, status: int, message: str, trace: str) -> None:
    response = JSONResponse({"error": message, "traceId": trace}, status, {"Connection": "close"})
    await send({"type": "http.response.start", "status": status, "headers": response.raw_headers})
    await send({"type": "http.response.body", "body": response.body})


# ------------------------------------------------------------------ admin routes


class _AdminRoute(APIRoute):
    """Authenticates the caller before FastAPI reads the parameters and the body; refuses query
    parameters the route does not take (or repeats of a single one); and a caller whose role
    cannot use the route is told so (403) rather than what is wrong with its input."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handle = super().get_route_handler()
        names = {param.alias for param in self.dependant.query_params}
        lists = {
            param.alias for param in self.dependant.query_params if _repeatable(param.field_info.annotation)
        }
        permission = _PERMISSIONS.get(self.operation_id or "")
        takes_body = self.body_field is not None

        async def authenticated(request: Request) -> Response:
            auth: Authenticator = request.app.state.auth
            principal = auth.authenticate(bearer_token(request.headers.get("Authorization")))
            client = request.client
            peer = f"http {client.host}:{client.port}" if client else "http ?"
            request.state.caller = Caller(principal, peer, request.state.trace)
            # What a call forwarded to another replica keeps: the credential, this trace id.
            PASS_ON.set(pass_on({**request.headers, "x-trace-id": request.state.trace}))
            try:
                _check_query(request, names, lists)
                if takes_body:  # bounded before the framework's parser sees it
                    check_json_body(await request.body())
                return await handle(request)
            except (RequestValidationError, XatmError, HTTPException) as err:
                if _malformed_input(err):
                    _require(principal, permission)
                raise

        return authenticated


def _malformed_input(err: Exception) -> bool:
    """A refusal of the request's input: the framework's validation or body parsing, or ours."""
    if isinstance(err, XatmError):
        return err.status == Status.INVALID_ARGUMENT
    if isinstance(err, HTTPException):
        return err.status_code == HTTPStatus.BAD_REQUEST
    return True


def _repeatable(annotation: Any) -> bool:
    return any(get_origin(kind) is list for kind in (annotation, *get_args(annotation)))


def _require(principal: Principal, permission: Permission | None) -> None:
    if permission is not None:
        principal.require(permission)


def _check_query(request: Request, names: set[str], lists: set[str]) -> None:
    keys = list(request.query_params.keys())
    unknown = sorted(set(keys) - names)
    if unknown:
        accepted = ", ".join(sorted(names)) or "none"
        raise InvalidArgumentError(f"unknown query parameter {unknown[0][:40]!r}; accepted: {accepted}")
    for name in set(keys) - lists:
        if len(request.query_params.getlist(name)) > 1:
            raise InvalidArgumentError(f"query parameter {name} given more than once")


class _GtridConvertor(Convertor[str]):
    """A path segment naming a transaction; ``bulk`` is the bulk resource, never a gtrid."""

    regex = "(?!bulk$)[^/]+"

    def convert(self, value: str) -> str:
        return value

    def to_string(self, value: str) -> str:
        return value


register_url_convertor("gtrid", _GtridConvertor())

_bearer = HTTPBearer(scheme_name="bearer", auto_error=False, description="A token of the auth file.")


def _documented_trace_header(
    trace: Annotated[
        str | None,
        Header(
            alias="X-Trace-Id",
            description="Used as the request's trace id when well-formed; else one is made.",
        ),
    ] = None,
) -> None:
    """Only documents the header: the envelope reads it before routing."""


def _caller(request: Request) -> Caller:
    caller: Caller = request.state.caller
    return caller


def _ops(request: Request) -> AdminOps:
    ops: AdminOps = request.app.state.ops
    return ops


CallerDep = Annotated[Caller, Depends(_caller)]
OpsDep = Annotated[AdminOps, Depends(_ops)]
Gtrid = Annotated[str, Path(description="Global transaction id, as listed.", pattern=_ID)]
Reason = Annotated[str, Query(description="Recorded in the audit log (kept to 200 characters).")]


#: What each admin operation needs; AdminOps checks it (and audits refusals). The route checks it
#: too when the input is malformed, so that a caller's role is judged before its input.
_PERMISSIONS = {
    "listTransactions": Permission.READ,
    "getTransaction": Permission.READ,
    "forceCommit": Permission.OPERATE,
    "forceRollback": Permission.OPERATE,
    "resolveBranch": Permission.OPERATE,
    "forget": Permission.OPERATE,
    # The console's resources (server/console/api.py).
    "listAudit": Permission.READ,
    "getHistory": Permission.READ,
    "listApprovals": Permission.READ,
    "approve": Permission.OPERATE,
    "reject": Permission.OPERATE,
}


def _traced(view: dict[str, Any], caller: Caller) -> dict[str, Any]:
    """An admin answer: the view and the request's trace id."""
    return {**view, "traceId": caller.trace_id}


def _forced(
    run: Callable[[AdminOps, Caller, str, str], Awaitable[CompletionResponse]],
) -> Callable[..., Awaitable[dict[str, Any]]]:
    """The endpoint of a forced commit or rollback: ``run`` is the AdminOps method."""

    async def forced(caller: CallerDep, ops: OpsDep, gtrid: Gtrid, reason: Reason = "") -> dict[str, Any]:
        done = await getattr(ops, run.__name__)(caller, gtrid, reason)  # ``ops``'s own: a replica's forwards
        return _traced(completion_view(done), caller)

    return forced


def _admin_router() -> APIRouter:
    router = APIRouter(
        route_class=_AdminRoute,
        dependencies=[Security(_bearer), Depends(_documented_trace_header)],
    )

    @router.get(
        COLLECTION,
        operation_id="listTransactions",
        summary="List transactions, oldest first",
        response_model=TransactionList,
        responses=_errors(400, 401, 403, 503),
    )
    async def list_transactions(
        caller: CallerDep,
        ops: OpsDep,
        status: Annotated[
            list[str] | None,
            Query(
                description="Only these statuses (repeat or comma-separate).",
                json_schema_extra={
                    "anyOf": [{"type": "array", "items": {"enum": [s.label for s in TxStatus]}}]
                },
            ),
        ] = None,
        begin: Annotated[
            str | None,
            Query(
                description="Only transactions begun at or after this RFC 3339 time (UTC if no offset) "
                "or Unix time in seconds.",
                json_schema_extra={
                    "anyOf": [
                        {"type": "string", "format": "date-time"},
                        {"type": "string", "pattern": _SECONDS},
                    ]
                },
            ),
        ] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 100,
        page_token: Annotated[
            str, Query(alias="pageToken", description="nextPageToken of the previous page.", pattern=_PAGE)
        ] = "",
    ) -> dict[str, Any]:
        statuses = [TxStatus.parse(s) for value in status or () for s in value.split(",")]
        since = parse_since(begin) if begin is not None else None
        page = await ops.list_transactions(caller, statuses, since, limit, page_token)
        return _traced(list_view(page), caller)

    @router.get(
        f"{COLLECTION}/{{gtrid:gtrid}}",
        operation_id="getTransaction",
        summary="Show a transaction and its branches",
        response_model=Transaction,
        responses=_errors(400, 401, 403, 404, 503),
    )
    async def show(caller: CallerDep, ops: OpsDep, gtrid: Gtrid) -> dict[str, Any]:
        return _traced(transaction_view(await ops.get(caller, gtrid)), caller)

    for verb, name, summary, run in (
        (
            "PUT",
            "forceCommit",
            "Force commit (only from Created, Preparing, Committing)",
            AdminOps.force_commit,
        ),
        (
            "DELETE",
            "forceRollback",
            "Force rollback (only from Created, Preparing, Rollingback)",
            AdminOps.force_rollback,
        ),
    ):
        router.add_api_route(
            f"{COLLECTION}/{{gtrid:gtrid}}",
            _forced(run),
            methods=[verb],
            operation_id=name,
            summary=f"{summary}; audited",
            response_model=Completion,
            responses={**_FILED, **_errors(400, 401, 403, 404, 412, 503)},
        )

    @router.post(
        f"{COLLECTION}/{{gtrid:gtrid}}/branches/{{bqual}}/resolve",
        operation_id="resolveBranch",
        summary="Close a branch whose resource manager is gone for good, stating its outcome (a heuristic "
        "decision; only for a branch still owed an answer in Committing or Rollingback); audited",
        response_model=Completion,
        responses=_errors(400, 401, 403, 404, 412, 413, 503),
    )
    async def resolve(
        caller: CallerDep,
        ops: OpsDep,
        gtrid: Gtrid,
        bqual: Annotated[str, Path(description="Branch qualifier (branchId), as shown.", pattern=_ID)],
        body: ResolveRequest,
    ) -> dict[str, Any]:
        done = await ops.resolve_branch(caller, gtrid, bqual, body.outcome, body.reason)
        return _traced(completion_view(done), caller)

    @router.post(
        f"{COLLECTION}/bulk",
        operation_id="forget",
        summary="Forget heuristically completed transactions; audited",
        response_model=ForgetResponse,
        responses={**_FILED, **_errors(400, 401, 403, 413, 503)},
    )
    async def forget(caller: CallerDep, ops: OpsDep, body: ForgetRequest) -> dict[str, Any]:
        return _traced(forget_view(await ops.forget(caller, body.txids)), caller)

    @router.get(
        OPENAPI_PATH,
        operation_id="openapi",
        summary="This document",
        responses={200: {"description": "OpenAPI document."}, **_errors(401)},
    )
    async def openapi(request: Request) -> dict[str, Any]:
        return request.app.openapi()

    from xatm.coordinator.server.console.api import add_routes  # which imports this module's parts

    add_routes(router)
    return router


# ------------------------------------------------------------------ the app


def _version() -> str:
    try:
        return version("xatm")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "0+unknown"


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    """The generated document, less what the framework adds for its own validation errors (which
    this API answers with 400 and the Error body)."""
    generate = app.openapi

    def document() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = generate()
            for operations in schema["paths"].values():
                for operation in operations.values():
                    operation["responses"].pop("422", None)
            for name in ("HTTPValidationError", "ValidationError"):
                schema.get("components", {}).get("schemas", {}).pop(name, None)
            app.openapi_schema = schema
        return app.openapi_schema

    return document


def build_app(
    engine: Engine | None = None, ops: AdminOps | None = None, auth: Authenticator | None = None
) -> FastAPI:
    """The coordinator's HTTP app. Without an engine it serves nothing useful but still
    describes itself: ``document()`` uses that."""
    app = FastAPI(
        title="xatm coordinator admin API",
        version=_version(),
        description="Inspect and operate XA transactions. Errors map as follows: 400 malformed, 401 "
        "no/bad token, 403 role too weak, 404 unknown gtrid, 412 status forbids, 429 a bound reached, "
        "503 unavailable. "
        "Roles: viewer reads; operator also forces and forgets.",
        openapi_url=None,
        docs_url=None,
        redoc_url=None,
        exception_handlers={
            XatmError: _refused,
            HTTPException: _no_route,
            RequestValidationError: _malformed,
        },
    )
    app.state.engine, app.state.ops, app.state.auth = engine, ops, auth or Authenticator()

    async def health(request: Request) -> tuple[int, dict[str, Any]]:
        engine: Engine = request.app.state.engine
        body: dict[str, Any] = {"status": "ok", "node": engine.node_id}
        if engine.log_stopped is not None:
            body.update(status="log stopped", reason=engine.log_stopped.reason)
        elif engine.closing:
            body["status"] = "shutting down"
        status = HTTPStatus.OK if body["status"] == "ok" else HTTPStatus.SERVICE_UNAVAILABLE
        return status, {**body, "traceId": request.state.trace}

    add_probes(app, health, health_model=Health)
    admin = _admin_router()
    app.include_router(admin)
    # Every route by itself, in order, for the Allow header of a 405.
    app.state.routes = [r for r in (*app.router.routes, *admin.routes) if isinstance(r, APIRoute)]
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    mount_console(app)
    app.add_middleware(_Envelope)
    return app


def document() -> dict[str, Any]:
    """The OpenAPI document served at ``OPENAPI_PATH``."""
    return build_app().openapi()


class HttpServer:
    """The coordinator's HTTP port on the running loop; OSError (from the constructor) when
    ``listen`` cannot be bound."""

    def __init__(
        self,
        listen: str,
        engine: Engine,
        *,
        ops: AdminOps,
        auth: Authenticator,
        ssl_context: ssl.SSLContext | None = None,
    ):
        self._server = Uvicorn(build_app(engine, ops, auth), listen, ssl_context=ssl_context)
        self.port = self._server.port

    async def start(self) -> None:
        await self._server.start()

    async def stop(self) -> None:
        await self._server.stop()
