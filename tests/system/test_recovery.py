"""Recovery and the log, across real processes: damage, torn tails, wal dump, heuristics.

The orphan rollback of the recovery scanner is checked in process in tests/unit/test_recovery.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest

from tests.bank_system import BankSystem
from tests.wal_support import segments
from xatm.coordinator.txlog.file import read_records
from xatm.coordinator.txlog.interface import LogCorrupt
from xatm.participant import ParticipantStub, TransactionManager
from xatm.participant.api.v1 import admin_pb2, admin_pb2_grpc, coordinator_pb2, coordinator_pb2_grpc
from xatm.participant.stores.sqlite import SqliteRM
from xatm.participant.xa import BranchStatus, XaCode, Xid
from xatm.participant.xa import TxStatus as S

BIN = Path(sys.executable).parent


def _xatm(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "xatm"), *argv], capture_output=True, text=True, timeout=timeout)


def test_damage_mid_log_refuses_start_and_repair_recovers(tmp_path: Path) -> None:
    system = BankSystem(tmp_path).start()
    gtrids = [system.bank.transfer("alice", "bob", 10).gtrid for _ in range(5)]
    system.stop()
    data = tmp_path / "coordinator"
    segment = segments(data)[-1]
    raw = bytearray(segment.read_bytes())
    middle = len(raw) // 3
    raw[middle] ^= 0xFF
    segment.write_bytes(bytes(raw))

    refused = _xatm(
        "coordinator", "--data-dir", str(data), "--listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"
    )
    assert refused.returncode == 1
    assert segment.name in refused.stderr and "offset" in refused.stderr and "--repair-wal" in refused.stderr
    assert "Traceback" not in refused.stderr
    assert raw == bytearray(segment.read_bytes()), "a refused start-up must change nothing"

    repaired = _xatm("coordinator", "--data-dir", str(data), "--repair-wal")
    assert repaired.returncode == 0, repaired.stderr
    backups = [p for p in (data / "wal").rglob("*") if "backup" in str(p) and p.is_file()]
    assert backups, "repair keeps a copy of what it cut"

    system.coordinator.start()
    try:
        with grpc.insecure_channel(system.coordinator.address) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            first = stub.GetStatus(coordinator_pb2.StatusRequest(gtrid=gtrids[0]), timeout=5)
            assert first.status == S.COMMITTED  # records before the damage survive
    finally:
        system.coordinator.stop()


def test_torn_tail_is_cut_and_reported(tmp_path: Path) -> None:
    system = BankSystem(tmp_path).start()
    try:
        gtrid = system.bank.transfer("alice", "bob", 10).gtrid
        system.coordinator.kill()
        segment = segments(tmp_path / "coordinator")[-1]
        with segment.open("ab") as f:
            f.write(b"\x28\x00\x00\x00\x78\x61\x74\x6d" + b"\x01" * 13)  # a record header with no body
        system.coordinator.start()
        assert system.status(gtrid).status == S.COMMITTED
        assert system.metric("xatm_wal_torn_tail_total") == 1
        # The manager saw its connection drop, so its next transaction is made for the new start.
        assert system.bank.transfer("alice", "bob", 1).committed
    finally:
        system.stop()


def test_wal_dump_shows_rbrollback_and_nota_from_real_scenarios(tmp_path: Path) -> None:
    system = BankSystem(tmp_path).start(
        bank_env={
            "bank-a": {"XATM_FAILPOINTS": "participant.after_commit=crash"},
            "bank-b": {"XATM_FAILPOINTS": "participant.prepare=1*return(XA_RBROLLBACK)"},
        }
    )
    try:
        voted_no = system.bank.transfer("alice", "bob", 10)
        assert voted_no.outcome == "rolledback"
        redriven = system.bank.transfer("alice", "bob", 20)  # bank-a commits, then dies before answering
        system.banks["bank-a"].wait_exit(10)
        system.banks["bank-a"].start(extra_env={"XATM_FAILPOINTS": ""})
        info = system.wait_status(redriven.gtrid, S.COMMITTED)
        codes = {b.rm_id: XaCode(b.last_code) for b in info.branches}
        assert codes["bank-a"] == XaCode.XAER_NOTA  # it had committed; the re-drive finds nothing to do
        assert (system.balance("bank-a", "alice"), system.balance("bank-b", "bob")) == (980, 1020)

        copy = tmp_path / "copy"
        shutil.copytree(tmp_path / "coordinator", copy, ignore=shutil.ignore_patterns("LOCK"))
        dump = subprocess.run(
            [str(BIN / "xactl"), "wal", "dump", str(copy), "--output", "json"], capture_output=True, text=True
        )
        assert dump.returncode == 0, dump.stderr
        records = [json.loads(line) for line in dump.stdout.splitlines() if line.strip()]
        results = [(r["gtrid"], r["branchResult"]["code"]) for r in records if "branchResult" in r]
        assert (voted_no.gtrid, "XA_RBROLLBACK") in results
        assert (redriven.gtrid, "XAER_NOTA") in results
        assert any("decision" in r and r["gtrid"] == redriven.gtrid for r in records)
        table = subprocess.run([str(BIN / "xactl"), "wal", "dump", str(copy)], capture_output=True, text=True)
        assert table.returncode == 0 and "XA_RBROLLBACK" in table.stdout and "XAER_NOTA" in table.stdout
    finally:
        system.stop()


def test_heuristic_outcome_is_kept_until_forgotten(tmp_path: Path) -> None:
    system = BankSystem(tmp_path).start(
        bank_env={"bank-b": {"XATM_FAILPOINTS": "participant.commit=1*return(XA_HEURRB)"}}
    )
    try:
        result = system.bank.transfer("alice", "bob", 10)
        info = system.wait_status(result.gtrid, S.HEURISTICALLY_COMPLETED)
        branches = {b.rm_id: BranchStatus(b.status) for b in info.branches}
        assert branches == {"bank-a": BranchStatus.COMMITTED, "bank-b": BranchStatus.HEURISTICALLY_ROLLEDBACK}
        assert system.metric("xatm_transactions_active", status="HeuristicallyCompleted") == 1
        system.coordinator.stop()
        system.coordinator.start()
        assert system.status(result.gtrid).status == S.HEURISTICALLY_COMPLETED  # kept across restarts
        with grpc.insecure_channel(system.coordinator.address) as channel:
            admin = admin_pb2_grpc.AdminStub(channel)
            reply = admin.Forget(admin_pb2.ForgetRequest(gtrids=[result.gtrid, "nope.1"]), timeout=10)
        assert [(r.gtrid, r.forgotten) for r in reply.results] == [(result.gtrid, True), ("nope.1", False)]
        system.coordinator.stop()
        system.coordinator.start()
        with pytest.raises(grpc.RpcError) as err:
            system.status(result.gtrid)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    finally:
        system.stop()


def test_participant_resolves_its_in_doubt_branches(tmp_path: Path) -> None:
    system = BankSystem(tmp_path, seeds=())
    system.coordinator.start()
    rm = SqliteRM(tmp_path / "store.db", rm_id="store")
    stub = ParticipantStub(rm, coordinator=system.coordinator.address, advertise="127.0.0.1:1")
    tm = TransactionManager(system.coordinator.address)
    try:
        node = (tmp_path / "coordinator" / "NODE_ID").read_text().strip()
        orphan = Xid(f"{node}.0000000000000001aa", "b1")
        foreign = Xid("elsewhere.0001", "b1")
        live_tx = tm.begin()
        live = Xid(live_tx.gtrid, "b2")
        with grpc.insecure_channel(system.coordinator.address) as channel:
            coordinator_pb2_grpc.CoordinatorStub(channel).Enlist(
                coordinator_pb2.EnlistRequest(
                    gtrid=live.gtrid, bqual="b2", rm_id="store", endpoint="127.0.0.1:1"
                ),
                timeout=5,
            )
        for i, xid in enumerate((orphan, foreign, live)):
            rm.start(xid)
            rm.put(xid, f"k{i}", i)
            assert rm.prepare(xid) == XaCode.XA_OK
        counts = stub.resolve_in_doubt()
        assert counts == {
            "commit": 0,
            "rollback": 1,
            "pending": 1,
            "unreachable": 0,
            "foreign": 1,
            "expired": 0,
        }
        assert set(rm.recover()) == {foreign, live}
        assert rm.read_committed("k0") is None
        rm.rollback(foreign)
        live_tx.rollback()
    finally:
        tm.close()
        stub.close()
        rm.close()
        system.coordinator.stop()


def test_checkpoint_keeps_the_log_bounded(tmp_path: Path) -> None:
    env = {"XATM_CHECKPOINT_INTERVAL": "0.5", "XATM_HISTORY_RETENTION": "1"}
    system = BankSystem(tmp_path, coordinator_env=env).start()
    try:
        first = {system.bank.transfer("alice", "bob", 1).gtrid for _ in range(30)}
        data = tmp_path / "coordinator"
        deadline = time.monotonic() + 20
        while True:  # past retention, a checkpoint removes them from memory and from the disk
            try:
                on_disk = {rec.gtrid for _, _, rec in read_records(data)}
            except (FileNotFoundError, LogCorrupt):  # a checkpoint swapped segments mid-read
                on_disk = first
            if not first & on_disk:
                break
            if time.monotonic() > deadline:
                pytest.fail(f"{len(first & on_disk)} transactions past retention are still in the log")
            time.sleep(0.2)
        with pytest.raises(grpc.RpcError) as err:
            system.status(next(iter(first)))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        assert len(list((data / "wal").glob("*.wal"))) <= 2
        assert system.bank.transfer("alice", "bob", 1).committed
        assert system.balance("bank-b", "bob") == 1031
    finally:
        system.stop()
