"""One settings loader, one address type, one stop-signal helper, for every xatm program: the
programs themselves exit 2 with one line on a bad setting, and stop gracefully when signalled.

The loader's precedence and the address type are checked in process in tests/unit/test_settings.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from xatm.coordinator.tools.procs import Proc, coordinator_proc, free_port

BIN = Path(sys.executable).parent
#: The process environment without any XATM_* variable: each case sets only its own.
CLEAN = {k: v for k, v in os.environ.items() if not k.startswith("XATM_")}


# ------------------------------------------------------------------ bad settings: exit 2, one line


def _xatm(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "xatm"), *argv], capture_output=True, text=True, timeout=60, env={**CLEAN, **(env or {})}
    )


def _one_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 2, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    return lines[0]


def _bad_config(tmp_path: Path, text: str) -> str:
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return str(path)


C, P = "coordinator", "participant"


# fmt: off
#: (program, flags, env, config file, what the one line says)
_BAD_SETTINGS = [
    (C, ["--node-id", "a b"], {}, None, "--node-id must be 1-24 characters of [A-Za-z0-9_-], not 'a b'"),
    (C, ["--node-id", "x" * 25], {}, None, "--node-id must be 1-24 characters"),
    (C, [], {"XATM_NODE_ID": "n.1"}, None, "XATM_NODE_ID must be 1-24 characters of [A-Za-z0-9_-]"),
    (C, [], {}, "node_id = 'é'", "node_id must be 1-24 characters of [A-Za-z0-9_-], not 'é'"),
    (C, ["--call-timeout", "soon"], {}, None, "--call-timeout: invalid value 'soon'"),
    (C, [], {"XATM_RETRY_INITIAL": "0"}, None, "XATM_RETRY_INITIAL must be > 0, not 0.0"),
    (C, [], {}, "max_history = -5", "max_history must be >= 1, not -5"),
    (C, ["--listen", "[::1]7070"], {}, None, "--listen '[::1]7070' must be HOST:PORT"),
    (C, [], {"XATM_HTTP_LISTEN": "127.0.0.1:99999"}, None, "XATM_HTTP_LISTEN '127.0.0.1:99999' must be"),
    (C, [], {}, "listen = 'a b:1'", "listen 'a b:1' must be HOST:PORT (no spaces or control characters"),
    (P, ["--coordinator", "coord"], {}, None, "--coordinator 'coord' must be HOST:PORT (no port)"),
    (P, [], {"XATM_ADVERTISE": "agent:0"}, None, "XATM_ADVERTISE 'agent:0' must be HOST:PORT"),
    (P, [], {"XATM_POOL_SIZE": "many"}, None, "XATM_POOL_SIZE: invalid value 'many'"),
    (P, [], {}, "[participant]\nlock_timeout_ms = -1", "lock_timeout_ms must be >= 0, not -1"),
    (P, [], {}, "[participant]\nlisten = '::1:7080'", "listen '::1:7080' must be HOST:PORT (an IPv6"),
    (P, [], {}, "[participant]\nno_such_key = 1", "unknown key 'no_such_key'"),
]
# fmt: on


@pytest.mark.parametrize(("program", "argv", "env", "toml", "message"), _BAD_SETTINGS)
def test_a_bad_setting_from_any_source_exits_2_naming_it(
    tmp_path: Path, program: str, argv: list[str], env: dict[str, str], toml: str | None, message: str
) -> None:
    if program == "coordinator":
        argv = ["--data-dir", str(tmp_path / "data"), *argv]
    else:
        argv = ["--resource", f"sqlite:{tmp_path / 'kv.db'}", *argv]
    if toml is not None:
        argv = [*argv, "--config", _bad_config(tmp_path, toml)]
        message = f"config file {tmp_path / 'bad.toml'}: {message}"
    line = _one_line(_xatm(program, *argv, env=env))
    assert line.startswith(f"xatm {program}: ") and message in line, line


def test_a_bad_node_id_file_in_the_data_dir_exits_2(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "NODE_ID").write_text("not a node!\n")
    line = _one_line(
        _xatm("coordinator", "--data-dir", str(data), "--listen", f"127.0.0.1:{free_port()}",
              "--http-listen", f"127.0.0.1:{free_port()}")
    )  # fmt: skip
    assert line == (
        f"xatm coordinator: {data / 'NODE_ID'}: the node id must be 1-24 characters of [A-Za-z0-9_-], "
        "not 'not a node!'"
    )
    assert sorted(p.name for p in data.iterdir()) == ["NODE_ID"], "a refused start must create no log"


def test_xactl_refuses_a_malformed_coordinator_address_as_a_usage_error() -> None:
    for argv, env in ((["--coordinator", "localhost"], {}), ([], {"XATM_COORDINATOR": "h:7070:1"})):
        done = subprocess.run(
            [str(BIN / "xactl"), *argv, "list"],
            capture_output=True,
            text=True,
            timeout=60,
            env={**CLEAN, **env},
        )
        line = _one_line(done)
        assert line.startswith("xactl: --coordinator (or XATM_COORDINATOR) '") and "must be HOST:PORT" in line


@pytest.mark.parametrize(
    "argv",
    [
        ["-m", "xatm.coordinator.tools.bench.participant", "--listen", "nope", "--rm-id", "b"],
        ["-m", "xatm.coordinator.tools.bank.account_service", "--name", "a", "--listen", "127.0.0.1:1",
         "--db", "x.db", "--coordinator", "[::1]"],
    ],
    ids=["bench-participant", "bank-account-service"],
)  # fmt: skip
def test_the_example_servers_refuse_a_malformed_address_as_a_usage_error(argv: list[str]) -> None:
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "must be HOST:PORT" in done.stderr.strip().splitlines()[-1]


# ------------------------------------------------------------------ the stop-signal helper

_THREADED = """
from xatm.participant.runtime.serving import until_signalled
until_signalled(lambda: print("serving", flush=True))
print("stopped gracefully", flush=True)
"""
_ASYNCIO = """
import asyncio
from xatm.participant.runtime.serving import stop_signals

async def main():
    async with stop_signals() as stop:
        print("serving", flush=True)
        await stop.wait()
    print("stopped gracefully", flush=True)

asyncio.run(main())
"""


@pytest.mark.parametrize("program", [_THREADED, _ASYNCIO], ids=["threaded", "asyncio"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signalled_server_stops_gracefully_and_exits_0(program: str, sig: signal.Signals) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", program], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None and child.stdout.readline() == "serving\n"
        child.send_signal(sig)
        out, err = child.communicate(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    assert out == "stopped gracefully\n"


def test_servers_exit_0_on_sigterm(tmp_path: Path) -> None:
    """The coordinator, the agent and the bench participant, as real processes."""
    coordinator = coordinator_proc(tmp_path / "data", tmp_path).start()
    try:
        port, http = free_port(), free_port()
        agent = Proc(
            "agent",
            ["-m", "xatm", "participant", "--listen", f"127.0.0.1:{port}",
             "--http-listen", f"127.0.0.1:{http}", "--coordinator", coordinator.address],
            f"127.0.0.1:{port}",
            tmp_path / "agent.log",
            {"XATM_RESOURCE": f"sqlite:{tmp_path / 'kv.db'}"},
        ).start()  # fmt: skip
        bench = f"127.0.0.1:{free_port()}"
        argv = ["-m", "xatm.coordinator.tools.bench.participant", "--listen", bench, "--rm-id", "bench-0"]
        participant = Proc("bench", argv, bench, tmp_path / "bench.log").start()
        assert participant.stop() == 0, participant.tail()
        assert agent.stop() == 0, agent.tail()
    finally:
        code = coordinator.stop()
    assert code == 0, coordinator.tail()
