"""Reading a 10,000-branch transaction while it commits: GetStatus, the Admin service and REST
answer with every branch, and the figures (time and size of each answer) are printed, not asserted
as times. Run with ``-s`` to see them.

A real coordinator (``--max-branches 10000``) and five cheap in-memory participants; the
transaction's branches are spread over them, enlisted, then committed while a reader asks for the
transaction's status over and over.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from xatm.coordinator.tools.bench.runs import Participants
from xatm.coordinator.tools.procs import Proc, coordinator_proc
from xatm.participant.api.v1 import admin_pb2, admin_pb2_grpc, coordinator_pb2, coordinator_pb2_grpc
from xatm.participant.xa import CHANNEL_OPTIONS, TxOutcome, TxStatus, XaCode

BRANCHES = 10_000
PARTICIPANTS = 5


@dataclass
class _Reads:
    #: (seconds, bytes, status) of each GetStatus answered while the commit ran
    during: list[tuple[float, int, TxStatus]] = field(default_factory=list)


async def _enlist_all(stub: coordinator_pb2_grpc.CoordinatorStub, gtrid: str, endpoints: list[str]) -> None:
    for first in range(0, BRANCHES, 200):
        replies = await asyncio.gather(
            *(
                stub.Enlist(
                    coordinator_pb2.EnlistRequest(
                        gtrid=gtrid,
                        bqual=f"b{i}",
                        rm_id=f"bench-{i % len(endpoints)}",
                        endpoint=endpoints[i % len(endpoints)],
                    ),
                    timeout=30,
                )
                for i in range(first, first + 200)
            )
        )
        assert all(r.code == XaCode.XA_OK for r in replies)


async def _read_while(
    stub: coordinator_pb2_grpc.CoordinatorStub, gtrid: str, commit: asyncio.Future[Any], reads: _Reads
) -> None:
    while not commit.done():
        started = time.perf_counter()
        info = await stub.GetStatus(coordinator_pb2.StatusRequest(gtrid=gtrid), timeout=120)
        reads.during.append((time.perf_counter() - started, info.ByteSize(), TxStatus(info.status)))
        assert len(info.branches) == BRANCHES
        await asyncio.sleep(0.05)


async def _scenario(coordinator: Proc, endpoints: list[str]) -> tuple[int, _Reads, dict[str, float]]:
    reads = _Reads()
    figures: dict[str, float] = {}
    async with grpc.aio.insecure_channel(coordinator.address, options=CHANNEL_OPTIONS) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        gtrid = (await stub.Begin(coordinator_pb2.BeginRequest(timeout_ms=600_000), timeout=30)).gtrid
        await _enlist_all(stub, gtrid, endpoints)
        started = time.perf_counter()
        request = coordinator_pb2.CompletionRequest(gtrid=gtrid)
        commit = asyncio.ensure_future(stub.Commit(request, timeout=300))
        await _read_while(stub, gtrid, commit, reads)
        outcome = int((await commit).outcome)
        figures["commit s"] = time.perf_counter() - started

        started = time.perf_counter()
        info = await stub.GetStatus(coordinator_pb2.StatusRequest(gtrid=gtrid), timeout=120)
        figures["GetStatus after s"] = time.perf_counter() - started
        assert len(info.branches) == BRANCHES
        started = time.perf_counter()
        admin = await admin_pb2_grpc.AdminStub(channel).GetTransaction(
            admin_pb2.GetTransactionRequest(gtrid=gtrid), timeout=120
        )
        figures["Admin GetTransaction s"] = time.perf_counter() - started
        assert len(admin.branches) == BRANCHES
    started = time.perf_counter()
    url = f"http://{coordinator.http}/admin/v1/xa-transaction/{gtrid}"
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(url, timeout=120).read())
    figures["REST s"] = time.perf_counter() - started
    figures["REST bytes"] = len(body)
    return outcome, reads, figures


def test_status_of_a_10000_branch_transaction_while_it_commits(tmp_path: Path) -> None:
    participants = Participants.create(PARTICIPANTS, tmp_path).procs
    coordinator = coordinator_proc(
        tmp_path / "data",
        tmp_path,
        env={"XATM_FAILPOINTS": ""},
        extra=["--max-branches", str(BRANCHES), "--commit-wait", "120"],
    )
    try:
        for proc in participants:
            proc.start()
        coordinator.start()
        outcome, reads, figures = asyncio.run(_scenario(coordinator, [p.address for p in participants]))
    finally:
        coordinator.stop()
        for proc in participants:
            proc.stop()

    assert outcome == TxOutcome.TX_OK, (TxOutcome(outcome).name, coordinator.tail())
    assert reads.during, "the commit ended before a single status was read"
    seconds = sorted(s for s, _, _ in reads.during)
    statuses = sorted({str(status) for _, _, status in reads.during})
    print(
        f"\n10,000-branch transaction: commit {figures['commit s']:.2f} s; "
        f"{len(seconds)} GetStatus during it (statuses {', '.join(statuses)}): "
        f"median {seconds[len(seconds) // 2] * 1000:.0f} ms, max {seconds[-1] * 1000:.0f} ms, "
        f"{max(b for _, b, _ in reads.during) / 1024:.0f} KiB; "
        f"after it GetStatus {figures['GetStatus after s'] * 1000:.0f} ms, "
        f"Admin GetTransaction {figures['Admin GetTransaction s'] * 1000:.0f} ms, "
        f"REST {figures['REST s'] * 1000:.0f} ms ({figures['REST bytes'] / 1024:.0f} KiB)"
    )
