"""Every way the transaction log can stop or vanish: the coordinator says so and loses nothing.

A write or fsync that fails (a full disk), a segment or lock file deleted or replaced under a
running coordinator, a checkpoint failing part way, a log missing at start-up. Each must end in
UNAVAILABLE answers, NOT_SERVING health and an exit or refusal with one line, never in an
internal error or a presumed abort of an acknowledged commit.
"""

from __future__ import annotations

import asyncio
import errno
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from tests.bank_system import BankSystem
from xatm.coordinator.app import EXIT_LOG_STOPPED
from xatm.coordinator.engine.core import Engine
from xatm.coordinator.protocol import Transaction
from xatm.coordinator.settings import Settings
from xatm.coordinator.tools.procs import Proc
from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.file import FileWal, read_records, repair
from xatm.coordinator.txlog.interface import LogMissing, LogStopped
from xatm.participant import failpoints
from xatm.participant.api.v1 import coordinator_pb2, coordinator_pb2_grpc, xa_pb2
from xatm.participant.errors import Status, XatmError
from xatm.participant.xa import FORMAT_ID, Phase, XaCode, Xid
from xatm.participant.xa import TxStatus as S

NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def rec(i: int) -> wal_pb2.WalRecord:
    return wal_pb2.WalRecord(gtrid=f"n1.{i:04x}", status=wal_pb2.StatusRecord(status=1))


def _segments(data_dir: Path) -> list[Path]:
    return sorted((data_dir / "wal").glob("*.wal"))


# --- the log alone, in process ---


async def _open(data_dir: Path, n: int = 3, **kwargs: object) -> FileWal:
    wal = FileWal(data_dir, failpoint=failpoints.hit, **kwargs)  # type: ignore[arg-type]
    await wal.open()
    for i in range(n):
        await wal.append(rec(i), force=True)
    return wal


def _replace_segment(data_dir: Path) -> None:
    segment = _segments(data_dir)[-1]
    copy = segment.with_name("copy")
    shutil.copy2(segment, copy)
    os.replace(copy, segment)


@pytest.mark.parametrize(
    ("vanish", "said"),
    [
        (lambda d: _segments(d)[-1].unlink(), "was deleted"),
        (_replace_segment, "was replaced"),
        (lambda d: shutil.rmtree(d), "was deleted"),
        (lambda d: (d / "LOCK").unlink(), "LOCK was deleted"),
    ],
    ids=["segment-deleted", "segment-replaced", "data-dir-removed", "lock-deleted"],
)
def test_a_vanished_log_stops_it_even_while_idle(
    tmp_path: Path, vanish: Callable[[Path], object], said: str
) -> None:
    async def go() -> None:
        wal = await _open(tmp_path)
        vanish(tmp_path)
        stopped = await asyncio.wait_for(wal.watch(0.05), 30)  # nothing is written meanwhile
        assert isinstance(stopped, LogStopped) and said in stopped.reason
        assert stopped.status == Status.UNAVAILABLE
        with pytest.raises(LogStopped, match=said):
            await wal.append(rec(9), force=True)
        await wal.close()

    asyncio.run(go())


def test_a_segment_deleted_under_a_writer_fails_the_next_append(tmp_path: Path) -> None:
    async def go() -> None:
        wal = await _open(tmp_path)
        _segments(tmp_path)[-1].unlink()
        with pytest.raises(LogStopped, match="was deleted"):
            await wal.append(rec(9), force=True)
        await wal.close()

    asyncio.run(go())


def test_a_segment_deleted_during_a_forced_write_acknowledges_nothing(tmp_path: Path) -> None:
    """Deleted after the batch's first look but before its fsync: the records went with the file."""

    async def go() -> None:
        wal = await _open(tmp_path)
        failpoints.arm("wal.before_fsync=1*sleep(400)")
        pending = asyncio.ensure_future(wal.append(rec(9), force=True))
        await asyncio.sleep(0.15)  # the writer has written the record and sleeps before its fsync
        _segments(tmp_path)[-1].unlink()
        with pytest.raises(LogStopped, match="was deleted"):
            await pending
        await wal.close()

    asyncio.run(go())


