"""Pathological request bodies on every REST route of the coordinator's HTTP app, in-process.

Every route is sent bodies nested 100,000 deep, bodies that are not JSON or not UTF-8, and
bodies over the size bound, by a viewer and by an operator. A route that takes a body answers
one line of JSON with 400 (413 for size), and a viewer is told 403 on the routes its role
cannot use before anything is said about its body; a route that takes none never reads it and
answers as it does without one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

import pytest

from xatm.coordinator.server.admin import AdminOps
from xatm.coordinator.server.auth import Authenticator, Permission, Principal, Role
from xatm.coordinator.server.http import _PERMISSIONS, MAX_BODY, build_app
from xatm.coordinator.server.json_limits import MAX_DEPTH, json_depth
from xatm.participant.errors import NotFoundError

UNKNOWN = "n0.0000000000000000000000000000"
COLLECTION = "/admin/v1/xa-transaction"
_PARAMETERS = {"{gtrid:gtrid}": UNKNOWN, "{bqual}": "b1", "{request_id}": "r1"}


def _routes(takes_body: bool) -> list[tuple[str, str, bool]]:
    """Every REST route of the app (verb, path with its parameters filled in, whether a viewer may
    use it) that takes a body, or that takes none: a route added later is tested too."""
    routes = []
    for route in _app().state.routes:
        if (route.body_field is not None) != takes_body:
            continue
        path = route.path
        for parameter, value in _PARAMETERS.items():
            path = path.replace(parameter, value)
        assert "{" not in path, f"give {path} a value in _PARAMETERS"
        viewer_may = _PERMISSIONS.get(route.operation_id or "") in (None, Permission.READ)
        routes += [(method, path, viewer_may) for method in sorted(route.methods)]
    return routes


DEEP = b"[" * 100_000 + b"]" * 100_000
BODIES = {
    "deep-array": DEEP,
    "deep-object": b'{"a":' * 100_000 + b"1" + b"}" * 100_000,
    "deep-inside": b'{"txids": ' + DEEP + b"}",
    "deep-reason": b'{"outcome": "committed", "reason": ' + DEEP + b"}",
    "not-json": b"{not json",
    "not-utf8": b'{"txids": ["\xff\xfe"]}',
    "nul": b'{"txids": ["\x00"]}',
}


class _Engine:
    node_id = "n0"
    closing = False
    log_stopped = None
    audit_log: list[Any] = []

    def listing(self, *_: Any) -> list[Any]:
        return []

    def get(self, gtrid: str, *_: Any) -> Any:
        raise NotFoundError(f"no transaction {gtrid}")

    force_commit = rollback = resolve_branch = forget = get

    async def record_audit(self, record: Any) -> None:
        self.audit_log.append(record)


def _app() -> Any:
    tokens = [(hashlib.sha256(name.encode()).digest(), Principal(name, role)) for name, role in
              (("viewer", Role.VIEWER), ("operator", Role.OPERATOR))]  # fmt: skip
    engine: Any = _Engine()
    return build_app(engine, AdminOps(engine), Authenticator(tokens))


def _call(app: Any, method: str, path: str, body: bytes = b"", token: str = "operator",
          length: int | None = None,
          kind: bytes = b"application/json") -> tuple[int, dict[str, Any]]:  # fmt: skip
    """One request through the ASGI app: (status, JSON body)."""
    path, _, query = path.partition("?")
    headers = [(b"authorization", f"Bearer {token}".encode()), (b"content-type", kind)]
    headers.append((b"content-length", str(len(body) if length is None else length).encode()))
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method,
        "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
        "headers": headers, "client": ("127.0.0.1", 5000), "server": ("127.0.0.1", 7071),
    }  # fmt: skip
    sent: list[dict[str, Any]] = []
    chunks = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        return chunks.pop(0) if chunks else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(app(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    raw = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    try:
        return status, json.loads(raw)
    except ValueError:
        return status, {"text": raw[:60]}


BODY_ROUTES = _routes(takes_body=True)
PLAIN_ROUTES = _routes(takes_body=False)
ROUTES = BODY_ROUTES + PLAIN_ROUTES


@pytest.fixture(scope="module")
def app() -> Any:
    return _app()


def _ids(routes: list[tuple[str, str, bool]]) -> list[str]:
    return [f"{method} {path}" for method, path, _ in routes]


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
@pytest.mark.parametrize(("method", "path", "viewer_may"), BODY_ROUTES, ids=_ids(BODY_ROUTES))
def test_a_pathological_body_is_400_and_the_role_is_judged_first(
    app: Any, method: str, path: str, viewer_may: bool, body: bytes
) -> None:
    status, answer = _call(app, method, path, body, token="operator")
    assert status == 400, answer
    assert set(answer) == {"error", "traceId"} and "\n" not in answer["error"]
    status, answer = _call(app, method, path, body, token="viewer")
    assert status == (400 if viewer_may else 403), answer


@pytest.mark.parametrize("body", BODIES.values(), ids=BODIES.keys())
@pytest.mark.parametrize(("method", "path", "viewer_may"), PLAIN_ROUTES, ids=_ids(PLAIN_ROUTES))
def test_a_route_without_a_body_never_reads_one(
    app: Any, method: str, path: str, viewer_may: bool, body: bytes
) -> None:
    for token in ("operator", "viewer"):
        without = _call(app, method, path, b"", token=token)
        status, answer = _call(app, method, path, body, token=token)
        assert status == without[0] and status < 500, answer
        if "traceId" in answer:
            assert set(answer) - {"traceId"} == set(without[1]) - {"traceId"}


@pytest.mark.parametrize(("method", "path", "viewer_may"), ROUTES, ids=_ids(ROUTES))
def test_a_body_over_the_bound_is_413_on_every_route(
    app: Any, method: str, path: str, viewer_may: bool
) -> None:
    status, answer = _call(app, method, path, b"", length=MAX_BODY + 1)
    assert status == 413 and set(answer) == {"error", "traceId"}


def test_depth_is_measured_outside_strings() -> None:
    assert json_depth(b'{"a": [1, {"b": "[[[[{{{{"}]}') == 3
    assert json_depth(b'"\\"[[["') == 0
    assert json_depth(DEEP) == 100_000
    assert MAX_DEPTH < 100


@pytest.mark.parametrize(("method", "path", "viewer_may"), BODY_ROUTES, ids=_ids(BODY_ROUTES))
def test_a_json_body_sent_as_another_type_is_told_to_say_json(
    app: Any, method: str, path: str, viewer_may: bool
) -> None:
    """Found by a newcomer: curl -d without -H sends form data, and the answer said the body was
    not a dictionary when it was one."""
    status, answer = _call(app, method, path, b'{"reason": "x"}', kind=b"application/x-www-form-urlencoded")
    assert status == 400, answer
    assert "Content-Type: application/json" in answer["error"], answer
    assert "application/x-www-form-urlencoded" in answer["error"], answer


def test_a_long_malformed_id_is_quoted_by_its_start_and_its_length(app: Any) -> None:
    """Found by a newcomer: a 65-character gtrid was quoted cut in the middle, its quote unclosed."""
    status, answer = _call(app, "GET", f"{COLLECTION}/{'a' * 65}", token="viewer")
    assert status == 400, answer
    assert f"{'a' * 32!r}... (65 characters)" in answer["error"], answer
