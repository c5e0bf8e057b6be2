"""Coordinator runs: one coordinator (or several replicas) under two-phase load, measured once.

Initiators are ``concurrency`` asyncio workers in the bench process, each looping one
transaction straight through the Coordinator API over grpc.aio. By default the lean protocol: the
gtrid made by the initiator (the coordinator's node id learnt from one Begin before the window)
and one ``Commit`` carrying one branch per participant; the ``eager`` configuration keeps the
older three steps (Begin, one Enlist per branch, Commit) for comparison. Participants are bench
participant processes (the real Participant service over an in-memory RM). Counters come from
the coordinator's ``/metrics`` (commits, fsyncs, log records), from the wire (``wire``: RPCs the
harness made, messages the participants received) and CPU times from ``/proc``, all read at both
ends of the measured window.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from xatm.coordinator.tools.bench import measure
from xatm.coordinator.tools.bench.load import CALL_TIMEOUT, Failed, Latencies, drive
from xatm.coordinator.tools.bench.measure import Samples, cpu_seconds, delta, per
from xatm.coordinator.tools.bench.wire import CallCounter
from xatm.coordinator.tools.procs import Proc, coordinator_proc, free_port
from xatm.participant.api.v1 import coordinator_pb2, coordinator_pb2_grpc, xa_pb2
from xatm.participant.xa import CHANNEL_OPTIONS, TxOutcome, XaCode, new_gtrid

__all__ = [
    "CONFIGS",
    "SCENARIOS",
    "SLOW_DISK",
    "Config",
    "Node",
    "Participants",
    "Run",
    "lean_two_phase",
    "learn_node",
    "measure_run",
    "open_transaction",
    "pid",
    "run_config",
    "two_phase",
]

#: The slow disk of the slow-disk scenario: every WAL fsync waits 5 ms more.
SLOW_DISK = "wal.before_fsync=sleep(5)"


@dataclass(frozen=True)
class Config:
    """One way of running the coordinator; a scenario compares two of them."""

    name: str
    description: str
    one_phase: bool = False
    slow_disk: bool = False
    #: Begin and one Enlist per branch before the Commit, instead of the lean protocol's Commit alone.
    eager: bool = False


CONFIGS = {
    c.name: c
    for c in (
        Config("normal", "two-phase commit, normal disk, lean protocol (one Commit per transaction)"),
        Config("eager", "two-phase commit, normal disk, eager protocol (Begin, Enlist, Commit)", eager=True),
        Config("slow-disk", f"two-phase commit, XATM_FAILPOINTS={SLOW_DISK}", slow_disk=True),
        Config("one-phase", "one branch: one-phase commit, no prepare, no forced write", one_phase=True),
    )
}

#: scenario -> (baseline config, variant config, what the comparison shows)
SCENARIOS: dict[str, tuple[str, str, str]] = {
    "eager": (
        "normal",
        "eager",
        "the lean protocol saves Begin and an Enlist per branch: RPCs, log records, CPU per transaction",
    ),
    "slow-disk": (
        "normal",
        "slow-disk",
        "group commit: one fsync serves all decisions waiting, so a slow fsync costs latency, not throughput",
    ),
    "one-phase": ("normal", "one-phase", "one branch skips prepare and the forced decision write"),
}


@dataclass
class Run:
    """One configuration measured once over the window after warm-up; counts are per commit."""

    config: str
    round: int
    concurrency: int
    branches: int
    #: "file" (the embedded WAL) or "etcd", and how many coordinator replicas shared the load.
    store: str
    replicas: int
    seconds: float
    committed: int
    failed: int
    tps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    #: fsyncs of the file WAL, or etcd transactions of the etcd log.
    durable_writes_per_commit: float
    decision_writes_per_commit: float
    #: Records the file WAL appended, in all and by record type (the etcd log counts none).
    log_records_per_commit: float
    log_records_by_type: dict[str, float]
    #: RPCs the coordinator served (made by the harness), by method.
    served_per_commit: dict[str, float]
    #: Messages the coordinator sent to the participants (received there), by method.
    sent_per_commit: dict[str, float]
    #: Served RPCs plus messages sent.
    rpcs_per_commit: float
    #: CPU the coordinators burnt per committed transaction: much steadier than tx/s on a shared
    #: machine, since other work delays the coordinator but does not add to its CPU time.
    coordinator_cpu_ms_per_commit: float
    #: Cores kept busy by the coordinators, and by the harness (initiators plus participants).
    coordinator_cores: float
    harness_cores: float
    first_error: str = ""


def pid(proc: Proc) -> int:
    """The process id of a started ``Proc``."""
    assert proc.popen is not None, f"{proc.name} was never started"
    return proc.popen.pid


@dataclass
class Participants:
    """Bench participant processes (started once, serving every run), with their ``/metrics``."""

    procs: list[Proc] = field(default_factory=list)

    @classmethod
    def create(cls, count: int, log_dir: Path) -> Participants:
        procs = []
        for index in range(count):
            address, metrics = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
            argv = ["-m", "xatm.coordinator.tools.bench.participant", "--listen", address]
            argv += ["--rm-id", f"bench-{index}", "--metrics-listen", metrics]
            log = log_dir / f"participant-{index}.log"
            procs.append(Proc(f"participant-{index}", argv, address, log, {"XATM_FAILPOINTS": ""}, metrics))
        return cls(procs)

    def start(self) -> None:
        for proc in self.procs:
            proc.start()

    def stop(self) -> None:
        for proc in self.procs:
            proc.stop()

    def endpoints(self, count: int) -> list[str]:
        return [p.address for p in self.procs[:count]]

    def received(self) -> dict[str, float]:
        """Request messages all participants received so far, by method."""
        total: dict[str, float] = {}
        for proc in self.procs:
            for method, n in delta(
                {}, measure.scrape(proc.http), "xatm_bench_messages_received_total", "method"
            ).items():
                total[method] = total.get(method, 0.0) + n
        return total


async def open_transaction(
    stub: coordinator_pb2_grpc.CoordinatorStub, endpoints: Sequence[str], timeout_ms: int = 0
) -> str:
    """Begin a transaction and enlist one branch (``b<i>`` of RM ``bench-<i>``) per endpoint; its gtrid.

    ``timeout_ms`` 0 is the coordinator's default. Raises ``Failed`` for a refused enlist,
    ``grpc.aio.AioRpcError`` for a failed call.
    """
    begun = await stub.Begin(coordinator_pb2.BeginRequest(timeout_ms=timeout_ms), timeout=CALL_TIMEOUT)
    for i, endpoint in enumerate(endpoints):
        request = coordinator_pb2.EnlistRequest(
            gtrid=begun.gtrid, bqual=f"b{i}", rm_id=f"bench-{i}", endpoint=endpoint
        )
        reply = await stub.Enlist(request, timeout=CALL_TIMEOUT)
        if reply.code != XaCode.XA_OK:
            raise Failed(f"enlist answered {XaCode(reply.code).name} {reply.reason}")
    return str(begun.gtrid)


@dataclass(frozen=True)
class Node:
    """What an initiator needs to make gtrids for one coordinator: its node id and default timeout (ms)."""

    node_id: str
    timeout_ms: int


async def learn_node(stub: coordinator_pb2_grpc.CoordinatorStub) -> Node:
    """The coordinator's node id and default timeout, from one Begin (whose transaction is rolled back).

    Raises ``Failed`` when the coordinator names no node id (it makes every gtrid itself) or a call fails.
    """
    try:
        begun = await stub.Begin(coordinator_pb2.BeginRequest(), timeout=CALL_TIMEOUT)
        await stub.Rollback(coordinator_pb2.CompletionRequest(gtrid=begun.gtrid), timeout=CALL_TIMEOUT)
    except grpc.aio.AioRpcError as err:
        raise Failed(f"learning the node id: {err.code().name}: {err.details()}") from None
    if not begun.node_id:
        raise Failed("the coordinator's Begin reply names no node id: it cannot take initiator-made gtrids")
    return Node(begun.node_id, begun.timeout_ms)


def _branches(endpoints: Sequence[str]) -> list[xa_pb2.BranchRef]:
    """One branch (``b<i>`` of RM ``bench-<i>``) per endpoint, as participants report them."""
    return [xa_pb2.BranchRef(bqual=f"b{i}", rm_id=f"bench-{i}", endpoint=e) for i, e in enumerate(endpoints)]


async def _commit(
    stub: coordinator_pb2_grpc.CoordinatorStub, request: coordinator_pb2.CompletionRequest
) -> float:
    """The Commit's latency in seconds (prepare, forced decision, phase two); ``Failed`` unless TX_OK."""
    started = time.perf_counter()
    done = await stub.Commit(request, timeout=CALL_TIMEOUT)
    latency = time.perf_counter() - started
    if done.outcome != TxOutcome.TX_OK:
        raise Failed(f"commit answered {TxOutcome(done.outcome).name}")
    return latency


