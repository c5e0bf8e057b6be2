"""``xatm participant``: a standalone participant agent in front of one database.

For services that cannot link the stub: the agent serves the Participant service for its
resource (a PostgreSQL database or an embedded SQLite store) and the Agent service through
which those services do their business work inside a global transaction: ``Execute`` (SQL,
PostgreSQL) or ``Get``/``Put`` (key/value, SQLite). It is a ParticipantStub like any other,
so branches, enlistment and in-doubt resolution behave exactly as in a linked service.

    xatm participant --resource postgresql://orders@db:5432/orders --listen 0.0.0.0:7080 \
        --advertise agent-orders:7080 --http-listen 0.0.0.0:7081 --coordinator coord:7070

A call may name another coordinator in its metadata only if ``--coordinator`` or
``--allow-coordinators`` lists it; any other is refused with PERMISSION_DENIED before the agent
dials it (and sends it ``--token``).

Every flag also comes from ``XATM_<FLAG>`` (``XATM_RESOURCE``, ...) or from the ``[participant]``
table of a TOML file (``--config FILE``); flags win over env, env over the file. See docs/postgresql.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import re
import socket
import sys
from collections.abc import Callable, Mapping
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import grpc
from pydantic import AfterValidator, BeforeValidator, Field
from pydantic.json_schema import JsonDict

from xatm.participant.api.v1 import agent_pb2, agent_pb2_grpc
from xatm.participant.client.context import current
from xatm.participant.errors import FailedPreconditionError, InvalidArgumentError, Status, XatmError
from xatm.participant.runtime.address import Address, AddressError, callable_address, check_free
from xatm.participant.runtime.allowlist import AllowList, as_text
from xatm.participant.runtime.config import (
    ListenAddress,
    PositiveFloat,
    UsageError,
    XatmSettings,
    add_flags,
    at_least,
    load,
)
from xatm.participant.runtime.extras import MissingExtra, needs_extra
from xatm.participant.runtime.grpc_status import abort
from xatm.participant.runtime.serving import until_signalled
from xatm.participant.runtime.targets import check_addresses
from xatm.participant.stores.base import BranchEnded
from xatm.participant.xa import SERVER_OPTIONS, XaCode, XaError, Xid, rm_id_problem

if TYPE_CHECKING:
    from xatm.participant.runtime.asgi import Uvicorn
    from xatm.participant.stores.base import ResourceManager
    from xatm.participant.stub import ParticipantStub

# Light at import: every `xatm` command registers this subcommand, and only the agent itself
# may load the stub (and with it the participant metrics), health, reflection and drivers.

__all__ = [
    "XA_CODE_KEY",
    "Agent",
    "AgentServicer",
    "AgentSettings",
    "Resource",
    "UsageError",
    "add_parser",
    "parse_resource",
    "resolve",
]

log = logging.getLogger("xatm.agent")

#: Trailing metadata of a failed Agent call: the branch's XA code by name.
XA_CODE_KEY = "xatm-xa-code"
#: Rows of one Execute response; the rest is dropped and ``truncated`` set.
MAX_ROWS = 10_000
_MAX_KEY = 256
_INT64 = (-(2**63), 2**63 - 1)
#: Flags that take an address show it in their help.
_HP: JsonDict = {"metavar": "HOST:PORT"}
# Leading comments, then a statement that would end or split the coordinator's transaction.
_TX_CONTROL = re.compile(
    r"^(?:\s|--[^\n]*(?:\n|$)|/\*.*?\*/)*"
    r"(begin|start|commit|end|rollback|abort|savepoint|release|prepare\s+transaction)\b",
    re.IGNORECASE | re.DOTALL,
)

T = TypeVar("T")


# ------------------------------------------------------------------ resources

#: Resources with SQL, served by Execute.
_SQL_KINDS = ("postgresql", "mysql")


def _column_name(column: Any) -> str:
    """A result column's name: psycopg describes columns by objects, PyMySQL by tuples."""
    return str(column[0] if isinstance(column, tuple) else column.name)


