"""Starting, watching and killing the processes of a local xatm system (demo, tests, bench)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from xatm.participant.client.initiator import coordinator_channel

__all__ = ["Proc", "coordinator_proc", "free_port", "wait_healthy", "work_dir"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def work_dir(given: str | None, prefix: str) -> Path:
    """The directory a tool runs its processes in: ``given`` (created when missing; it must be an
    empty directory, so that nothing of an earlier run is mistaken for this one's), or a fresh
    temporary directory named ``prefix``... when None.

    Raises ValueError with a one-line message when ``given`` is a file, not empty, or cannot be
    created.
    """
    if given is None:
        return Path(tempfile.mkdtemp(prefix=prefix))
    path = Path(given)
    try:
        path.mkdir(parents=True, exist_ok=True)
        if any(path.iterdir()):
            raise ValueError(f"--data-dir {path} is not empty: give a new or empty directory")
    except FileExistsError:
        raise ValueError(f"--data-dir {path} is not a directory") from None
    except NotADirectoryError:
        raise ValueError(f"--data-dir {path}: a part of the path is a file") from None
    except PermissionError:
        raise ValueError(f"--data-dir {path}: permission denied") from None
    return path


def wait_healthy(
    address: str,
    timeout: float,
    proc: subprocess.Popen[bytes] | None = None,
    credentials: grpc.ChannelCredentials | None = None,
) -> None:
    """Block until the gRPC health service at ``address`` answers SERVING (over TLS with ``credentials``)."""
    deadline = time.monotonic() + timeout
    with coordinator_channel(address, credentials) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        while True:
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"process for {address} exited with code {proc.returncode}")
            try:
                # types-grpcio-health-checking declares HealthStub without its RPC attributes.
                reply = stub.Check(health_pb2.HealthCheckRequest(), timeout=0.5)  # type: ignore[attr-defined]
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address} did not become healthy within {timeout:.0f}s")
            time.sleep(0.05)


@dataclass
class Proc:
    """A child process with a gRPC address, restartable with the same command line."""

    name: str
    argv: list[str]
    address: str
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    #: The HTTP address (/metrics, /healthz), when the process has one.
    http: str = ""
    popen: subprocess.Popen[bytes] | None = None

    def start(self, *, extra_env: dict[str, str] | None = None, wait: float = 20.0) -> Proc:
        env = {**os.environ, **self.env}
        env.update(extra_env or {})
        log = self.log_path.open("ab")
        self.popen = subprocess.Popen(
            [sys.executable, *self.argv], env=env, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        if wait:
            try:
                wait_healthy(self.address, wait, self.popen)
            except (RuntimeError, TimeoutError) as err:
                raise RuntimeError(f"{self.name} failed to start: {err}; log:\n{self.tail()}") from None
        return self

    def kill(self) -> None:
        """SIGKILL: no cleanup, exactly like a crash."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.send_signal(signal.SIGKILL)
            self.popen.wait()

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen is None:
            return None
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.popen.returncode

    def wait_exit(self, timeout: float) -> int:
        assert self.popen is not None
        return self.popen.wait(timeout)

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def coordinator_proc(
    data_dir: Path, log_dir: Path, *, env: dict[str, str] | None = None, extra: list[str] | None = None
) -> Proc:
    port, http = free_port(), free_port()
    argv = [
        "-m",
        "xatm",
        "coordinator",
        "--listen",
        f"127.0.0.1:{port}",
        "--http-listen",
        f"127.0.0.1:{http}",
        "--data-dir",
        str(data_dir),
        *(extra or []),
    ]
    return Proc(
        "coordinator", argv, f"127.0.0.1:{port}", log_dir / "coordinator.log", env or {}, f"127.0.0.1:{http}"
    )
