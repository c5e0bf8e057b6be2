"""A real Prometheus server for tests: scrapes given targets fast and answers PromQL over HTTP.

The Debian package ``prometheus`` provides the binary. A missing binary fails the test with
instructions; it never skips, because the metrics contract is only proven against the real thing.
"""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from xatm.coordinator.tools.procs import free_port

__all__ = ["Prometheus", "prometheus_binary"]

#: Fast enough that a test sees a change within a second or two, slow enough for 2 cores.
SCRAPE_INTERVAL = "500ms"


def prometheus_binary() -> str:
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if Path("/usr/bin/prometheus").exists() else None
    )
    if found is None:
        pytest.fail(
            "the prometheus server binary is not installed: install it with `apt-get install -y prometheus` "
            "(Debian package 'prometheus' ships /usr/bin/prometheus; .ci/run does this). "
            "The Prometheus scrape test needs it and does not skip.",
            pytrace=False,
        )
    return found


def _config(jobs: Mapping[str, list[str]]) -> str:
    """Prometheus reads YAML, and JSON is YAML: no YAML writer needed."""
    return json.dumps(
        {
            "global": {"scrape_interval": SCRAPE_INTERVAL, "scrape_timeout": SCRAPE_INTERVAL},
            "scrape_configs": [
                {"job_name": job, "metrics_path": "/metrics", "static_configs": [{"targets": targets}]}
                for job, targets in jobs.items()
            ],
        },
        indent=2,
    )


class Prometheus:
    """One Prometheus process with its config and TSDB in a temporary directory.

    ``jobs`` maps a job name to ``host:port`` targets serving /metrics. Use as a context manager,
    or call ``start`` then ``wait_ready`` (so the server boots while the system under test does).
    """

    def __init__(self, jobs: Mapping[str, list[str]]):
        self.binary = prometheus_binary()
        self.dir = Path(tempfile.mkdtemp(prefix="xatm-prom-"))
        self.address = f"127.0.0.1:{free_port()}"
        (self.dir / "prometheus.yml").write_text(_config(jobs))
        self._log = self.dir / "prometheus.log"
        self._popen: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        argv = [
            self.binary,
            f"--config.file={self.dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={self.dir / 'data'}",
            f"--web.listen-address={self.address}",
            "--log.level=warn",
        ]
        with self._log.open("wb") as log:
            self._popen = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        return self

    def wait_ready(self, timeout: float = 30.0) -> Prometheus:
        deadline = time.monotonic() + timeout
        while True:
            assert self._popen is not None, "start() first"
            if self._popen.poll() is not None:
                raise RuntimeError(f"prometheus exited with code {self._popen.returncode}:\n{self.tail()}")
            try:
                with urllib.request.urlopen(f"http://{self.address}/-/ready", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"prometheus not ready within {timeout:.0f}s:\n{self.tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        if self._popen is not None and self._popen.poll() is None:
            self._popen.send_signal(signal.SIGTERM)
            try:
                self._popen.wait(15)
            except subprocess.TimeoutExpired:
                self._popen.kill()
                self._popen.wait()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Prometheus:
        return self.start().wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self._log.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"

    # ------------------------------------------------------------ queries

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query's vector: [{"metric": {labels}, "value": [time, "value"]}, ...]."""
        url = f"http://{self.address}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        with urllib.request.urlopen(url, timeout=5) as resp:
            body = json.load(resp)
        if body.get("status") != "success":
            raise AssertionError(f"query {expr!r} failed: {body}")
        if body["data"]["resultType"] != "vector":
            raise AssertionError(f"query {expr!r} is not a vector: {body['data']['resultType']}")
        return body["data"]["result"]

    def values(self, expr: str, *by: str) -> dict[tuple[str, ...], float]:
        """The vector keyed by the values of the labels ``by`` (missing labels read as "")."""
        return {
            tuple(sample["metric"].get(label, "") for label in by): float(sample["value"][1])
            for sample in self.query(expr)
        }

    def scalar(self, expr: str) -> float | None:
        """The value of a query answering at most one sample; None when it answers none."""
        result = self.query(expr)
        if len(result) > 1:
            raise AssertionError(f"query {expr!r} answered {len(result)} samples, expected one")
        return float(result[0]["value"][1]) if result else None

    def wait_until(
        self, what: str, read: Callable[[], Any], ok: Callable[[Any], bool], timeout: float = 30.0
    ) -> Any:
        """Poll ``read()`` until ``ok`` holds (scrapes are asynchronous); returns the last reading.

        Times out with an AssertionError showing the last reading, so a test never relies on a
        fixed sleep being long enough.
        """
        deadline = time.monotonic() + timeout
        while True:
            seen = read()
            if ok(seen):
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"Prometheus never showed {what} within {timeout:.0f}s; last saw {seen!r}"
                )
            time.sleep(0.2)
