"""The gRPC ceiling: a process serving one no-op unary method, as the coordinator serves its API.

Same layout as the coordinator (its own process, a ``grpc.aio`` server with the same options,
loopback, one channel from the harness), so calls per second here are the most any unary API
served this way can reach on this machine, and its CPU per call what gRPC alone costs.

    python -m xatm.coordinator.tools.bench.echo --listen 127.0.0.1:50051
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from xatm.coordinator.tools.bench.load import CALL_TIMEOUT, Failed, Latencies, drive
from xatm.coordinator.tools.bench.measure import cpu_seconds
from xatm.coordinator.tools.procs import Proc, free_port
from xatm.participant.runtime.address import argument
from xatm.participant.runtime.serving import stop_signals
from xatm.participant.xa import CHANNEL_OPTIONS, SERVER_OPTIONS

__all__ = ["METHOD", "EchoRun", "echo_call", "echo_proc", "main", "measure_echo"]

#: The one method; requests and replies are raw bytes (no protobuf work on either side).
METHOD = "/xatm.bench.Echo/Call"
#: About the size of a Commit request (a gtrid), so transport work matches a small API call.
PAYLOAD = b"x" * 48


async def _echo(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
    return request


async def _serve(listen: str) -> int:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    handler: grpc.RpcMethodHandler = grpc.unary_unary_rpc_method_handler(_echo)
    service, method = METHOD.strip("/").split("/")
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, {method: handler}),))
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    if not server.add_insecure_port(listen):
        print(f"echo: cannot listen on {listen}", file=sys.stderr)
        return 1
    await server.start()
    async with stop_signals() as stop:
        await stop.wait()
    await server.stop(1)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="echo", description="Serve a no-op unary gRPC method.")
    parser.add_argument("--listen", required=True, type=argument(), metavar="HOST:PORT")
    args = parser.parse_args(argv)
    return asyncio.run(_serve(str(args.listen)))


def echo_proc(log_dir: Path) -> Proc:
    """The echo server as a process of the harness (not started)."""
    address = f"127.0.0.1:{free_port()}"
    argv = ["-m", "xatm.coordinator.tools.bench.echo", "--listen", address]
    return Proc("echo", argv, address, log_dir / "echo.log")


def echo_call(channel: grpc.aio.Channel) -> Callable[[], Awaitable[float]]:
    """One echo round trip for ``load.drive``: returns its latency in seconds, raises ``Failed``."""
    call: grpc.aio.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(METHOD)
    loop = asyncio.get_running_loop()

    async def one() -> float:
        started = loop.time()
        try:
            await call(PAYLOAD, timeout=CALL_TIMEOUT)
        except grpc.aio.AioRpcError as err:
            raise Failed(f"{err.code().name}: {err.details()}") from None
        return loop.time() - started

    return one


@dataclass
class EchoRun:
    """The echo server measured once: the gRPC ceiling at one concurrency."""

    round: int
    concurrency: int
    seconds: float
    calls: int
    failed: int
    #: Echo round trips per second: the ceiling any unary API served this way can reach here.
    baseline_rps: float
    p50_ms: float
    p99_ms: float
    max_ms: float
    #: CPU the echo server burnt per call: what gRPC alone costs a server for one RPC.
    echo_cpu_ms_per_call: float
    echo_cores: float
    first_error: str = ""


async def measure_echo(
    proc: Proc, *, round_no: int, concurrency: int, warmup: float, seconds: float
) -> EchoRun:
    """Drive a started echo server with ``concurrency`` workers, as the coordinator runs are driven."""
    assert proc.popen is not None, "the echo server was never started"
    server = proc.popen.pid
    async with grpc.aio.insecure_channel(proc.address, options=CHANNEL_OPTIONS) as channel:
        result = await drive(
            echo_call(channel),
            concurrency=concurrency,
            warmup=warmup,
            seconds=seconds,
            snapshot=lambda: cpu_seconds(server),
        )
    window = result.window
    calls = Latencies.of(window)
    cpu = result.after - result.before
    return EchoRun(
        round=round_no,
        concurrency=concurrency,
        seconds=round(window.seconds, 3),
        calls=calls.count,
        failed=window.failed,
        baseline_rps=calls.per_second,
        p50_ms=calls.p50_ms,
        p99_ms=calls.p99_ms,
        max_ms=calls.max_ms,
        echo_cpu_ms_per_call=round(cpu * 1000 / max(calls.count, 1), 4),
        echo_cores=round(cpu / window.seconds, 2),
        first_error=window.first_error,
    )


if __name__ == "__main__":
    sys.exit(main())
