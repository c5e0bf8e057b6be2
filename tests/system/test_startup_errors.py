"""Start-up refusals a newcomer met: each is one line on stderr and the contract's exit code,
never a traceback, and nothing starts beside a process that already serves the address."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from xatm.coordinator.tools.procs import Proc, coordinator_proc, free_port

REMEDIES = {"psycopg": "xatm[postgresql]", "pymysql": "xatm[mysql]"}


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    root = tmp_path_factory.mktemp("running")
    proc = coordinator_proc(root / "data", root).start()
    yield proc
    proc.stop()


def _coordinator(listen: str, http: str, data: Path) -> list[str]:
    return ["-m", "xatm", "coordinator", "--listen", listen, "--http-listen", http, "--data-dir", str(data)]


def test_a_second_coordinator_on_a_served_grpc_port_refuses_to_start(running: Proc, tmp_path: Path) -> None:
    done = _run(_coordinator(running.address, f"127.0.0.1:{free_port()}", tmp_path / "d"), tmp_path)
    assert done.returncode == 1
    assert _one_line(done).startswith(f"xatm coordinator: --listen {running.address}: ")
    with socket.create_connection(tuple(running.address.rsplit(":", 1)), timeout=5):  # type: ignore[arg-type]
        pass  # the first one still serves


def test_a_taken_http_port_is_one_line_naming_the_flag(running: Proc, tmp_path: Path) -> None:
    done = _run(_coordinator(f"127.0.0.1:{free_port()}", running.http, tmp_path / "d"), tmp_path)
    assert done.returncode == 1
    assert _one_line(done).startswith(f"xatm coordinator: --http-listen {running.http}: ")


def test_a_second_agent_on_a_served_port_refuses_to_start(tmp_path: Path) -> None:
    port = free_port()
    argv = ["-m", "xatm", "participant", "--resource", f"sqlite:{tmp_path / 'a.db'}", "--listen"]
    first = Proc(
        "agent",
        [*argv, f"127.0.0.1:{port}", "--http-listen", f"127.0.0.1:{free_port()}"],
        f"127.0.0.1:{port}",
        tmp_path / "agent.log",
    ).start()
    try:
        second = [*argv[:4], f"sqlite:{tmp_path / 'b.db'}", "--listen", f"127.0.0.1:{port}"]
        done = _run([*second, "--http-listen", f"127.0.0.1:{free_port()}"], tmp_path)
        assert done.returncode == 1
        assert f"--listen 127.0.0.1:{port}" in _one_line(done)
    finally:
        first.stop()


@pytest.mark.parametrize(
    "spec", ["bogus=crash", "coordinator.after_prepare=explode", "1*participant.commit=crash"]
)
def test_a_malformed_failpoint_setting_is_one_line_and_exit_2(spec: str, tmp_path: Path) -> None:
    done = _run(["-m", "xatm", "--list-failpoints"], tmp_path, {"XATM_FAILPOINTS": spec})
    assert done.returncode == 2
    assert _one_line(done).startswith("XATM_FAILPOINTS: ")


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--data-dir", "", "must name a directory"),
        ("--data-dir", "/etc/passwd", "is not a directory"),
        ("--data-dir", "/proc/xatm-data", "cannot create it"),
    ],
)
def test_a_data_dir_that_cannot_be_one_is_a_bad_setting(
    flag: str, value: str, says: str, tmp_path: Path
) -> None:
    done = _run(["-m", "xatm", "coordinator", flag, value], tmp_path)
    assert done.returncode == 2
    assert says in _one_line(done) and flag in done.stderr
    assert not (tmp_path / "wal").exists() and not (tmp_path / "LOCK").exists()


@pytest.mark.parametrize("module", sorted(REMEDIES))
def test_a_missing_driver_names_the_extra_to_install(module: str, tmp_path: Path) -> None:
    resource = "postgresql://u@127.0.0.1:1/x" if module == "psycopg" else "mysql://u:p@127.0.0.1:1/x"
    hide = (  # the driver as if not installed: importing it raises ModuleNotFoundError
        f"import sys; sys.modules[{module!r}] = None; from xatm.coordinator.cli.main import main; "
        f"sys.exit(main(['participant', '--resource', {resource!r}, '--listen', '127.0.0.1:{free_port()}', "
        f"'--http-listen', '127.0.0.1:{free_port()}', '--coordinator', '127.0.0.1:1']))"
    )
    done = _run(["-c", hide], tmp_path)
    assert done.returncode == 1
    assert f"pip install '{REMEDIES[module]}'" in _one_line(done)


@pytest.mark.parametrize("value", ["0", "-1", "soon"])
def test_xactl_refuses_a_timeout_that_is_not_a_positive_number(value: str, tmp_path: Path) -> None:
    done = _run(["-m", "xatm.coordinator.cli.xactl", "--timeout", value, "list"], tmp_path)
    assert done.returncode == 2
    assert "--timeout" in _one_line(done)