def two_phase(
    stub: coordinator_pb2_grpc.CoordinatorStub, endpoints: Sequence[str]
) -> Callable[[], Awaitable[float]]:
    """One eager transaction for ``load.drive``: Begin, one Enlist per endpoint, Commit.

    Returns the transaction's latency in seconds, from the Begin to the Commit's reply (what the
    lean protocol's single Commit is compared with); raises ``Failed`` for an RPC error, a refused
    enlist or an outcome other than TX_OK.
    """

    async def one() -> float:
        started = time.perf_counter()
        try:
            gtrid = await open_transaction(stub, endpoints)
            await _commit(stub, coordinator_pb2.CompletionRequest(gtrid=gtrid))
        except grpc.aio.AioRpcError as err:
            raise Failed(f"{err.code().name}: {err.details()}") from None
        return time.perf_counter() - started

    return one


def lean_two_phase(
    stub: coordinator_pb2_grpc.CoordinatorStub, endpoints: Sequence[str], node: Node
) -> Callable[[], Awaitable[float]]:
    """One lean transaction for ``load.drive``: a gtrid made here, one Commit carrying the branches.

    The coordinator hears of the transaction only with its Commit, as when participants report
    their branches in reply metadata; the bench participants take any branch they are asked to
    prepare. Returns and raises as ``two_phase``.
    """
    branches = _branches(endpoints)

    async def one() -> float:
        request = coordinator_pb2.CompletionRequest(
            gtrid=new_gtrid(node.node_id), timeout_ms=node.timeout_ms, branches=branches
        )
        try:
            return await _commit(stub, request)
        except grpc.aio.AioRpcError as err:
            raise Failed(f"{err.code().name}: {err.details()}") from None

    return one