def test_a_missing_log_refuses_to_open(tmp_path: Path) -> None:
    async def go() -> None:
        with pytest.raises(LogMissing, match="has held a log"):  # the data dir says a log existed
            await FileWal(tmp_path, must_exist=True).open()
        assert not (tmp_path / "wal").exists(), "a refused start changes nothing"
        wal = await _open(tmp_path, segment_bytes=1024)
        for i in range(3, 200):
            await wal.append(rec(i))
        await wal.close()
        segments = _segments(tmp_path)
        assert len(segments) >= 3
        segments[1].unlink()
        with pytest.raises(LogMissing, match="are missing"):
            await FileWal(tmp_path).open()
        segments[0].unlink()
        with pytest.raises(LogMissing, match="beginning of the log is missing"):
            await FileWal(tmp_path).open()
        for segment in segments[2:]:
            segment.unlink()
        with pytest.raises(LogMissing, match="has held a log"):
            await FileWal(tmp_path, must_exist=True).open()

    asyncio.run(go())


def test_newest_segments_deleted_while_stopped_refuse_to_open_until_repaired(tmp_path: Path) -> None:
    async def go() -> tuple[list[wal_pb2.WalRecord], list[wal_pb2.WalRecord]]:
        wal = await _open(tmp_path, n=200, segment_bytes=1024)
        await wal.close()
        segments = _segments(tmp_path)
        kept = [record for path, _, record in read_records(tmp_path) if path in segments[:-2]]
        for segment in segments[-2:]:
            segment.unlink()
        with pytest.raises(LogMissing, match=f"the log had reached segment {len(segments)}"):
            await FileWal(tmp_path).open()
        report = repair(tmp_path)  # the operator accepts the loss
        assert f"the log now ends at segment {len(segments) - 2}" in str(report)
        wal = FileWal(tmp_path)
        records = await wal.open()
        await wal.close()
        return records, kept

    records, kept = asyncio.run(go())
    assert records == kept


@pytest.mark.parametrize("failing", [1, 2, 3, 4])
def test_a_checkpoint_failing_midway_keeps_every_decision(tmp_path: Path, monkeypatch, failing: int) -> None:
    """Whichever fsync of the checkpoint fails, the log stops and still holds every record."""
    real_fsync = os.fsync
    calls = 0

    def fsync(fd: int) -> None:
        nonlocal calls
        calls += 1
        if calls == failing:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real_fsync(fd)

    async def go() -> None:
        nonlocal calls
        wal = await _open(tmp_path, n=5)
        await wal.append(rec(5))  # unforced: the checkpoint syncs it first
        monkeypatch.setattr(os, "fsync", fsync)
        with pytest.raises(LogStopped, match=r"Input/output error \(EIO\)"):
            await wal.checkpoint([rec(i) for i in range(6)])
        monkeypatch.setattr(os, "fsync", real_fsync)
        with pytest.raises(LogStopped, match="EIO"):
            await wal.append(rec(9))
        await wal.close()

    asyncio.run(go())
    wal = FileWal(tmp_path)
    records = asyncio.run(wal.open())
    asyncio.run(wal.close())
    assert {r.gtrid for r in records} >= {rec(i).gtrid for i in range(5)}


class _YesPeers:
    """Participants that vote yes to everything."""

    async def call(
        self, endpoint: str, phase: Phase, xid: Xid, *, timeout: float, savepoint_id: str = ""
    ) -> tuple[XaCode, str]:
        return XaCode.XA_OK, ""

    async def recover(self, endpoint: str, format_id: int, *, timeout: float) -> tuple[list[Xid], str]:
        return [], ""

    async def close(self) -> None:
        pass


