"""Every ``xactl`` subcommand against bad input, on a real coordinator with tokens: the exit code
of the contract's table, exactly one line on stderr, nothing on stdout. Also ``-o`` and the
vocabulary of ``wal dump --output json``."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.admin_support import CREDENTIALS, INVALID, NOT_FOUND, UNAVAILABLE, XACTL, write_auth_file, xactl
from tests.bank_system import TEST_COORDINATOR_ENV
from xatm.coordinator.cli.xactl import build_parser
from xatm.coordinator.tools.procs import Proc, coordinator_proc, free_port
from xatm.participant.api.v1 import coordinator_pb2, coordinator_pb2_grpc

OPS, VIEWER, SERVICE = (f"{who}-{os.urandom(12).hex()}" for who in ("ops", "view", "svc"))
UNKNOWN = "n0.0000000000000000000000000000"
BAD_ID = "not/an id"
COMMITTED = ["--outcome", "committed", "--reason"]


@pytest.fixture(scope="module")
def coordinator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    root = tmp_path_factory.mktemp("xactl-errors")
    tokens = root / "tokens.toml"
    entries = {"ops": ("operator", OPS, None), "w": ("viewer", VIEWER, None), "s": ("service", SERVICE, None)}
    write_auth_file(tokens, entries)
    # The unknown gtrid names this coordinator: nothing may be created for it by any verb.
    env = {**TEST_COORDINATOR_ENV, "XATM_AUTH_FILE": str(tokens), "XATM_NODE_ID": UNKNOWN.split(".")[0]}
    proc = coordinator_proc(root / "data", root, env=env)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def logs(coordinator: Proc, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Directories for ``wal dump``: none, empty, a log with records, a log damaged mid-way."""
    root = tmp_path_factory.mktemp("logs")
    (root / "empty").mkdir()
    with grpc.insecure_channel(coordinator.address) as channel:
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        auth = [("authorization", f"Bearer {SERVICE}")]
        for _ in range(40):
            gtrid = stub.Begin(coordinator_pb2.BeginRequest(), metadata=auth).gtrid
            stub.Rollback(coordinator_pb2.CompletionRequest(gtrid=gtrid), metadata=auth)
    data = Path(coordinator.argv[coordinator.argv.index("--data-dir") + 1])
    damaged = root / "damaged" / "wal"
    damaged.mkdir(parents=True)
    for segment in (data / "wal").iterdir():
        damaged.joinpath(segment.name).write_bytes(segment.read_bytes())
    first = sorted(damaged.glob("*.wal"))[0]
    raw = bytearray(first.read_bytes())
    raw[len(raw) // 2 : len(raw) // 2 + 8] = b"\xde\xad\xbe\xef" * 2
    first.write_bytes(bytes(raw))
    return {
        "missing": root / "missing",
        "empty": root / "empty",
        "damaged": root / "damaged",
        "good": data,
        "tokens": data.parent / "tokens.toml",  # a file, not a directory nor a certificate
    }


CASES: list[tuple[str, list[str], str | None, int]] = [
    # command line, token, exit code
    ("list-status", ["list", "--status", "Bogus"], VIEWER, INVALID),
    ("list-limit", ["list", "--limit", "0"], VIEWER, INVALID),
    ("list-since", ["list", "--since", "yesterday"], VIEWER, INVALID),
    ("list-page", ["list", "--page-token", "abc"], VIEWER, INVALID),
    ("list-no-token", ["list"], None, CREDENTIALS),
    ("list-service-role", ["list"], SERVICE, CREDENTIALS),
    ("show-bad-id", ["show", BAD_ID], VIEWER, INVALID),
    ("show-unknown", ["show", UNKNOWN], VIEWER, NOT_FOUND),
    ("show-unknown-o-json", ["show", UNKNOWN, "-o", "json"], VIEWER, NOT_FOUND),
    ("show-no-id", ["show"], VIEWER, INVALID),
    ("rollback-bad-id", ["rollback", BAD_ID, "--yes"], OPS, INVALID),
    ("rollback-unknown", ["rollback", UNKNOWN, "--yes"], OPS, NOT_FOUND),
    ("rollback-unconfirmed", ["rollback", UNKNOWN], OPS, INVALID),
    ("rollback-viewer", ["rollback", UNKNOWN, "--yes"], VIEWER, CREDENTIALS),
    ("commit-bad-id", ["commit", BAD_ID, "--yes"], OPS, INVALID),
    ("commit-unknown", ["commit", UNKNOWN, "--yes"], OPS, NOT_FOUND),
    ("commit-long-reason", ["commit", UNKNOWN, "--yes", "--reason", "r" * 201], OPS, INVALID),
    (
        "resolve-bad-bqual",
        ["resolve", UNKNOWN, BAD_ID, "--outcome", "committed", "--reason", "x"],
        OPS,
        INVALID,
    ),
    ("resolve-outcome", ["resolve", UNKNOWN, "b1", "--outcome", "maybe", "--reason", "x"], OPS, INVALID),
    (
        "resolve-no-reason",
        ["resolve", UNKNOWN, "b1", "--outcome", "committed", "--reason", " "],
        OPS,
        INVALID,
    ),
    (
        "resolve-unknown",
        ["resolve", UNKNOWN, "b1", "--outcome", "committed", "--reason", "x"],
        OPS,
        NOT_FOUND,
    ),
    ("forget-bad-id", ["forget", "--yes", BAD_ID], OPS, INVALID),
    ("forget-unknown", ["forget", "--yes", UNKNOWN], OPS, NOT_FOUND),
    ("forget-unconfirmed", ["forget", UNKNOWN], OPS, INVALID),  # stdin is no terminal here
    ("forget-viewer", ["forget", "--yes", UNKNOWN], VIEWER, CREDENTIALS),
    ("audit-limit", ["audit", "--limit", "5000"], VIEWER, INVALID),
    ("audit-page", ["audit", "--page-token", "x"], VIEWER, INVALID),
    ("wal-dump-missing", ["wal", "dump", "{missing}"], None, INVALID),
    ("wal-dump-no-log", ["wal", "dump", "{empty}"], None, INVALID),
    ("wal-dump-no-log-json", ["wal", "dump", "{empty}", "-o", "json"], None, INVALID),
    ("wal-dump-damaged", ["wal", "dump", "{damaged}"], None, UNAVAILABLE),
    ("wal-no-command", ["wal"], None, INVALID),
    ("wal-unknown-command", ["wal", "frobnicate", "{good}"], None, INVALID),
    ("wal-dump-no-dir", ["wal", "dump"], None, INVALID),
    ("wal-dump-file", ["wal", "dump", "{tokens}"], None, INVALID),
    ("approvals-no-command", ["approvals"], VIEWER, INVALID),
    ("approvals-list-no-token", ["approvals", "list"], None, CREDENTIALS),
    ("approvals-list-service-role", ["approvals", "list"], SERVICE, CREDENTIALS),
    ("approvals-approve-unknown", ["approvals", "approve", "a-0000"], OPS, NOT_FOUND),
    ("approvals-approve-empty", ["approvals", "approve", ""], OPS, INVALID),
    ("approvals-approve-viewer", ["approvals", "approve", "a-0000"], VIEWER, CREDENTIALS),
    ("approvals-reject-unknown", ["approvals", "reject", "a-0000"], OPS, NOT_FOUND),
    ("approvals-reject-long-reason", ["approvals", "reject", "a-0000", "--reason", "r" * 201], OPS, INVALID),
    ("approvals-reject-no-id", ["approvals", "reject"], OPS, INVALID),
    ("resolve-no-outcome", ["resolve", UNKNOWN, "b1", "--reason", "x"], OPS, INVALID),
    ("rollback-long-reason", ["rollback", UNKNOWN, "--yes", "--reason", "r" * 201], OPS, INVALID),
    ("commit-viewer", ["commit", UNKNOWN, "--yes"], VIEWER, CREDENTIALS),
    ("forget-none", ["forget"], OPS, INVALID),
    ("audit-no-token", ["audit"], None, CREDENTIALS),
    ("replicas-no-token", ["replicas"], None, CREDENTIALS),
    ("replicas-service-role", ["replicas"], SERVICE, CREDENTIALS),
    ("replicas-extra-argument", ["replicas", "r1"], VIEWER, INVALID),
    ("replicas-bad-output", ["replicas", "-o", "yaml"], VIEWER, INVALID),
    ("tls-ca-missing", ["list", "--tls-ca", "{missing}/ca.pem"], VIEWER, INVALID),
    ("tls-ca-not-pem", ["list", "--tls-ca", "{tokens}"], VIEWER, INVALID),
    ("tls-key-not-pem", ["list", "--tls-cert", "{tokens}", "--tls-key", "{tokens}"], VIEWER, INVALID),
    ("bad-coordinator-flag", ["list", "--coordinator", "unix:/tmp/x"], VIEWER, INVALID),
    ("unknown-command", ["frobnicate"], None, INVALID),
    ("bad-output", ["list", "-o", "yaml"], VIEWER, INVALID),
    ("bad-timeout", ["list", "--timeout", "soon"], VIEWER, INVALID),
]


@pytest.mark.parametrize(("argv", "token", "exit_code"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_subcommand_refuses_bad_input_in_one_line(
    coordinator: Proc, logs: dict[str, Path], argv: list[str], token: str | None, exit_code: int
) -> None:
    argv = [arg.format(**logs) for arg in argv]
    done = xactl(coordinator.address, *argv, token=token)
    assert done.returncode == exit_code, done.stderr
    assert done.stdout == "" or (argv[:2] == ["show", UNKNOWN] and done.stdout == ""), done.stdout
    assert len(done.stderr.splitlines()) == 1 and done.stderr.startswith("xactl"), done.stderr
    assert "Traceback" not in done.stderr


def test_verbs_on_an_unknown_transaction_of_this_coordinator_create_nothing(coordinator: Proc) -> None:
    """A forced rollback of a gtrid naming this coordinator that it never heard of is NOT_FOUND,
    as show says, and leaves no transaction behind (it once recorded a Rolledback one)."""
    for verb in (["rollback", UNKNOWN, "--yes"], ["commit", UNKNOWN, "--yes"]):
        done = xactl(coordinator.address, *verb, token=OPS)
        assert done.returncode == NOT_FOUND, done.stdout + done.stderr
    assert xactl(coordinator.address, "show", UNKNOWN, token=VIEWER).returncode == NOT_FOUND
    listed = xactl(coordinator.address, "list", "-o", "json", token=VIEWER)
    assert UNKNOWN not in {t["txid"] for t in json.loads(listed.stdout)["transactions"]}


@pytest.mark.parametrize("argv", [["list"], ["show", UNKNOWN], ["audit"], ["forget", "--yes", UNKNOWN]])
def test_bad_coordinator_addresses_and_unreachable_ones_are_one_line(argv: list[str]) -> None:
    for address, code in (("nowhere", INVALID), (f"127.0.0.1:{free_port()}", UNAVAILABLE)):
        done = xactl(address, *argv, "--timeout", "5", token=OPS)
        assert done.returncode == code and done.stdout == "", done.stderr
        assert len(done.stderr.splitlines()) == 1, done.stderr


def test_dash_o_is_output(coordinator: Proc) -> None:
    done = xactl(coordinator.address, "list", "-o", "json", token=VIEWER)
    assert done.returncode == 0 and "transactions" in json.loads(done.stdout)


def test_wal_dump_json_speaks_the_vocabulary_of_show(logs: dict[str, Path]) -> None:
    done = subprocess.run(
        [str(XACTL), "wal", "dump", str(logs["good"]), "--output", "json"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    text = done.stdout
    for protobuf_word in ("TRANSACTION_STATUS_", "PHASE_", "BRANCH_STATUS_", "DECISION_"):
        assert protobuf_word not in text
    records = [json.loads(line) for line in text.splitlines()]
    # Rolled back before any decision: each is one snapshot (its first record) or status and end.
    statuses = {r[body]["status"] for r in records for body in ("status", "end", "snapshot") if body in r}
    assert statuses and statuses <= {"Rollingback", "Rolledback"}
    assert not [r for r in records if r.get("status", {}).get("rollbackCode") == "XA_OK"]


def test_mid_log_damage_is_told_once_at_start_up(logs: dict[str, Path], tmp_path: Path) -> None:
    argv = [sys.executable, "-m", "xatm", "coordinator", "--data-dir", str(logs["damaged"])]
    argv += ["--listen", f"127.0.0.1:{free_port()}", "--http-listen", f"127.0.0.1:{free_port()}"]
    (logs["damaged"] / "NODE_ID").write_text("n1\n")
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 1 and done.stdout == ""
    assert len(done.stderr.splitlines()) == 1 and "damaged before its end" in done.stderr, done.stderr


def _commands(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> set[tuple[str, ...]]:
    """Every command line's subcommand path (``("wal", "dump")``, ``("list",)``...)."""
    found: set[tuple[str, ...]] = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found |= _commands(sub, (*prefix, name)) or {(*prefix, name)}
    return found


def test_the_cases_cover_every_subcommand() -> None:
    """A subcommand added later without a bad-input case fails here."""
    covered = {tuple(argv[:2]) for _, argv, _, _ in CASES} | {(argv[0],) for _, argv, _, _ in CASES}
    missing = {path for path in _commands(build_parser()) if path not in covered}
    assert not missing, f"no bad-input case for: {sorted(' '.join(p) for p in missing)}"
