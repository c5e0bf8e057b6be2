"""A cheap participant process for ``xatm bench``: the real Participant service, no storage.

The benchmark measures the coordinator, so its participants must cost as little as possible:
the genuine gRPC service (``ParticipantStub`` over a threaded server, as a microservice links
it) in front of ``MemoryRM``, which keeps prepared branches in a set and never touches a disk.

    python -m coordinator.bench_participant --listen 127.0.0.1:50051 --rm-id bench-0
"""

from __future__ import annotations

import argparse
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc
from grpc_health.v1 import health, health_pb2_grpc

from participant.address import argument
from participant.rm import ResourceManager
from participant.serving import until_signalled
from participant.stub import ParticipantStub
from participant.xa import XaCode, XaError, Xid

__all__ = ["MemoryRM", "main"]

#: Server threads: each call takes microseconds, so a few keep up with any load the benchmark
#: makes (more calls wait in gRPC's queue); more would only add thread switching.
WORKERS = 16


class MemoryRM(ResourceManager):
    """Votes yes to every prepare and remembers prepared branches only until phase two.

    The benchmark enlists branches straight through the Coordinator API and sends no business
    calls, so any xid the coordinator names counts as an active branch with work to commit.
    """

    def __init__(self, rm_id: str) -> None:
        self.rm_id = rm_id
        self._lock = threading.Lock()
        self._prepared: set[Xid] = set()

    def start(self, xid: Xid) -> None:
        """Nothing to open: branch state exists only once prepared."""

    def prepare(self, xid: Xid) -> XaCode:
        with self._lock:
            self._prepared.add(xid)
        return XaCode.XA_OK

    def commit(self, xid: Xid, one_phase: bool) -> None:
        if one_phase:
            return
        with self._lock:
            if xid not in self._prepared:
                raise XaError(XaCode.XAER_NOTA, f"{xid} is not prepared here")
            self._prepared.discard(xid)

    def rollback(self, xid: Xid) -> None:
        with self._lock:
            self._prepared.discard(xid)

    def recover(self) -> list[Xid]:
        with self._lock:
            return list(self._prepared)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bench_participant", description="Serve the Participant service over an in-memory RM."
    )
    # Also the address the coordinator calls back, so no port 0.
    parser.add_argument("--listen", required=True, type=argument(), metavar="HOST:PORT")
    parser.add_argument("--rm-id", required=True)
    args = parser.parse_args(argv)
    listen = str(args.listen)

    server = grpc.server(ThreadPoolExecutor(max_workers=WORKERS))
    ParticipantStub(MemoryRM(args.rm_id), advertise=listen).add_to_server(server)
    health_pb2_grpc.add_HealthServicer_to_server(health.HealthServicer(), server)
    if not server.add_insecure_port(listen):
        print(f"bench_participant: cannot listen on {listen}", file=sys.stderr)
        return 1
    until_signalled(server.start)
    server.stop(1).wait()
    return 0


if __name__ == "__main__":
    sys.exit(main())
