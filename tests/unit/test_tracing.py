"""OpenTelemetry spans across initiator, coordinator and two participants, collected by the SDK's
in-memory exporter: everything runs in this process (a real coordinator on a memory log, two
grpc.aio services linking the stub), so one exporter sees every side of each call."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from xatm.coordinator.app import Coordinator
from xatm.coordinator.settings import Settings
from xatm.coordinator.tools.procs import free_port
from xatm.coordinator.txlog.memory import MemoryLog
from xatm.participant import AioServerInterceptor, AsyncTransactionManager, ParticipantStub, failpoints
from xatm.participant.client.interceptors import aio_client_interceptors
from xatm.participant.errors import XatmError
from xatm.participant.runtime import tracing
from xatm.participant.stores.memory import MemoryRM

_DEPOSIT = "/test.Bank/Deposit"


@pytest.fixture
def exporter() -> Iterator[InMemorySpanExporter]:
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.enable(provider)
    yield spans
    tracing.disable()
    provider.shutdown()


async def _service(rm: MemoryRM, coordinator: str) -> tuple[grpc.aio.Server, ParticipantStub, str]:
    server = grpc.aio.server(interceptors=[AioServerInterceptor()])
    port = server.add_insecure_port("127.0.0.1:0")
    stub = ParticipantStub(rm, coordinator=coordinator, advertise=f"127.0.0.1:{port}")

    async def deposit(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
        async with stub.abranch() as xid:  # the memory RM keeps no data: joining is the point
            pass
        return xid.gtrid.encode()

    stub.add_to_server(server)
    handler = grpc.unary_unary_rpc_method_handler(deposit)
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("test.Bank", {"Deposit": handler}),)
    )
    await server.start()
    return server, stub, f"127.0.0.1:{port}"


def _run(tmp_path: Path, exporter: InMemorySpanExporter, *, vote_no: bool) -> tuple[str, str]:
    """One transaction depositing at two services, committed; returns (gtrid, the root's trace id)."""
    provider_tracer = tracing._tracer
    assert provider_tracer is not None
    settings = Settings(
        listen=f"127.0.0.1:{free_port()}",
        http_listen=f"127.0.0.1:{free_port()}",
        data_dir=tmp_path / "data",
        call_timeout=5,
        commit_wait=5,
    )
    found: dict[str, str] = {}

    async def main() -> None:
        coordinator = Coordinator(settings, MemoryLog())
        await coordinator.start()
        services = [await _service(MemoryRM(rm), settings.listen) for rm in ("rm-a", "rm-b")]
        try:
            async with AsyncTransactionManager(settings.listen) as tm:
                with provider_tracer.start_as_current_span("checkout") as root:
                    found["trace"] = format(root.get_span_context().trace_id, "032x")
                    tx = await tm.begin()
                    found["gtrid"] = tx.gtrid
                    for _, _, address in services:
                        async with grpc.aio.insecure_channel(
                            address, interceptors=aio_client_interceptors()
                        ) as channel:
                            await channel.unary_unary(_DEPOSIT)(b"10")
                    try:
                        await tx.commit()
                    except XatmError:
                        assert vote_no
        finally:
            for server, stub, _ in services:
                await server.stop(None)
                stub.close()
            await coordinator.stop(0)

    if vote_no:
        failpoints.arm("participant.prepare=1*return(XA_RBROLLBACK)")
    asyncio.run(main())
    return found["gtrid"], found["trace"]


def _named(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [s for s in spans if s.name == name]


def test_one_trace_spans_initiator_coordinator_and_both_participants(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    gtrid, trace = _run(tmp_path, exporter, vote_no=False)
    spans = exporter.get_finished_spans()
    assert {format(s.context.trace_id, "032x") for s in spans} == {trace}  # one trace, every side
    counts = {name: len(_named(spans, name)) for name in {s.name for s in spans}}
    for name, count in {
        "checkout": 1,
        "xatm.coordinator.Begin": 1,
        "xatm.service.call": 2,
        "xatm.stub.enlist": 2,
        "xatm.coordinator.Enlist": 2,
        "xatm.coordinator.Commit": 1,
        "xatm.coordinator.prepare": 2,
        "xatm.participant.prepare": 2,
        "xatm.coordinator.commit": 2,
        "xatm.participant.commit": 2,
    }.items():
        assert counts.get(name) == count, (name, counts)
    by_id = {s.context.span_id: s for s in spans}
    for s in spans:
        if s.name != "checkout":
            assert s.attributes is not None and s.attributes.get("xatm.gtrid") == gtrid, s.name
    # Each participant's span is the child of the coordinator's call to that branch.
    for served in _named(spans, "xatm.participant.prepare") + _named(spans, "xatm.participant.commit"):
        assert served.parent is not None
        caller = by_id[served.parent.span_id]
        assert caller.name == served.name.replace("participant", "coordinator")
        assert caller.attributes is not None and served.attributes is not None
        assert caller.attributes["xatm.bqual"] == served.attributes["xatm.bqual"]
        assert served.attributes["xatm.xa_code"] == "XA_OK"
    # The enlist of each stub is a child of the service call the initiator made.
    for enlist in _named(spans, "xatm.stub.enlist"):
        assert enlist.parent is not None and by_id[enlist.parent.span_id].name == "xatm.service.call"
        assert enlist.attributes is not None and enlist.attributes["xatm.rm_id"] in ("rm-a", "rm-b")


def test_a_vote_no_shows_the_rollback_spans(tmp_path: Path, exporter: InMemorySpanExporter) -> None:
    gtrid, trace = _run(tmp_path, exporter, vote_no=True)
    spans = exporter.get_finished_spans()
    assert {format(s.context.trace_id, "032x") for s in spans} == {trace}
    codes = sorted(
        str(s.attributes["xatm.xa_code"])
        for s in _named(spans, "xatm.participant.prepare")
        if s.attributes is not None
    )
    assert "XA_RBROLLBACK" in codes
    rollbacks = _named(spans, "xatm.coordinator.rollback")
    assert rollbacks and all(s.attributes and s.attributes["xatm.gtrid"] == gtrid for s in rollbacks)
    assert _named(spans, "xatm.participant.rollback")
    assert not _named(spans, "xatm.coordinator.commit")


def test_a_forced_rollback_carries_the_operator_trace_id(
    tmp_path: Path, exporter: InMemorySpanExporter
) -> None:
    settings = Settings(
        listen=f"127.0.0.1:{free_port()}", http_listen=f"127.0.0.1:{free_port()}", data_dir=tmp_path / "d"
    )

    async def main() -> str:
        coordinator = Coordinator(settings, MemoryLog())
        await coordinator.start()
        try:
            async with AsyncTransactionManager(settings.listen) as tm:
                tx = await tm.begin()
            request = urllib.request.Request(
                f"http://{settings.http_listen}/admin/v1/xa-transaction/{tx.gtrid}",
                method="DELETE",
                headers={"X-Trace-Id": "op-ticket-77"},
            )
            await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=10).read())
            return tx.gtrid
        finally:
            await coordinator.stop(0)

    gtrid = asyncio.run(main())
    (forced,) = _named(exporter.get_finished_spans(), "xatm.admin.force_rollback")
    assert forced.attributes is not None
    assert forced.attributes["xatm.operator_trace_id"] == "op-ticket-77"
    assert forced.attributes["xatm.gtrid"] == gtrid


def test_tracing_off_costs_no_span(tmp_path: Path) -> None:
    assert not tracing.enabled()
    assert tracing.inject() == ()
    with tracing.span("x", gtrid="g") as first, tracing.span("y") as second:
        assert first is second  # one shared no-op: nothing is allocated per call
