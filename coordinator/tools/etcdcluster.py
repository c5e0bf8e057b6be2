"""Throwaway etcd clusters: members on free loopback ports in a temp dir, which tests kill
(SIGKILL), pause (SIGSTOP/SIGCONT), restart on the same data, and destroy; ``xatm bench --etcd``
measures replicas on one.

The replicated transaction log is only as good as its behaviour against a real etcd (quorum,
leases, compare-and-set), so tests run the Debian ``etcd`` binary; a missing one is an error,
never a skip.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

__all__ = ["EtcdCluster", "EtcdClusterError", "EtcdMember", "find_etcd"]

#: Raft timings (ms) much shorter than etcd's defaults, so a lost leader is replaced in well
#: under a second and quorum tests do not wait on elections.
_HEARTBEAT_MS = 50
_ELECTION_MS = 500


class EtcdClusterError(RuntimeError):
    """The throwaway cluster could not be started or controlled."""


def find_etcd() -> str:
    """The etcd server binary: $XATM_ETCD, ``etcd`` on PATH or /usr/bin/etcd."""
    for candidate in (os.environ.get("XATM_ETCD"), shutil.which("etcd"), "/usr/bin/etcd"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise EtcdClusterError(
        "etcd not found: install the Debian package `etcd-server` (apt-get install etcd-server) "
        "or point XATM_ETCD at the etcd binary"
    )


def _free_ports(count: int) -> list[int]:
    # Held open together so the kernel hands out distinct ports.
    socks = [socket.socket(socket.AF_INET, socket.SOCK_STREAM) for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


class EtcdMember:
    """One member: its name, client and peer ports, data dir and (while running) its process."""

    def __init__(self, binary: str, root: Path, name: str, client_port: int, peer_port: int):
        self.binary = binary
        self.name = name
        self.client_port = client_port
        self.peer_port = peer_port
        self.data_dir = root / name
        self.log_file = root / f"{name}.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._args: list[str] = []

    @property
    def endpoint(self) -> str:
        """``127.0.0.1:<client port>``."""
        return f"127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    def start(self, initial_cluster: str) -> None:
        """Start on the member's data dir; joins ``initial_cluster`` (name=peer-url,...) when new."""
        self._args = [
            self.binary,
            "--name", self.name,
            "--data-dir", str(self.data_dir),
            "--listen-client-urls", f"http://{self.endpoint}",
            "--advertise-client-urls", f"http://{self.endpoint}",
            "--listen-peer-urls", self.peer_url,
            "--initial-advertise-peer-urls", self.peer_url,
            "--initial-cluster", initial_cluster,
            "--initial-cluster-state", "new",
            "--initial-cluster-token", "xatm-test",
            "--heartbeat-interval", str(_HEARTBEAT_MS),
            "--election-timeout", str(_ELECTION_MS),
        ]  # fmt: skip
        self.restart()

    def restart(self) -> None:
        """Start again on the same data dir and ports (after ``kill`` or ``stop``)."""
        if self.running:
            raise EtcdClusterError(f"{self.name} is already running")
        with self.log_file.open("ab") as log:
            self.proc = subprocess.Popen(self._args, stdout=log, stderr=subprocess.STDOUT)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, as a crashed machine would leave it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)  # a paused member must die too
            self.proc.kill()
            self.proc.wait()

    def pause(self) -> None:
        """SIGSTOP: the member stays connected but answers nothing."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def healthy(self) -> bool:
        """True when this member answers /health with health "true" (it sees a leader)."""
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as reply:
                return bool(json.load(reply).get("health") == "true")
        except (OSError, ValueError, urllib.error.URLError):
            return False


class EtcdCluster:
    """``size`` members on loopback, started by the constructor and healthy when it returns.

    ``endpoints`` is the comma-separated client address list; ``url`` the ``etcd://`` store
    address the coordinator takes. ``destroy`` kills every member and removes the temp dir.
    """

    def __init__(self, size: int = 3, *, start_timeout: float = 30.0):
        binary = find_etcd()
        self.root = Path(tempfile.mkdtemp(prefix="xatm-etcd-"))
        ports = _free_ports(2 * size)
        self.members = [
            EtcdMember(binary, self.root, f"m{i}", ports[2 * i], ports[2 * i + 1]) for i in range(size)
        ]
        initial = ",".join(f"{m.name}={m.peer_url}" for m in self.members)
        try:
            for member in self.members:
                member.start(initial)
            self.wait_healthy(timeout=start_timeout)
        except BaseException:
            self.destroy()
            raise

    @property
    def endpoints(self) -> str:
        return ",".join(m.endpoint for m in self.members)

    @property
    def url(self) -> str:
        return "etcd://" + self.endpoints

    def wait_healthy(self, timeout: float = 30.0) -> None:
        """Wait until every running member reports healthy; EtcdClusterError naming the log if not."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for member in self.members:
                if member.proc is not None and member.proc.poll() is not None and member.proc.returncode:
                    raise EtcdClusterError(
                        f"etcd member {member.name} exited with {member.proc.returncode}; "
                        f"see {member.log_file}"
                    )
            if all(m.healthy() for m in self.members if m.running):
                return
            time.sleep(0.1)
        raise EtcdClusterError(f"etcd cluster not healthy after {timeout}s; logs in {self.root}")

    def restart_all(self) -> None:
        """Kill every member, start them again on their data and wait for quorum."""
        for member in self.members:
            member.kill()
        for member in self.members:
            member.restart()
        self.wait_healthy()

    def destroy(self) -> None:
        for member in self.members:
            member.kill()
        shutil.rmtree(self.root, ignore_errors=True)