@dataclass(frozen=True)
class Resource:
    """A parsed ``--resource``: ``postgresql://...`` (a libpq URI), ``mysql://...`` or ``sqlite:PATH``."""

    kind: str  # "postgresql", "mysql" or "sqlite"
    target: str  # the URI, or the store's path

    def default_rm_id(self) -> str:
        """The database name, or the store file's stem: stable across restarts."""
        if self.kind == "sqlite":
            return Path(self.target).stem or "sqlite"
        if self.kind == "mysql":
            return _mysql_params(self.target).database
        with needs_extra("postgresql", "--resource postgresql://"):
            from psycopg.conninfo import conninfo_to_dict

        try:
            params = conninfo_to_dict(self.target)
        except Exception as exc:  # psycopg.ProgrammingError; shown as a usage error
            raise UsageError(f"malformed PostgreSQL URI in --resource: {exc}") from None
        return str(params.get("dbname") or params.get("user") or "postgres")

    def open(self, rm_id: str, *, pool_size: int = 4, lock_timeout_ms: int = 5000) -> ResourceManager:
        """The RM; PostgreSQL is checked here (reachable, max_prepared_transactions > 0).

        Raises XatmError (INVALID_ARGUMENT for a malformed URI, UNAVAILABLE, FAILED_PRECONDITION)
        or XaError (a SQLite store already open elsewhere) — never later, mid-commit.
        """
        if self.kind == "sqlite":
            from xatm.participant.stores.sqlite import SqliteRM

            return SqliteRM(self.target, rm_id)
        if self.kind == "mysql":
            from xatm.participant.stores.mysql import MariaRM

            # innodb_lock_wait_timeout counts whole seconds, and has no "none": 0 becomes its maximum.
            wait_s = -(-lock_timeout_ms // 1000) if lock_timeout_ms else 1_073_741_824
            return MariaRM(self.target, rm_id, pool_size=pool_size, lock_wait_timeout_s=wait_s)
        from xatm.participant.stores.postgresql import PostgresRM

        return PostgresRM(self.target, rm_id, pool_size=pool_size, lock_timeout_ms=lock_timeout_ms)


def _mysql_params(url: str) -> Any:
    from xatm.participant.stores.mysql import parse_mysql_url

    try:
        return parse_mysql_url(url)
    except XatmError as exc:
        raise UsageError(f"{exc.message} in --resource") from None


def parse_resource(spec: str) -> Resource:
    if spec.startswith(("postgresql://", "postgres://")):
        return Resource("postgresql", spec)
    if spec.startswith(("mysql://", "mariadb://")):
        _mysql_params(spec)
        return Resource("mysql", spec)
    if spec.startswith("sqlite:") and len(spec) > len("sqlite:"):
        return Resource("sqlite", spec[len("sqlite:") :])
    raise UsageError(
        f"unsupported resource {spec[:80]!r}: expected postgresql://USER@HOST:PORT/DBNAME, "
        "mysql://USER[:PASSWORD]@HOST[:PORT]/DBNAME or sqlite:PATH"
    )


# ------------------------------------------------------------------ settings


def _rm_id(value: str) -> str:
    """The coordinator's rule for a resource manager's id ("" stays unset: the default one)."""
    problem = rm_id_problem(value) if value else ""
    if problem:
        raise ValueError(problem)
    return value


def _callable(value: str) -> str:
    """An address the coordinator can call ("" stays unset): never a wildcard."""
    try:
        return callable_address(value) if value else value
    except AddressError as error:
        raise ValueError(error.message) from None


def _allow_coordinators(value: str) -> str:
    AllowList.parse(value, ports=True)  # ValueError names the bad entry
    return value


class AgentSettings(XatmSettings):
    """Flags > ``XATM_*`` environment > config file ([participant]) > defaults, as the coordinator's."""

    section = "participant"

    resource: str = Field(
        default="",
        description="postgresql://USER@HOST:PORT/DBNAME, mysql://USER@HOST:PORT/DBNAME or sqlite:PATH",
    )
    listen: ListenAddress = Field(
        default="127.0.0.1:7080", description="gRPC listen address", json_schema_extra=_HP
    )
    http_listen: ListenAddress = Field(
        default="127.0.0.1:7081", description="HTTP address for /metrics, /healthz", json_schema_extra=_HP
    )
    coordinator: Annotated[str, AfterValidator(check_addresses)] = Field(
        default="127.0.0.1:7070",
        description="coordinator gRPC address, or several replicas' comma-separated",
        json_schema_extra=_HP,
    )
    advertise: Annotated[str, AfterValidator(_callable)] = Field(
        default="",
        description="address the coordinator calls this agent at; default: the listen address",
        json_schema_extra=_HP,
    )
    rm_id: Annotated[str, AfterValidator(_rm_id)] = Field(
        default="", description="resource manager name (default: database or file name)"
    )
    allow_coordinators: Annotated[str, BeforeValidator(as_text), AfterValidator(_allow_coordinators)] = Field(
        default="",
        description="further coordinators a call's metadata may name: comma-separated HOST:PORT, IP "
        "addresses, host names and CIDRs (default: only --coordinator)",
        json_schema_extra={"metavar": "LIST"},
    )
    token: str = Field(default="", description="bearer token for the coordinator")
    coordinator_token: str = Field(
        default="",
        description="bearer token the coordinator must present on Participant calls (its "
        "--participant-token); default: any caller",
        repr=False,
    )
    pool_size: Annotated[int, at_least(1)] = Field(
        default=8, description="database connections for active branches"
    )
    lock_timeout_ms: Annotated[int, at_least(0)] = Field(
        default=5000,
        description="lock wait bound of business SQL, 0 = none (MySQL: rounded up to whole seconds)",
    )
    recovery_interval: PositiveFloat = Field(
        default=30.0, description="seconds between in-doubt resolution passes"
    )
    log_json: bool = Field(default=False, description="log one JSON object per line")


def resolve(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> AgentSettings:
    """The agent's settings from flags (None = not given), env and config file; UsageError if bad."""
    if flags.get("rm_id") == "":  # given empty, not left out: the default would hide the mistake
        raise UsageError(f"--rm-id '' {rm_id_problem('')} (leave it out for the default)")
    settings = load(AgentSettings, flags, environ)
    if not settings.resource:
        raise UsageError("--resource (or XATM_RESOURCE) is required")
    parse_resource(settings.resource)
    return settings


# ------------------------------------------------------------------ values


def _from_value(value: agent_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    return None if kind is None else getattr(value, kind)


def _to_value(item: Any) -> agent_pb2.Value:
    """A result value; what has no Value kind of its own travels as text (JSON for json and arrays)."""
    if item is None:
        return agent_pb2.Value()
    if isinstance(item, bool):
        return agent_pb2.Value(bool_value=item)
    if isinstance(item, int) and _INT64[0] <= item <= _INT64[1]:
        return agent_pb2.Value(int_value=item)
    if isinstance(item, float):
        return agent_pb2.Value(double_value=item)
    if isinstance(item, str):
        return agent_pb2.Value(text_value=item)
    if isinstance(item, bytes | bytearray | memoryview):
        return agent_pb2.Value(bytes_value=bytes(item))
    if isinstance(item, dict | list):
        return agent_pb2.Value(text_value=json.dumps(item, default=str))
    if isinstance(item, datetime.date | datetime.time):
        return agent_pb2.Value(text_value=item.isoformat())
    return agent_pb2.Value(text_value=str(item))


def _status_for(code: XaCode) -> Status:
    if code.is_rollback:
        return Status.ABORTED
    if code == XaCode.XAER_RMFAIL:
        return Status.UNAVAILABLE
    if code in (XaCode.XAER_RMERR, XaCode.XAER_INVAL):  # bad SQL, bad key or value
        return Status.INVALID_ARGUMENT
    return Status.FAILED_PRECONDITION


# ------------------------------------------------------------------ the Agent service


class AgentServicer(agent_pb2_grpc.AgentServicer):
    """Business calls on the resource, each inside the caller's branch (threaded server).

    A call that fails inside the branch dooms the global transaction (the stub marks it
    rollback-only); its status carries the XA code: XA_RB* -> ABORTED, XAER_RMFAIL ->
    UNAVAILABLE, bad SQL or values -> INVALID_ARGUMENT. A call for a branch that has ended
    (committed, rolled back, timed out; also one cut short by that end) runs nothing and answers
    FAILED_PRECONDITION naming the branch and how it ended -- never autocommit. Calls refused
    before the branch is joined (wrong resource kind, transaction control, no transaction) leave
    it untouched.
    """

    def __init__(self, stub: ParticipantStub, kind: str):
        self.stub = stub
        self.kind = kind

    def Execute(self, request: agent_pb2.ExecuteRequest, context: grpc.ServicerContext) -> Any:
        return self._serve(self._execute, request, context)

    def Get(self, request: agent_pb2.GetRequest, context: grpc.ServicerContext) -> Any:
        return self._serve(self._get, request, context)

    def Put(self, request: agent_pb2.PutRequest, context: grpc.ServicerContext) -> Any:
        return self._serve(self._put, request, context)

    def _execute(self, request: agent_pb2.ExecuteRequest) -> agent_pb2.ExecuteResponse:
        self._require(_SQL_KINDS, "Execute", "use Get and Put")
        if not request.sql.strip():
            raise InvalidArgumentError("sql is required")
        if match := _TX_CONTROL.match(request.sql):
            raise InvalidArgumentError(
                f"{match[1].upper()} refused: the coordinator owns the transaction "
                "(use the initiator's commit, rollback and savepoints)",
            )
        params = [_from_value(v) for v in request.params]
        rm: Any = self.stub.rm  # a PostgresRM or MariaRM, not imported: an agent loads only its own driver

        def run(xid: Xid) -> agent_pb2.ExecuteResponse:
            # The branch's connection handle: if the branch ends (its transaction times out, the
            # coordinator rolls it back) before or while the statement runs, it raises BranchEnded.
            with rm.guard(xid) as conn:
                cur = conn.execute(request.sql, params or None)
                rows = cur.fetchmany(MAX_ROWS + 1) if cur.description else []
                return agent_pb2.ExecuteResponse(
                    columns=[_column_name(c) for c in cur.description or ()],
                    rows=[agent_pb2.Row(values=[_to_value(v) for v in row]) for row in rows[:MAX_ROWS]],
                    rowcount=cur.rowcount,
                    status=getattr(cur, "statusmessage", None) or "",
                    truncated=len(rows) > MAX_ROWS,
                )

        return self._in_branch(run)

    def _get(self, request: agent_pb2.GetRequest) -> agent_pb2.GetResponse:
        self._require(("sqlite",), "Get", "use Execute with SQL")
        key, rm = _key(request.key), self.stub.rm
        value = self._in_branch(lambda xid: rm.get(xid, key))  # type: ignore[attr-defined]
        return agent_pb2.GetResponse() if value is None else agent_pb2.GetResponse(value=_to_value(value))

    def _put(self, request: agent_pb2.PutRequest) -> agent_pb2.PutResponse:
        self._require(("sqlite",), "Put", "use Execute with SQL")
        key, rm = _key(request.key), self.stub.rm
        if request.value.WhichOneof("kind") not in ("int_value", "text_value"):
            raise InvalidArgumentError("value must be an int_value or a text_value")
        value = _from_value(request.value)
        self._in_branch(lambda xid: rm.put(xid, key, value))  # type: ignore[attr-defined]
        return agent_pb2.PutResponse()

    def _require(self, kinds: tuple[str, ...], verb: str, instead: str) -> None:
        if self.kind not in kinds:
            raise XatmError(
                f"{verb} serves {' and '.join(kinds)} resources; "
                f"this agent's resource is {self.kind}: {instead}",
                Status.UNIMPLEMENTED,
            )

    def _in_branch(self, work: Callable[[Xid], T]) -> T:
        """Run ``work`` on this resource's branch of the caller's transaction.

        Outside a transaction the call is refused rather than run as a local transaction: a
        caller that forgot the metadata would otherwise commit its work outside the global one.
        """
        tx = current()
        if tx is None:
            raise FailedPreconditionError(
                "no global transaction: send the xatm-gtrid and xatm-coordinator metadata of a "
                "transaction begun at the coordinator",
            )
        try:
            with self.stub.branch() as xid:
                return work(xid)
        except XaError as error:
            raise _XaFailure(error, tx.gtrid) from error

    @staticmethod
    def _serve(handler: Callable[[Any], Any], request: Any, context: grpc.ServicerContext) -> Any:
        """The handler's response, or its XatmError as the call's status (context.abort raises)."""
        try:
            return handler(request)
        except _XaFailure as failure:
            context.set_trailing_metadata(((XA_CODE_KEY, failure.xa_code.name),))
            abort(context, failure)
        except XatmError as error:
            abort(context, error)


class _XaFailure(XatmError):
    """An XaError inside the branch, as the status the caller gets; the code goes in a trailer.

    A branch that has already ended (BranchEnded) answers FAILED_PRECONDITION saying how it
    ended; nothing ran, and the transaction's outcome is whatever it already was.
    """

    def __init__(self, error: XaError, gtrid: str):
        if isinstance(error, BranchEnded):
            status, message = Status.FAILED_PRECONDITION, f"transaction {gtrid}: {error.reason}"
        else:
            status = _status_for(error.code)
            message = f"{error.code.name}: {error.reason}; transaction {gtrid} will roll back"
        super().__init__(message, status)
        self.xa_code = error.code


def _key(key: str) -> str:
    if not 0 < len(key) <= _MAX_KEY:
        raise InvalidArgumentError(f"key must be 1-{_MAX_KEY} characters")
    return key


# ------------------------------------------------------------------ the process


class Agent:
    """The RM, its ParticipantStub, the gRPC server and the HTTP port of one agent."""

    def __init__(self, settings: AgentSettings):
        """Opens the resource, so a database that cannot host branches stops the agent here."""
        from grpc_health.v1 import health

        from xatm.participant.stub import ParticipantStub

        self.settings = settings
        self.resource = parse_resource(settings.resource)
        rm_id = settings.rm_id or self.resource.default_rm_id()
        self.rm = self.resource.open(
            rm_id, pool_size=settings.pool_size, lock_timeout_ms=settings.lock_timeout_ms
        )
        self.stopping = False
        self.stub: ParticipantStub | None = None
        self.health = health.HealthServicer()
        # Business calls beyond the pool wait in rm.start; the extra workers keep the
        # coordinator's prepare/commit calls (which release locks) from queueing behind them.
        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=settings.pool_size + 16),
            interceptors=[ParticipantStub.server_interceptor()],
            options=SERVER_OPTIONS,
        )
        self.http: Uvicorn | None = None

    def start(self) -> None:
        """Bind, serve, resolve in-doubt branches; OSError when a port cannot be bound."""
        from grpc_health.v1 import health_pb2, health_pb2_grpc
        from grpc_reflection.v1alpha import reflection

        from xatm.participant.api.v1 import participant_pb2
        from xatm.participant.runtime.asgi import Uvicorn, probe_app
        from xatm.participant.stub import ParticipantStub

        settings = self.settings
        try:
            self.http = Uvicorn(probe_app(self._health), settings.http_listen)
        except OSError as err:
            raise OSError(f"cannot listen on --http-listen {settings.http_listen}: {err.strerror}") from err
        check_free(settings.listen, "cannot listen on --listen")
        try:
            port = self.server.add_insecure_port(settings.listen)
        except RuntimeError:  # grpc's "Failed to bind"
            port = 0
        if not port:
            raise OSError(f"cannot listen on --listen {settings.listen}")
        self.stub = ParticipantStub(
            self.rm,
            coordinator=settings.coordinator,
            advertise=self._advertise(port),
            token=settings.token or None,
            allowed_coordinators=settings.allow_coordinators,
            coordinator_token=settings.coordinator_token or None,
        )
        self.stub.add_to_server(self.server)
        agent_pb2_grpc.add_AgentServicer_to_server(AgentServicer(self.stub, self.resource.kind), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (
            participant_pb2.DESCRIPTOR.services_by_name["Participant"].full_name,
            agent_pb2.DESCRIPTOR.services_by_name["Agent"].full_name,
        )
        health_name = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
        reflection.enable_server_reflection((*names, health_name, reflection.SERVICE_NAME), self.server)
        self.server.start()
        self.http.start_thread("xatm-agent-http")
        self.stub.start_recovery(self.settings.recovery_interval)
        for name in ("", *names):
            self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info(
            "participant agent %s (%s) serving gRPC on %s (advertised as %s), HTTP on %s (port %d)",
            self.rm.rm_id,
            self.resource.kind,
            settings.listen,
            self.stub.advertise,
            settings.http_listen,
            self.http.port,
        )

    async def _health(self, request: Any) -> tuple[int, dict[str, Any]]:
        """``/healthz``: 200 while serving, 503 once stopping; names the RM and its kind."""
        state = {"status": "shutting down" if self.stopping else "ok", "rm_id": self.rm.rm_id}
        return (503 if self.stopping else 200), {**state, "resource": self.resource.kind}

    def _advertise(self, port: int) -> str:
        if self.settings.advertise:
            return self.settings.advertise
        listen = Address.parse(self.settings.listen, listen=True)
        advertise = Address(socket.getfqdn() if listen.is_wildcard else listen.host, port)
        if listen.is_wildcard:
            log.warning(
                "--listen %s is a wildcard address: telling the coordinator %s; set --advertise "
                "(XATM_ADVERTISE) to the address it reaches this agent at",
                self.settings.listen,
                advertise,
            )
        return str(advertise)

    def stop(self, grace: float = 5.0) -> None:
        """Drain calls, then close: active branches roll back, prepared ones stay for the coordinator."""
        self.stopping = True
        self.health.enter_graceful_shutdown()
        self.server.stop(grace).wait()
        if self.http is not None:
            self.http.stop_thread()
        if self.stub is not None:
            self.stub.close()
        self.rm.close()


def _run(args: argparse.Namespace) -> int:
    try:
        settings = resolve(vars(args))
    except UsageError as err:
        print(f"xatm participant: {err}", file=sys.stderr)
        return 2
    except MissingExtra as err:  # the resource's driver, met while checking --resource
        print(f"xatm participant: {err.message}", file=sys.stderr)
        return 1
    from xatm.participant.runtime import logs

    logs.setup(json_lines=settings.log_json)
    try:
        agent = Agent(settings)
    except UsageError as err:
        print(f"xatm participant: {err}", file=sys.stderr)
        return 2
    except XaError as err:  # a SQLite store already open in another process
        print(f"xatm participant: {err.reason or err.code.name}", file=sys.stderr)
        return 1
    except XatmError as err:
        print(f"xatm participant: {err.message}", file=sys.stderr)
        return 2 if err.status == Status.INVALID_ARGUMENT else 1
    except OSError as err:
        print(f"xatm participant: cannot open {settings.resource}: {err}", file=sys.stderr)
        return 1
    try:
        agent.start()
    except OSError as err:
        print(f"xatm participant: {err}", file=sys.stderr)
        agent.stop(grace=0)
        return 1
    until_signalled()
    log.info("shutting down")
    agent.stop()
    return 0


def add_parser(sub: Any) -> None:
    """Register ``xatm participant`` on the ``xatm`` command's subparsers."""
    parser = sub.add_parser(
        "participant",
        help="run a standalone participant agent in front of one database",
        description="Run a participant agent: the Participant and Agent gRPC services for one "
        "PostgreSQL database or SQLite store. Every flag also comes from XATM_<FLAG> or from the "
        "[participant] table of the --config file; flags win over env, env over the file.",
    )
    parser.add_argument(
        "--config",
        default=None,
        metavar="FILE",
        help="TOML config file, [participant] table (env XATM_CONFIG)",
    )
    add_flags(parser, AgentSettings)
    parser.set_defaults(func=_run)