def _sum(samples: Sequence[Samples]) -> Samples:
    total: Samples = {}
    for one in samples:
        for key, value in one.items():
            total[key] = total.get(key, 0.0) + value
    return total


def _grown(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """Counts by method over the window, methods not called in it left out."""
    return {k: v - before.get(k, 0.0) for k, v in after.items() if v > before.get(k, 0.0)}


@dataclass
class _Snapshot:
    metrics: Samples
    sent: dict[str, float]
    served: dict[str, float]
    coordinator_cpu: float
    harness_cpu: float


async def measure_run(
    coordinators: Sequence[Proc],
    participants: Participants,
    *,
    config: str,
    round_no: int,
    concurrency: int,
    branches: int,
    warmup: float,
    seconds: float,
    store: str = "file",
    eager: bool = False,
) -> Run:
    """Load the coordinators (each transaction on one of them, in turn) and measure one window.

    ``eager``: Begin, Enlist per branch and Commit; otherwise the lean protocol (Commit alone).
    Raises ``Failed`` when a coordinator cannot tell its node id for the lean protocol.
    """
    counter = CallCounter()
    harness = [os.getpid(), *map(pid, participants.procs)]

    def snapshot() -> _Snapshot:
        return _Snapshot(
            metrics=_sum([measure.scrape(c.http) for c in coordinators]),
            sent=participants.received(),
            served=dict(counter.counts),
            coordinator_cpu=sum(cpu_seconds(pid(c)) for c in coordinators),
            harness_cpu=sum(map(cpu_seconds, harness)),
        )

    endpoints = participants.endpoints(branches)
    channels = [
        grpc.aio.insecure_channel(c.address, options=CHANNEL_OPTIONS, interceptors=[counter])
        for c in coordinators
    ]
    try:
        stubs = [coordinator_pb2_grpc.CoordinatorStub(ch) for ch in channels]
        if eager:
            kinds = [two_phase(stub, endpoints) for stub in stubs]
        else:  # one Begin per coordinator, before the window's counters are first read
            kinds = [lean_two_phase(stub, endpoints, await learn_node(stub)) for stub in stubs]
        transactions = itertools.cycle(kinds)
        result = await drive(
            lambda: next(transactions)(),
            concurrency=concurrency,
            warmup=warmup,
            seconds=seconds,
            snapshot=snapshot,
        )
    finally:
        await asyncio.gather(*(ch.close() for ch in channels))
    before, after, window = result.before, result.after, result.window
    latencies = Latencies.of(window)
    commits = delta(before.metrics, after.metrics, "xatm_transactions_completed_total", "outcome").get(
        "committed", 0.0
    )

    def counted(name: str) -> float:
        return sum(delta(before.metrics, after.metrics, name).values())

    durable = counted("xatm_wal_fsync_duration_seconds_count") + counted(
        "xatm_etcd_write_duration_seconds_count"
    )
    records = delta(before.metrics, after.metrics, "xatm_wal_records_total", "type")
    # The lean protocol's one Begin, before the window, is not counted.
    served = _grown(before.served, after.served)
    sent = _grown(before.sent, after.sent)
    coordinator_cpu = after.coordinator_cpu - before.coordinator_cpu
    elapsed = window.seconds
    return Run(
        config=config,
        round=round_no,
        concurrency=concurrency,
        branches=branches,
        store=store,
        replicas=len(coordinators),
        seconds=round(elapsed, 3),
        committed=latencies.count,
        failed=window.failed,
        tps=latencies.per_second,
        p50_ms=latencies.p50_ms,
        p99_ms=latencies.p99_ms,
        max_ms=latencies.max_ms,
        durable_writes_per_commit=round(durable / commits, 4) if commits else 0.0,
        decision_writes_per_commit=per(records, commits, 4).get("decision", 0.0),
        log_records_per_commit=round(sum(records.values()) / commits, 3) if commits else 0.0,
        log_records_by_type=per(records, commits),
        served_per_commit=per(served, commits),
        sent_per_commit=per(sent, commits),
        rpcs_per_commit=round((sum(served.values()) + sum(sent.values())) / commits, 3) if commits else 0.0,
        coordinator_cpu_ms_per_commit=round(coordinator_cpu * 1000 / max(latencies.count, 1), 3),
        coordinator_cores=round(coordinator_cpu / elapsed, 2),
        harness_cores=round((after.harness_cpu - before.harness_cpu) / elapsed, 2),
        first_error=window.first_error,
    )


async def run_config(
    root: Path,
    config: Config,
    round_no: int,
    participants: Participants,
    *,
    concurrency: int,
    branches: int,
    warmup: float,
    seconds: float,
    label: str = "",
) -> Run:
    """A fresh coordinator (own data dir and log) for one measurement, stopped afterwards.

    Raises ``RuntimeError`` (with the coordinator's log) when it dies during the run.
    """
    name = label or config.name
    run_dir = root / f"round{round_no}-{name}"
    run_dir.mkdir(parents=True)
    # Explicitly empty for the others, so a failpoint armed in the caller's shell stays out.
    env = {"XATM_FAILPOINTS": SLOW_DISK if config.slow_disk else ""}
    coordinator = coordinator_proc(run_dir / "data", run_dir, env=env)
    await asyncio.to_thread(coordinator.start)
    try:
        return await measure_run(
            [coordinator],
            participants,
            config=name,
            round_no=round_no,
            concurrency=concurrency,
            branches=1 if config.one_phase else branches,
            warmup=warmup,
            seconds=seconds,
            eager=config.eager,
        )
    finally:
        died = not coordinator.alive
        await asyncio.to_thread(coordinator.stop)
        if died:  # whatever else went wrong, this is the error to report
            raise RuntimeError(f"the coordinator died during the {name} run; log:\n{coordinator.tail()}")
