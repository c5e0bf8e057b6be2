"""Every method of every service each xatm process serves, against request bytes that do not decode
and against an oversized message: INVALID_ARGUMENT with one log line and no traceback, or
RESOURCE_EXHAUSTED naming the limit; the process serves on.

The processes: a coordinator (auth on: its xatm services answer an unauthenticated caller first),
an SDK stub server (the bank example's account service, threaded and asyncio) and the standalone
agent. The services each one serves are listed here; where the process offers reflection, the
test checks the list against what it says it serves, so a service added later is not missed.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase

from tests.admin_support import write_auth_file
from tests.bank_system import TEST_COORDINATOR_ENV
from xatm.coordinator.tools.bank._proto import bank_pb2
from xatm.coordinator.tools.demo import bank_proc
from xatm.coordinator.tools.procs import Proc, coordinator_proc, free_port
from xatm.participant.api.v1 import admin_pb2, agent_pb2, coordinator_pb2, participant_pb2

OPS, SERVICE = (f"{who}-{os.urandom(12).hex()}" for who in ("ops", "svc"))
TOKENS = {"ops": ("operator", OPS, None), "svc": ("service", SERVICE, None)}
#: Bytes no request message parses: a truncated tag, a length past the end, a truncated varint.
UNDECODABLE = [b"\xff\xff\xff", b"\x0a\xff\xff\xff\xff\x0f", b"\x08"]
#: Over every server's default 4 MiB limit, so refused before anything parses it.
OVERSIZED = b"\x0a\xff\xff\xff\x02" + b"x" * (5 << 20)
#: What gRPC answers it with (the server's own words; the prefix depends on the server kind).
LIMIT = r"(SERVER: )?Received message larger than max \(\d+ vs\. \d+\)"


def _service(module: Any, name: str) -> ServiceDescriptor:
    service: ServiceDescriptor = module.DESCRIPTOR.services_by_name[name]
    return service


HEALTH = _service(health_pb2, "Health")
REFLECTION = _service(reflection_pb2, "ServerReflection")
PARTICIPANT = _service(participant_pb2, "Participant")


@dataclass
class Served:
    """A running process, the services it serves, and the token (if any) each service needs."""

    proc: Proc
    services: list[ServiceDescriptor]
    tokens: dict[str, str] = field(default_factory=dict)

    def methods(self) -> list[tuple[str, Any]]:
        return [(f"/{s.full_name}/{m.name}", m) for s in self.services for m in s.methods]


@pytest.fixture(scope="module")
def processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Served]]:
    root = tmp_path_factory.mktemp("undecodable")
    env = {**TEST_COORDINATOR_ENV, "XATM_AUTH_FILE": str(write_auth_file(root / "tokens.toml", TOKENS))}
    coordinator = coordinator_proc(root / "data", root, env=env, extra=["--log-json"])
    started: list[Proc] = []
    try:
        started.append(coordinator.start())
        banks = {}
        for kind in ("threaded", "asyncio"):
            bank = bank_proc(f"bank-{kind}", root / f"{kind}.db", coordinator.address, "acct=10", root)
            bank.env = {"XATM_TOKEN": SERVICE}
            if kind == "asyncio":
                bank.argv.append("--aio")
            started.append(bank.start())
            banks[kind] = bank
        port, http = free_port(), free_port()
        argv = ["-m", "xatm", "participant", "--listen", f"127.0.0.1:{port}", "--log-json"]
        argv += ["--http-listen", f"127.0.0.1:{http}", "--coordinator", coordinator.address]
        agent = Proc(
            "agent",
            argv,
            f"127.0.0.1:{port}",
            root / "agent.log",
            {"XATM_RESOURCE": f"sqlite:{root / 'kv.db'}", "XATM_TOKEN": SERVICE},
        )
        started.append(agent.start())
        accounts = _service(bank_pb2, "Accounts")
        coordinator_services = [_service(coordinator_pb2, "Coordinator"), _service(admin_pb2, "Admin")]
        yield {
            "coordinator": Served(
                coordinator,
                [*coordinator_services, HEALTH, REFLECTION],
                {coordinator_services[0].full_name: SERVICE, coordinator_services[1].full_name: OPS},
            ),
            "sdk-threaded": Served(banks["threaded"], [PARTICIPANT, accounts, HEALTH]),
            "sdk-asyncio": Served(banks["asyncio"], [PARTICIPANT, accounts, HEALTH]),
            "agent": Served(agent, [PARTICIPANT, _service(agent_pb2, "Agent"), HEALTH, REFLECTION]),
        }
    finally:
        for proc in started:
            proc.stop()


def _call(
    address: str, method: Any, full_name: str, payload: bytes, token: str | None
) -> grpc.RpcError | None:
    """One call of ``full_name`` whose request is ``payload`` as it is; the error it ended with."""
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    with grpc.insecure_channel(address) as channel:
        kind = ("stream" if method.client_streaming else "unary") + "_"
        kind += "stream" if method.server_streaming else "unary"
        make: Callable[..., Any] = getattr(channel, kind)
        call = make(full_name, request_serializer=None, response_deserializer=None)
        request = iter([payload]) if method.client_streaming else payload
        try:
            reply = call(request, metadata=metadata, timeout=30)
            if method.server_streaming:
                list(reply)
        except grpc.RpcError as err:
            return err
    return None


def _log(proc: Proc) -> str:
    return proc.log_path.read_text(errors="replace")


def _logged_once_each(proc: Proc, before: int, marker: str, refusals: int) -> None:
    """Since offset ``before`` the log holds one ``marker`` line per refusal, no error, no traceback."""
    new = _log(proc)[before:]
    lines = [line for line in new.splitlines() if marker in line]
    assert len(lines) == refusals, new[-3000:]
    assert "Traceback" not in new and not re.search(r"\bERROR\b|\"level\": \"error\"", new), new[-3000:]
    assert proc.alive


KINDS = ["coordinator", "sdk-threaded", "sdk-asyncio", "agent"]


@pytest.mark.parametrize("kind", ["coordinator", "agent"])  # the bank example offers no reflection
def test_the_services_listed_are_all_the_process_serves(processes: dict[str, Served], kind: str) -> None:
    served = processes[kind]
    with grpc.insecure_channel(served.proc.address) as channel:
        names = set(ProtoReflectionDescriptorDatabase(channel).get_services())
    assert names == {s.full_name for s in served.services}


@pytest.mark.parametrize("kind", KINDS)
def test_every_method_refuses_undecodable_bytes_with_one_line(
    processes: dict[str, Served], kind: str
) -> None:
    served = processes[kind]
    before = len(_log(served.proc))
    refused = 0
    for full_name, method in served.methods():
        token = served.tokens.get(method.containing_service.full_name)
        for payload in UNDECODABLE:
            if token:  # the caller is known before its request is judged
                err = _call(served.proc.address, method, full_name, payload, None)
                assert err is not None and err.code() == grpc.StatusCode.UNAUTHENTICATED, full_name
            err = _call(served.proc.address, method, full_name, payload, token)
            assert err is not None, f"{full_name} accepted {payload!r}"
            assert err.code() == grpc.StatusCode.INVALID_ARGUMENT, (full_name, err.code(), err.details())
            assert err.details() == f"the request is not a {method.name} request message"
            refused += 1
    _logged_once_each(served.proc, before, "not its request message", refused)


@pytest.mark.parametrize("kind", KINDS)
def test_every_method_refuses_an_oversized_message(processes: dict[str, Served], kind: str) -> None:
    served = processes[kind]
    before = len(_log(served.proc))
    for full_name, method in served.methods():
        token = served.tokens.get(method.containing_service.full_name)
        err = _call(served.proc.address, method, full_name, OVERSIZED, token)
        assert err is not None and err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, full_name
        assert re.fullmatch(LIMIT, err.details() or ""), err.details()
    assert "Traceback" not in _log(served.proc)[before:]
    assert served.proc.alive


@pytest.mark.parametrize("kind", KINDS)
def test_a_method_the_server_leaves_out_is_unimplemented_with_one_line(
    processes: dict[str, Served], kind: str
) -> None:
    """grpcio-health-checking's servicers leave ``Health/List`` out: a well-formed call of it."""
    served = processes[kind]
    before = len(_log(served.proc))
    full_name = f"/{HEALTH.full_name}/List"
    err = _call(served.proc.address, HEALTH.methods_by_name["List"], full_name, b"", None)
    assert err is not None and err.code() == grpc.StatusCode.UNIMPLEMENTED, err
    assert err.details() == f"{full_name} is not implemented by this server"
    _logged_once_each(served.proc, before, "not implemented by this server", 1)
