"""A cheap participant process for ``xatm bench``: the real Participant service, no storage.

The benchmark measures the coordinator, so its participants must cost as little as possible:
the genuine gRPC service (``ParticipantStub`` over a threaded server, as a microservice links
it) in front of ``MemoryRM``, which keeps prepared branches in a set and never touches a disk.
Its verbs never wait, so each stream's branches are served on the stream's own thread, with no
hand-off to a worker per branch.
Every request message it receives is counted (``wire.MessageCounter``) and served on
``/metrics`` at ``--metrics-listen``, so the benchmark sees what the coordinator sent.

    python -m xatm.coordinator.tools.bench.participant --listen 127.0.0.1:50051 --rm-id bench-0 \
        --metrics-listen 127.0.0.1:50052
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2_grpc
from prometheus_client import start_http_server

from xatm.coordinator.tools.bench.wire import MessageCounter
from xatm.participant.runtime.address import argument
from xatm.participant.runtime.serving import until_signalled
from xatm.participant.stores.memory import MemoryRM
from xatm.participant.stub import ParticipantStub
from xatm.participant.xa import SERVER_OPTIONS

__all__ = ["main"]

#: Server threads: each call takes microseconds, so a few keep up with any load the benchmark
#: makes (more calls wait in gRPC's queue); more would only add thread switching.
WORKERS = 16


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench.participant", description="Serve the Participant service over an in-memory RM."
    )
    # Also the address the coordinator calls back, so no port 0.
    parser.add_argument("--listen", required=True, type=argument(), metavar="HOST:PORT")
    parser.add_argument("--rm-id", required=True)
    parser.add_argument("--metrics-listen", type=argument(), metavar="HOST:PORT", help="serve /metrics here")
    args = parser.parse_args(argv)
    listen = str(args.listen)

    server = grpc.server(
        ThreadPoolExecutor(max_workers=WORKERS), interceptors=[MessageCounter()], options=SERVER_OPTIONS
    )
    ParticipantStub(MemoryRM(args.rm_id), advertise=listen).add_to_server(server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    if not server.add_insecure_port(listen):
        print(f"bench.participant: cannot listen on {listen}", file=sys.stderr)
        return 1
    if args.metrics_listen is not None:
        start_http_server(args.metrics_listen.port, str(args.metrics_listen.host))
    until_signalled(server.start)
    server.stop(1).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
