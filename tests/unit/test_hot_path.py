"""Per-call costs kept off the hot path: metric children looked up once per label set, and the
coordinator's services wrapped by the caller check once per method instead of per call."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import prometheus_client
import pytest

from xatm.coordinator.app import Coordinator
from xatm.coordinator.server.services import CallerInterceptor
from xatm.coordinator.settings import Settings
from xatm.coordinator.tools.procs import free_port
from xatm.coordinator.txlog.memory import MemoryLog
from xatm.participant.api.v1 import admin_pb2, admin_pb2_grpc, coordinator_pb2, coordinator_pb2_grpc
from xatm.participant.runtime.metric_types import Counter, Histogram
from xatm.participant.xa import new_gtrid


def test_a_label_set_is_looked_up_by_prometheus_once(monkeypatch: pytest.MonkeyPatch) -> None:
    registry = prometheus_client.CollectorRegistry()
    calls = Counter("xatm_test_calls_total", "calls", ["verb", "code"], registry=registry)
    spans = Histogram("xatm_test_seconds", "spans", ["verb"], registry=registry)
    lookups: list[tuple[Any, ...]] = []
    real = prometheus_client.metrics.MetricWrapperBase.labels

    def counted(self: Any, *values: Any, **named: Any) -> Any:
        lookups.append(values or tuple(named.items()))
        return real(self, *values, **named)

    monkeypatch.setattr(prometheus_client.metrics.MetricWrapperBase, "labels", counted)
    for _ in range(3):
        calls.labels(verb="prepare", code="XA_OK").inc()
        calls.labels("commit", "XA_OK").inc()
        spans.labels(verb="prepare").observe(0.5)
    calls.labels(code="XA_OK", verb="prepare").inc()  # the same series, named in another order
    assert len(lookups) == 4  # one per distinct way of naming a label set, not one per call
    assert registry.get_sample_value("xatm_test_calls_total", {"verb": "prepare", "code": "XA_OK"}) == 4
    assert registry.get_sample_value("xatm_test_calls_total", {"verb": "commit", "code": "XA_OK"}) == 3
    assert registry.get_sample_value("xatm_test_seconds_count", {"verb": "prepare"}) == 3


def test_services_are_wrapped_once_and_still_checked_on_every_call(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrapped: list[str] = []
    real = CallerInterceptor.intercept_service

    async def counting(self: CallerInterceptor, continuation: Any, details: Any) -> Any:
        wrapped.append(details.method)
        return await real(self, continuation, details)

    monkeypatch.setattr(CallerInterceptor, "intercept_service", counting)
    settings = Settings(
        listen=f"127.0.0.1:{free_port()}", http_listen=f"127.0.0.1:{free_port()}", data_dir=tmp_path / "data"
    )

    async def main() -> None:
        coordinator = Coordinator(settings, MemoryLog())
        await coordinator.start()
        try:
            at_start = len(wrapped)
            assert "/xatm.v1.Coordinator/GetStatus" in wrapped
            assert "/xatm.v1.Admin/ListTransactions" in wrapped
            async with grpc.aio.insecure_channel(settings.listen) as channel:
                stub = coordinator_pb2_grpc.CoordinatorStub(channel)
                admin = admin_pb2_grpc.AdminStub(channel)
                for _ in range(3):
                    with pytest.raises(grpc.aio.AioRpcError) as unknown:
                        await stub.GetStatus(coordinator_pb2.StatusRequest(gtrid=new_gtrid("n9")))
                    assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
                    # Admin calls need the caller the wrapper names (anonymous with auth off).
                    await admin.ListTransactions(admin_pb2.ListTransactionsRequest())
                raw = channel.unary_unary("/xatm.v1.Coordinator/GetStatus")
                with pytest.raises(grpc.aio.AioRpcError) as garbage:
                    await raw(b"\xff\xff\xff")
                assert garbage.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert len(wrapped) == at_start  # nothing wrapped per call
        finally:
            await coordinator.stop(0)

    asyncio.run(main())