async def _two_branches(settings: Settings, peers: _YesPeers) -> tuple[Engine, Transaction]:
    """A started engine on a FileWal in ``settings.data_dir`` and a transaction with branches b1, b2."""
    engine = Engine(settings, FileWal(settings.data_dir, failpoint=failpoints.hit), "n1", peers=peers)  # type: ignore[arg-type]
    await engine.start()
    tx = await engine.begin()
    for bqual in ("b1", "b2"):
        await engine.enlist(tx.gtrid, bqual, "rm", "fake:1")
    return engine, tx


def test_a_failed_decision_write_answers_unavailable_not_an_outcome(tmp_path: Path) -> None:
    async def go() -> None:
        settings = Settings(data_dir=tmp_path, node_id="n1", commit_wait=30.0, call_timeout=30.0)
        engine, tx = await _two_branches(settings, _YesPeers())
        try:
            failpoints.arm("wal.before_fsync=error(DATA_LOSS)")  # the decision's fsync
            with pytest.raises(LogStopped, match="transaction log stopped") as err:
                await asyncio.wait_for(engine.commit(tx.gtrid), 20)
            assert err.value.status == Status.UNAVAILABLE
            assert tx.decision is None and tx.status == S.PREPARED  # claims nothing
            with pytest.raises(LogStopped):
                await engine.begin()
            with pytest.raises(LogStopped):
                engine.query_outcome(Xid(tx.gtrid, "b1"))
        finally:
            failpoints.disarm()
            await engine.stop()

    asyncio.run(go())


class _CommitFailsPeers(_YesPeers):
    """Vote yes; every commit of branch b2 fails, so its phase-two driver keeps retrying."""

    async def call(
        self, endpoint: str, phase: Phase, xid: Xid, *, timeout: float, savepoint_id: str = ""
    ) -> tuple[XaCode, str]:
        if phase == Phase.COMMIT and xid.bqual == "b2":
            return XaCode.XAER_RMFAIL, "down"
        return XaCode.XA_OK, ""


def test_phase_two_drivers_end_when_the_log_stops(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    async def go() -> None:
        settings = Settings(
            data_dir=tmp_path, node_id="n1", commit_wait=0.1, retry_initial=0.01, retry_max=0.05
        )
        engine, tx = await _two_branches(settings, _CommitFailsPeers())
        try:
            await engine.commit(tx.gtrid)
            assert tx.status == S.COMMITTING and engine._drivers  # b2 is being retried
            _segments(tmp_path)[-1].unlink()  # its next answer cannot be recorded
            for _ in range(1000):
                if not engine._drivers:
                    break
                await asyncio.sleep(0.01)
            assert not engine._drivers, "a driver kept retrying on a stopped log"
        finally:
            await engine.stop()

    asyncio.run(go())
    assert sum("transaction log stopped" in r.getMessage() for r in caplog.records) == 0


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
        for segment in _segments(data):
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


def test_full_disk_answers_unavailable_goes_not_serving_exits_and_loses_nothing(
    tmp_path: Path, small_disk: Path
) -> None:
    system = BankSystem(tmp_path).start()
    coordinator = system.coordinator
    try:
        acked = [system.bank.transfer("alice", "bob", 1) for _ in range(5)]
        assert {r.outcome for r in acked} == {"committed"}
        filler = _fill(small_disk)
        undecided: list[str] = []  # answered "unknown": no outcome may be claimed for them
        message = ""
        for _ in range(500):  # the tail page of the segment still takes a few records
            try:
                result = system.bank.transfer("alice", "bob", 1)
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
        assert system.bank.transfer("alice", "bob", 1).outcome == "committed"
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
    "argv",
    [["xatm", "coordinator", "--repair-wal", "--data-dir"], ["xactl", "wal", "dump"]],
    ids=["repair-wal", "wal-dump"],
)
def test_offline_tools_on_a_missing_log_say_so_in_one_line(tmp_path: Path, argv: list[str]) -> None:
    tool = Path(sys.executable).parent / argv[0]
    done = subprocess.run([str(tool), *argv[1:], str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "no write-ahead log" in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr
