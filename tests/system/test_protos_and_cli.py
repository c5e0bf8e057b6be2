"""The generated code matches protos/, and the command-line entry points answer."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.bank_system import BankSystem
from tests.conftest import REPO
from xatm.participant.failpoints import CATALOGUE

# Version stamps differ between grpcio-tools releases without changing the code's meaning.
_VERSION_LINE = re.compile(
    r"^(# Protobuf Python Version:.*|GRPC_GENERATED_VERSION = .*|\s+\d+,\s*$"
    r"|_runtime_version\.ValidateProtobufRuntimeVersion\(.*)$",
    re.MULTILINE,
)


def _normalise(text: str) -> str:
    return _VERSION_LINE.sub("", text)


def test_generated_code_is_fresh(tmp_path: Path) -> None:
    subprocess.run([sys.executable, str(REPO / "protos" / "generate.py"), "--out", str(tmp_path)], check=True)
    fresh = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert fresh, "the generator wrote nothing"
    for rel in fresh:
        committed = REPO / rel
        assert committed.exists(), f"{rel} is not committed; run python protos/generate.py"
        assert _normalise(committed.read_text()) == _normalise((tmp_path / rel).read_text()), (
            f"{rel} is stale; run python protos/generate.py"
        )
    committed_files = {
        p.relative_to(REPO)
        for d in ("participant/api/v1", "coordinator/tools/bank/_proto")
        for p in (REPO / d).glob("*.py*")
    }
    assert committed_files <= set(fresh), f"generated files without a proto: {committed_files - set(fresh)}"


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=60)


def test_help_and_failpoint_listing() -> None:
    bindir = Path(sys.executable).parent
    for argv in ([str(bindir / "xatm"), "coordinator", "--help"], [str(bindir / "xactl"), "--help"]):
        done = _run(*argv)
        assert done.returncode == 0, done.stderr
        assert "usage:" in done.stdout
    listed = _run(str(bindir / "xatm"), "--list-failpoints")
    assert listed.returncode == 0
    assert listed.stdout.split() == list(CATALOGUE)
    bad = _run(str(bindir / "xactl"), "frobnicate")
    assert bad.returncode == 2 and "invalid choice" in bad.stderr


def test_bad_config_is_a_clear_error(tmp_path: Path) -> None:
    bindir = Path(sys.executable).parent
    config = tmp_path / "bad.toml"
    config.write_text("listen = '127.0.0.1:0'\nno_such_key = 1\n")
    done = _run(str(bindir / "xatm"), "coordinator", "--config", str(config))
    assert done.returncode == 2
    assert "unknown key 'no_such_key'" in done.stderr and "Traceback" not in done.stderr


def test_health_service_answers(bank_system: BankSystem) -> None:
    with grpc.insecure_channel(bank_system.coordinator.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "xatm.v1.Coordinator", "xatm.v1.Admin"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_demo_exits_zero(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "xatm"), "demo", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "every outcome was as expected" in done.stdout
    assert "Committed" in done.stdout and "XA_RBINTEGRITY" in done.stdout
    assert "ok   recovery committed the transfer by itself" in done.stdout


@pytest.mark.parametrize("tool", [["demo"], ["bench", "--quick", "--only", "memory"]])
@pytest.mark.parametrize("where", ["file", "inside-a-file", "not-empty"])
def test_a_data_dir_that_cannot_be_used_is_one_line_and_exit_2(
    tmp_path: Path, tool: list[str], where: str
) -> None:
    """A second run over the first one's directory once failed half-way (balances of the first run
    read as the second's); a file gave a traceback."""
    (tmp_path / "afile").write_text("x")
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "coordinator").mkdir()
    path = {"file": "afile", "inside-a-file": "afile/sub", "not-empty": "used"}[where]
    done = subprocess.run(
        [str(Path(sys.executable).parent / "xatm"), *tool, "--data-dir", str(tmp_path / path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (done.returncode, done.stdout) == (2, ""), done.stderr
    assert len(done.stderr.splitlines()) == 1 and "--data-dir" in done.stderr, done.stderr
    assert (tmp_path / "afile").read_text() == "x" and list((tmp_path / "used").iterdir())
