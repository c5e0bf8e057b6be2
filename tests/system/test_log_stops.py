"""Every way the transaction log can stop or vanish, on a real coordinator: it says so and loses
nothing.

A write or fsync that fails (a full disk), a log deleted under a running coordinator, a log
missing at start-up. Each must end in UNAVAILABLE answers, NOT_SERVING health and an exit or
refusal with one line, never in an internal error or a presumed abort of an acknowledged commit.
The log and the engine alone are checked in process in tests/unit/test_log_stops.py.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.bank_system import BankSystem
from tests.chaos import eventually, fast_recovery
from tests.wal_support import segments
from xatm.coordinator.app import EXIT_LOG_STOPPED
from xatm.coordinator.tools.procs import Proc
from xatm.participant.api.v1 import coordinator_pb2, coordinator_pb2_grpc, xa_pb2
from xatm.participant.errors import XatmError
from xatm.participant.xa import FORMAT_ID
from xatm.participant.xa import TxStatus as S

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


# --- real processes ---


def _health(address: str) -> int:
    with grpc.insecure_channel(address) as channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        return int(reply.status)


def _healthz(http: str) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(f"http://{http}/healthz", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


def _wait_health(address: str, wanted: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while _health(address) != wanted:
        if time.monotonic() > deadline:
            raise AssertionError(f"health of {address} never became {wanted}")
        time.sleep(0.05)


def _begin_error(address: str) -> grpc.RpcError:
    with grpc.insecure_channel(address) as channel, pytest.raises(grpc.RpcError) as err:
        coordinator_pb2_grpc.CoordinatorStub(channel).Begin(coordinator_pb2.BeginRequest(), timeout=10)
    return err.value


def _query_outcome(address: str, gtrid: str, bqual: str) -> coordinator_pb2.QueryOutcomeResponse:
    with grpc.insecure_channel(address) as channel:
        xid = xa_pb2.Xid(format_id=FORMAT_ID, gtrid=gtrid, bqual=bqual)
        stub = coordinator_pb2_grpc.CoordinatorStub(channel)
        return stub.QueryOutcome(coordinator_pb2.QueryOutcomeRequest(xid=xid), timeout=10)


def _assert_refused(proc: Proc, *phrases: str) -> None:
    """Start ``proc``; it must exit 1 with one line, no traceback, holding every phrase."""
    before = proc.log_path.stat().st_size
    proc.start(wait=0)
    code = proc.wait_exit(60)
    with proc.log_path.open("rb") as log:
        log.seek(before)
        said = log.read().decode(errors="replace")
    assert code == 1, said
    assert "Traceback" not in said and len(said.strip().splitlines()) == 1, said
    for phrase in phrases:
        assert phrase in said


def _without_log(tmp_path: Path, prepared: int) -> tuple[BankSystem, list[tuple[str, str]]]:
    """A running system with ``prepared`` acknowledged commits pending in bank-b, its log deleted."""
    system = BankSystem(tmp_path, coordinator_env=QUICK_ANSWER)
    try:
        system.start(bank_env=BANK_B_COMMIT_FAILS)
        pending = _prepared_in_bank_b(system, prepared)
        data = tmp_path / "coordinator"
        shutil.copytree(data / "wal", tmp_path / "wal-backup")
        for segment in segments(data):
            segment.unlink()
    except BaseException:
        system.stop()
        raise
    return system, pending


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs where BankSystem keeps the coordinator's data dir."""
    mount = tmp_path / "coordinator"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode:
        why = f"cannot mount a tmpfs: {done.stderr.decode().strip()}"
        if os.environ.get("CI") or os.geteuid() == 0:
            pytest.fail(why)  # CI runs as root: a full-disk test that cannot run is a failure there
        pytest.skip(f"{why} (needs root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def _fill(disk: Path) -> Path:
    """Take every free byte of ``disk``; returns the filler file to delete to free it again."""
    filler = disk / "filler"
    with filler.open("wb") as out:
        try:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        except OSError as err:
            assert err.errno == errno.ENOSPC
    return filler


#: The timeout of the full-disk test's transfers.
TX_TIMEOUT = 5.0


def test_full_disk_answers_unavailable_goes_not_serving_exits_and_loses_nothing(
    tmp_path: Path, small_disk: Path
) -> None:
    # Short transactions, and banks that end a branch nobody reached within a second of it: the
    # transaction whose first record the full disk refused is known to nobody after the restart
    # (presumed abort), and its participants roll its branches back past its deadline.
    system = fast_recovery(BankSystem(tmp_path)).start()
    coordinator = system.coordinator
    try:
        acked = [system.bank.transfer("alice", "bob", 1, timeout=TX_TIMEOUT) for _ in range(5)]
        assert {r.outcome for r in acked} == {"committed"}
        filler = _fill(small_disk)
        undecided: list[str] = []  # answered "unknown": no outcome may be claimed for them
        message = ""
        for _ in range(500):  # the tail page of the segment still takes a few records
            try:
                result = system.bank.transfer("alice", "bob", 1, timeout=TX_TIMEOUT)
            except XatmError as err:  # Begin refused: the log stopped on an earlier record
                message = f"{err.status.name}: {err.message}"
                break
            if result.outcome != "committed":
                assert result.outcome == "unknown", result
                undecided.append(result.gtrid)
                message = result.detail
                break
            acked.append(result)
        assert message.startswith("UNAVAILABLE: transaction log stopped"), message
        assert "No space left on device (ENOSPC)" in message

        assert _health(coordinator.address) == NOT_SERVING
        status, body = _healthz(coordinator.http)
        assert status == 503 and body["status"] == "log stopped" and "ENOSPC" in body["reason"]
        err = _begin_error(coordinator.address)
        assert err.code() == grpc.StatusCode.UNAVAILABLE and "ENOSPC" in (err.details() or "")
        assert coordinator.wait_exit(60) == EXIT_LOG_STOPPED
        text = coordinator.log_path.read_text()
        assert text.count("transaction log stopped") == 1, "the cause is logged once"
        assert "internal error" not in text

        _assert_refused(coordinator, "cannot start: cannot open", "ENOSPC")  # still full

        filler.unlink()
        coordinator.start()
        for result in acked:
            assert system.wait_status(result.gtrid, S.COMMITTED).status == S.COMMITTED
        for gtrid in undecided:  # presumed abort: its decision never became durable
            try:
                system.wait_status(gtrid, S.ROLLEDBACK)
            except grpc.RpcError as err:  # or not even its begin did
                assert err.code() == grpc.StatusCode.NOT_FOUND
        assert system.balance("bank-a", "alice") == 1000 - len(acked)
        assert system.balance("bank-b", "bob") == 1000 + len(acked)
        eventually(
            "a transfer to commit once the branches nobody decided are rolled back",
            lambda: True if system.bank.transfer("alice", "bob", 1, timeout=TX_TIMEOUT).committed else None,
            60,
            interval=0.5,
        )
    finally:
        system.stop()


def _prepared_in_bank_b(system: BankSystem, n: int) -> list[tuple[str, str]]:
    """``n`` transfers acknowledged TX_OK whose bank-b branch stays prepared (its commit fails).

    Each pays a different account, which its prepared branch keeps locked."""
    results = [system.bank.transfer("alice", f"bob{i}", 10) for i in range(n)]
    assert {r.outcome for r in results} == {"committed"}
    pending = []
    for result in results:
        info = system.status(result.gtrid)
        assert info.status == S.COMMITTING
        (branch,) = [b for b in info.branches if b.rm_id == "bank-b"]
        pending.append((result.gtrid, branch.bqual))
    return pending


def _bank_b_prepared(system: BankSystem) -> set[str]:
    branches = system.stores["bank-b"].leftovers().get("branches", [])
    return {gtrid for gtrid, _, state in branches if state == "prepared"}  # type: ignore[attr-defined]


BANK_B_COMMIT_FAILS = {"bank-b": {"XATM_FAILPOINTS": "participant.commit=error(UNAVAILABLE)"}}
#: Commit answers TX_OK soon after the decision is durable, with phase two still retrying.
QUICK_ANSWER = {"XATM_COMMIT_WAIT": "0.3"}


def test_log_deleted_while_running_stops_decisions_and_start_refuses(tmp_path: Path) -> None:
    system, pending = _without_log(tmp_path, 3)
    coordinator = system.coordinator
    try:
        _wait_health(coordinator.address, NOT_SERVING)  # noticed with nothing written
        status, body = _healthz(coordinator.http)
        assert status == 503 and "was deleted" in body["reason"]
        err = _begin_error(coordinator.address)
        assert err.code() == grpc.StatusCode.UNAVAILABLE
        assert "transaction log stopped" in (err.details() or "")
        gtrid, bqual = pending[0]
        with pytest.raises(grpc.RpcError) as asked:
            _query_outcome(coordinator.address, gtrid, bqual)
        assert asked.value.code() == grpc.StatusCode.UNAVAILABLE  # never a presumed abort
        assert coordinator.wait_exit(60) == EXIT_LOG_STOPPED

        _assert_refused(coordinator, "write-ahead log is missing", "docs/operations.md")
        assert _bank_b_prepared(system) == {g for g, _ in pending}, "the prepared branches wait"

        # The documented way forward: put the files back.
        shutil.copytree(tmp_path / "wal-backup", tmp_path / "coordinator" / "wal", dirs_exist_ok=True)
        coordinator.start()
        system.banks["bank-b"].stop()
        system.banks["bank-b"].start()  # its commits work again
        for gtrid, _ in pending:
            system.wait_status(gtrid, S.COMMITTED)
        assert [system.balance("bank-b", f"bob{i}") for i in range(len(pending))] == [10] * len(pending)
        assert not _bank_b_prepared(system)
    finally:
        system.stop()


def test_log_deleted_then_kill9_refuses_start_and_never_presumes_abort(tmp_path: Path) -> None:
    system, pending = _without_log(tmp_path, 2)
    try:
        system.coordinator.kill()
        _assert_refused(system.coordinator, "write-ahead log is missing")
        assert _bank_b_prepared(system) == {g for g, _ in pending}, "never rolled back"
        assert system.balance("bank-a", "alice") == 1000 - 10 * len(pending)
    finally:
        system.stop()


@pytest.mark.parametrize(
    ("argv", "exit_code"),
    [(["xatm", "coordinator", "--repair-wal", "--data-dir"], 1), (["xactl", "wal", "dump"], 2)],
    ids=["repair-wal", "wal-dump"],
)
def test_offline_tools_on_a_missing_log_say_so_in_one_line(
    tmp_path: Path, argv: list[str], exit_code: int
) -> None:
    tool = Path(sys.executable).parent / argv[0]
    done = subprocess.run([str(tool), *argv[1:], str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == exit_code
    assert "no write-ahead log" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
