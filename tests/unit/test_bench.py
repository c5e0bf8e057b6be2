"""``xatm bench``: usage errors (exit 2 before anything starts), presets, the wire counter, and
what the lean protocol's initiator sends.

Real runs, which start a coordinator and participants, are in tests/system/test_bench.py.
"""

from __future__ import annotations

import argparse
import asyncio
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY

from tests.bench_support import bench
from xatm.coordinator.tools.bench.cli import QUICK, _plan, add_parser
from xatm.coordinator.tools.bench.load import Failed
from xatm.coordinator.tools.bench.runs import CONFIGS, SCENARIOS, Node, lean_two_phase, learn_node
from xatm.coordinator.tools.bench.suite import Plan
from xatm.coordinator.tools.bench.wire import MessageCounter
from xatm.participant.api.v1 import coordinator_pb2, xa_pb2
from xatm.participant.xa import node_of


def test_usage_errors_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert bench("--scenarios", "one-phase", "--check-ratio", "0.8")[0] == 2
    (tmp_path / "leftover").write_text("")
    assert bench("--data-dir", str(tmp_path))[0] == 2
    with pytest.raises(SystemExit) as exit_info:
        bench("--branches", "1")
    assert exit_info.value.code == 2
    assert "must be between 2 and 16" in capsys.readouterr().err


def _parse(*argv: str) -> Plan:
    parser = argparse.ArgumentParser(prog="xatm")
    add_parser(parser.add_subparsers())
    return _plan(parser.parse_args(["bench", *argv]))


def test_quick_fills_the_defaults_an_explicit_option_wins() -> None:
    plan = _parse("--quick", "--seconds", "2")
    assert plan.seconds == 2 and plan.rounds == QUICK["rounds"] and plan.warmup == QUICK["warmup"]
    assert plan.scaling == QUICK["scaling"]
    assert plan.open_transactions == QUICK["open_transactions"]
    full = _parse()
    assert {c for c, _ in full.scaling} == {1, 8, 32, 128} and {b for _, b in full.scaling} == {2, 4, 8}
    assert len(full.scaling) == 12
    assert (full.open_transactions, full.replay_records) == (10_000, 1_000_000)
    assert full.sections == ("core", "scaling", "memory", "replay")
    assert _parse("--postgresql", "--etcd").sections[-2:] == ("postgresql", "etcd")
    assert _parse("--only", "memory", "--etcd").sections == ("memory", "etcd")


def _received(method: str) -> float:
    return REGISTRY.get_sample_value("xatm_bench_messages_received_total", {"method": method}) or 0.0


def test_message_counter_counts_every_message_of_a_stream_and_each_unary_call() -> None:
    """What the coordinator sends a participant is counted message by message, batched or not."""
    handlers = {
        "Unary": grpc.unary_unary_rpc_method_handler(lambda request, context: request),
        "Batch": grpc.stream_unary_rpc_method_handler(lambda requests, context: b"".join(requests)),
        "Stream": grpc.stream_stream_rpc_method_handler(lambda requests, context: (r for r in requests)),
    }
    server = grpc.server(ThreadPoolExecutor(max_workers=4), interceptors=[MessageCounter()])
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler("t.S", handlers),))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    before = {m: _received(m) for m in handlers}
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            channel.unary_unary("/t.S/Unary")(b"a", timeout=10)
            channel.unary_unary("/t.S/Unary")(b"b", timeout=10)
            assert channel.stream_unary("/t.S/Batch")(iter([b"1", b"2", b"3"]), timeout=10) == b"123"
            assert list(channel.stream_stream("/t.S/Stream")(iter([b"x"] * 4), timeout=10)) == [b"x"] * 4
    finally:
        server.stop(None)
    assert {m: _received(m) - before[m] for m in handlers} == {"Unary": 2, "Batch": 3, "Stream": 4}


class _Coordinator:
    """A Coordinator stub that records what the bench's initiator sends and answers like a coordinator."""

    def __init__(self, node_id: str = "n7") -> None:
        self.node_id = node_id
        self.calls: list[tuple[str, Any]] = []

    async def Begin(self, request: coordinator_pb2.BeginRequest, timeout: float) -> Any:
        self.calls.append(("Begin", request))
        gtrid = f"{self.node_id}.0001" if self.node_id else "0001"
        return coordinator_pb2.BeginResponse(gtrid=gtrid, node_id=self.node_id, timeout_ms=60_000)

    async def Rollback(self, request: coordinator_pb2.CompletionRequest, timeout: float) -> Any:
        self.calls.append(("Rollback", request))
        return coordinator_pb2.CompletionResponse(gtrid=request.gtrid, outcome=xa_pb2.TX_ROLLBACK)

    async def Commit(self, request: coordinator_pb2.CompletionRequest, timeout: float) -> Any:
        self.calls.append(("Commit", request))
        return coordinator_pb2.CompletionResponse(gtrid=request.gtrid, outcome=xa_pb2.TX_OK)


def test_a_lean_transaction_is_one_commit_carrying_its_branches() -> None:
    stub = _Coordinator()

    async def two() -> Node:
        node = await learn_node(stub)  # type: ignore[arg-type]
        one = lean_two_phase(stub, ["127.0.0.1:1", "127.0.0.1:2"], node)  # type: ignore[arg-type]
        await one()
        await one()
        return node

    node = asyncio.run(two())
    assert node == Node("n7", 60_000)
    # The Begin that told the node id is rolled back; then one Commit per transaction, nothing else.
    assert [name for name, _ in stub.calls] == ["Begin", "Rollback", "Commit", "Commit"]
    first, second = (request for name, request in stub.calls if name == "Commit")
    assert node_of(first.gtrid) == "n7" and first.gtrid != second.gtrid
    assert first.timeout_ms == 60_000
    assert [(b.bqual, b.rm_id, b.endpoint) for b in first.branches] == [
        ("b0", "bench-0", "127.0.0.1:1"),
        ("b1", "bench-1", "127.0.0.1:2"),
    ]


def test_a_coordinator_without_a_node_id_is_refused_for_the_lean_protocol() -> None:
    with pytest.raises(Failed, match="names no node id"):
        asyncio.run(learn_node(_Coordinator(node_id="")))  # type: ignore[arg-type]


def test_the_eager_configuration_is_compared_with_the_lean_one_by_default() -> None:
    assert CONFIGS["eager"].eager and not CONFIGS["normal"].eager
    assert SCENARIOS["eager"][:2] == ("normal", "eager")
    assert _parse().scenarios[0] == "eager"
