"""``xatm bench --postgresql``: the bank transfer through xatm beside the same transfer done directly.

A throwaway PostgreSQL cluster (``pgcluster``) holds two databases, ``bank_a`` and ``bank_b``.

- **Through xatm**: a coordinator and two bank account services (the example of
  ``tools/bank``, each over one database with the PostgreSQL resource manager) as processes; the
  initiator's ``Bank.transfer`` debits ``a<i>`` in one bank and credits ``b<i>`` in the other in
  one global transaction.
- **Directly**: one client moves the same amount between the same rows itself, with
  PostgreSQL's own two-phase commit on both databases (psycopg's ``tpc_begin``/``tpc_prepare``/
  ``tpc_commit``: UPDATE, PREPARE TRANSACTION, COMMIT PREPARED).

Both run ``PG_CONCURRENCY`` blocking transfers at once (threads), each on its own pair of
accounts so no transfer waits for another's row lock; rounds alternate the two. Each window also
reads the CPU time of every process taking part (``/proc``): the bench process (the initiator, or
the direct client), the coordinator, each bank and the PostgreSQL cluster (its postmaster and
backends), reported in ms per transfer -- a figure other load on the machine moves far less than
transfers per second.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

from xatm.coordinator.tools.bench.load import Failed, Latencies, drive
from xatm.coordinator.tools.bench.measure import cpu_seconds
from xatm.coordinator.tools.bench.runs import pid
from xatm.coordinator.tools.procs import Proc, coordinator_proc, free_port

__all__ = ["PG_CONCURRENCY", "compare_postgresql"]

#: Transfers in flight; each bank's resource manager pools as many connections for them.
PG_CONCURRENCY = 8
#: Enough for every transfer ever made; amounts of 1 never run an account dry.
OPENING_BALANCE = 1_000_000_000


def _bank(name: str, store: str, coordinator: str, accounts: list[str], log_dir: Path) -> Proc:
    address = f"127.0.0.1:{free_port()}"
    argv = ["-m", "xatm.coordinator.tools.bank.account_service", "--name", name, "--listen", address]
    # As many connections as transfers in flight, as the direct client has.
    argv += ["--store", store, "--coordinator", coordinator, "--pool-size", str(len(accounts))]
    for account in accounts:
        argv += ["--seed", f"{account}={OPENING_BALANCE}"]
    return Proc(name, argv, address, log_dir / f"{name}.log", {"XATM_FAILPOINTS": ""})


class _Pool:
    """One exclusive slot (an account pair and its clients) per transfer in flight."""

    def __init__(self, slots: list[Any]) -> None:
        self._free: asyncio.Queue[Any] = asyncio.Queue()
        for slot in slots:
            self._free.put_nowait(slot)

    @contextlib.asynccontextmanager
    async def take(self) -> Any:
        slot = await self._free.get()
        try:
            yield slot
        finally:
            self._free.put_nowait(slot)


def _blocking(
    executor: ThreadPoolExecutor, pool: _Pool, work: Callable[[Any], None]
) -> Callable[[], Awaitable[float]]:
    """An operation for ``load.drive``: ``work(slot)`` in a thread; its latency in seconds."""
    loop = asyncio.get_running_loop()

    async def one() -> float:
        async with pool.take() as slot:
            started = time.perf_counter()
            await loop.run_in_executor(executor, work, slot)
            return time.perf_counter() - started

    return one


def _through_xatm(slot: tuple[Any, int]) -> None:
    bank, i = slot
    result = bank.transfer(f"a{i}", f"b{i}", 1, timeout=30)
    if not result.committed:
        raise Failed(f"transfer {result.gtrid} {result.outcome}: {result.detail}")


def _direct(slot: tuple[Any, Any, int]) -> None:
    import psycopg

    source, target, i = slot
    gtrid = uuid.uuid4().hex
    xids = [conn.xid(0, gtrid, bqual) for conn, bqual in ((source, "a"), (target, "b"))]
    try:
        for conn, xid, (account, amount) in zip(
            (source, target), xids, ((f"a{i}", -1), (f"b{i}", 1)), strict=True
        ):
            conn.tpc_begin(xid)
            conn.execute("UPDATE accounts SET balance = balance + %s WHERE name = %s", (amount, account))
        source.tpc_prepare()
        target.tpc_prepare()
        source.tpc_commit()
        target.tpc_commit()
    except psycopg.Error as err:
        raise Failed(f"direct transfer: {err}") from None


def _cluster_pids(data_dir: Path) -> list[int]:
    """The postmaster of the cluster at ``data_dir`` and its children (backends, writers)."""
    postmaster = int((data_dir / "postmaster.pid").read_text().split()[0])
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                if int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == postmaster:
                    pids.append(int(entry.name))
    return pids


def _cpu(pids: dict[str, int], data_dir: Path) -> dict[str, float]:
    """CPU seconds so far of each named process and of the whole PostgreSQL cluster."""
    used = {name: cpu_seconds(p) for name, p in pids.items()}
    cluster = 0.0
    for p in _cluster_pids(data_dir):
        with contextlib.suppress(OSError):  # a backend that has just exited
            cluster += cpu_seconds(p)
    used["postgresql"] = cluster
    return used


@contextlib.contextmanager
def _cluster(concurrency: int) -> Iterator[Any]:
    from xatm.coordinator.tools.pgcluster import PgCluster

    # Prepared transactions: the direct client's plus the resource managers' in flight.
    with PgCluster(
        {"max_connections": 4 * concurrency + 40}, max_prepared_transactions=4 * concurrency
    ) as cluster:
        yield cluster


async def compare_postgresql(root: Path, *, rounds: int, warmup: float, seconds: float) -> dict[str, Any]:
    """Measure both ways ``rounds`` times each, alternating; the report section ``postgresql``.

    Raises ``RuntimeError`` (``PgClusterError`` included) when PostgreSQL or a process cannot start.
    """
    import psycopg

    from xatm.coordinator.tools.bank.transfer import Bank
    from xatm.coordinator.tools.pgcluster import pg_url

    concurrency = PG_CONCURRENCY
    run_dir = root / "postgresql"
    run_dir.mkdir()
    runs: list[dict[str, Any]] = []
    with _cluster(concurrency) as cluster, ThreadPoolExecutor(concurrency) as executor:
        for db in ("bank_a", "bank_b"):
            cluster.create_database(db)
        coordinator = coordinator_proc(run_dir / "data", run_dir, env={"XATM_FAILPOINTS": ""})
        banks = [
            _bank(
                name,
                pg_url(cluster, db),
                coordinator.address,
                [f"{prefix}{i}" for i in range(concurrency)],
                run_dir,
            )
            for name, db, prefix in (("bank-a", "bank_a", "a"), ("bank-b", "bank_b", "b"))
        ]
        clients: list[Bank] = []
        direct: list[psycopg.Connection[Any]] = []
        try:
            for proc in (coordinator, *banks):
                await asyncio.to_thread(proc.start)
            clients = [
                Bank(coordinator.address, banks[0].address, banks[1].address) for _ in range(concurrency)
            ]
            direct = [
                psycopg.connect(cluster.dsn(db)) for _ in range(concurrency) for db in ("bank_a", "bank_b")
            ]
            ways: dict[str, Callable[[], Awaitable[float]]] = {
                "xatm": _blocking(executor, _Pool([(b, i) for i, b in enumerate(clients)]), _through_xatm),
                "direct": _blocking(
                    executor,
                    _Pool([(direct[2 * i], direct[2 * i + 1], i) for i in range(concurrency)]),
                    _direct,
                ),
            }
            pids = {"initiator": os.getpid(), **{proc.name: pid(proc) for proc in (coordinator, *banks)}}
            for round_no in range(1, rounds + 1):
                order = list(ways) if round_no % 2 else list(reversed(ways))
                for way in order:
                    measured = await drive(
                        ways[way],
                        concurrency=concurrency,
                        warmup=warmup,
                        seconds=seconds,
                        snapshot=lambda: _cpu(pids, cluster.data_dir),
                    )
                    done = Latencies.of(measured.window)
                    spent = {name: measured.after[name] - measured.before[name] for name in measured.after}
                    cpu_ms = {name: round(s * 1000 / max(done.count, 1), 3) for name, s in spent.items()}
                    runs.append({"way": way, "round": round_no, "failed": measured.window.failed,
                                 "first_error": measured.window.first_error, "cpu_ms": cpu_ms,
                                 **asdict(done)})  # fmt: skip
        finally:
            for client in clients:
                client.close()
            for conn in direct:
                conn.close()
            for proc in (*banks, coordinator):
                await asyncio.to_thread(proc.stop)

    def side(way: str) -> dict[str, Any]:
        mine = [r for r in runs if r["way"] == way]
        summary = {
            k: statistics.median(r[k] for r in mine) for k in ("per_second", "p50_ms", "p99_ms", "max_ms")
        }
        return {
            "tps": summary["per_second"],
            "p50_ms": summary["p50_ms"],
            "p99_ms": summary["p99_ms"],
            "max_ms": summary["max_ms"],
            "tps_each_round": [r["per_second"] for r in mine],
            "failed": sum(r["failed"] for r in mine),
            "first_error": next((r["first_error"] for r in mine if r["first_error"]), ""),
            # Medians over the rounds; the coordinator and banks idle through the direct runs.
            "cpu_ms_per_transfer": {
                name: statistics.median(r["cpu_ms"][name] for r in mine) for name in mine[0]["cpu_ms"]
            },
        }

    through, baseline = side("xatm"), side("direct")
    pairs = zip(through["tps_each_round"], baseline["tps_each_round"], strict=True)
    return {
        "concurrency": concurrency,
        "xatm": through,
        "direct": baseline,
        "ratio": round(through["tps"] / baseline["tps"], 3) if baseline["tps"] else 0.0,
        "ratio_each_round": [round(x / d, 3) if d else 0.0 for x, d in pairs],
    }
