"""``xactl wal dump`` of a checkpoint's completed transactions, kept as their own records.

A checkpoint writes each completed transaction as a ``completed`` record whose ``records`` field
holds the transaction's log records as bytes. The JSON dump failed on them (bytes are not JSON)
and the table printed them as a Python bytes literal: both now show the records inside, with the
same words as every other record, and go on past kept bytes they cannot read.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from xatm.coordinator.journal import RecordFactory as R
from xatm.coordinator.journal import served
from xatm.coordinator.protocol import Branch, Transaction
from xatm.coordinator.txlog._proto.wal_pb2 import WalRecord
from xatm.coordinator.txlog.file import FileWal, dump_text
from xatm.coordinator.txlog.kept import kept_record
from xatm.participant.xa import BranchStatus, Decision, Phase, TxStatus, XaCode

NOW = 1_700_000_000.25


def _completed(gtrid: str, kept: bytes | None = None) -> WalRecord:
    """The checkpoint record of a committed two-branch transaction: its decision, both commit
    answers and its end, as replay keeps them (or ``kept`` instead)."""
    tx = Transaction(gtrid=gtrid, timeout_ms=5000, begun_at=NOW)
    for bqual in ("b1", "b2"):
        tx.branches[bqual] = Branch(bqual, f"rm-{bqual}", "127.0.0.1:7001", status=BranchStatus.PREPARED)
    tx.status, tx.decision = TxStatus.COMMITTING, Decision.COMMIT
    records = [R.decision(tx, NOW)]
    for branch in tx.branches.values():
        branch.status = BranchStatus.COMMITTED
        records.append(R.branch_result(tx, branch, Phase.COMMIT, XaCode.XA_OK, "", NOW))
    tx.status = TxStatus.COMMITTED
    records.append(R.end(tx, NOW))
    if kept is None:
        kept = b"".join(kept_record(r.SerializeToString()) for r in records)
    where = served((("rm-b1", "127.0.0.1:7001"), ("rm-b2", "127.0.0.1:7001")), {})
    return WalRecord.FromString(R.completed(gtrid, kept, int(TxStatus.COMMITTED), NOW, where, NOW))


def _write(data_dir: Path, records: list[WalRecord]) -> None:
    async def run() -> None:
        wal = FileWal(data_dir)
        await wal.open()
        for record in records:
            await wal.append(record, force=True)
        await wal.close()

    asyncio.run(run())


def test_a_completed_transaction_dumps_as_its_records(tmp_path: Path) -> None:
    _write(tmp_path, [_completed("node1.aa")])
    (row,) = [json.loads(line) for line in dump_text(tmp_path, "json").splitlines()]
    done = row["completed"]
    assert (done["status"], done["begunAt"]) == ("Committed", "2023-11-14T22:13:20.250Z")
    kinds = [next(k for k in record if k != "time") for record in done["records"]]
    assert kinds == ["decision", "branchResult", "branchResult", "end"]
    answers = [r["branchResult"] for r in done["records"][1:3]]
    assert [(a["bqual"], a["phase"], a["code"], a["status"]) for a in answers] == [
        ("b1", "commit", "XA_OK", "Committed"),
        ("b2", "commit", "XA_OK", "Committed"),
    ]
    assert done["served"] == [
        {"rmId": "rm-b1", "endpoint": "127.0.0.1:7001"},
        {"rmId": "rm-b2", "endpoint": "127.0.0.1:7001"},
    ]
    _, line = dump_text(tmp_path).splitlines()
    assert " completed " in line and "b'" not in line
    assert line.count("branch_result={bqual=") == 2 and "code=XA_OK" in line
    assert "end={status=Committed}" in line


def test_kept_records_that_cannot_be_read_are_said_and_the_dump_goes_on(tmp_path: Path) -> None:
    _write(tmp_path, [_completed("node1.aa", kept=b"\x40\x00\x00\x00short"), _completed("node1.bb")])
    first, second = [json.loads(line) for line in dump_text(tmp_path, "json").splitlines()]
    assert first["completed"]["records"].startswith("unreadable kept records (9 bytes): ")
    assert len(second["completed"]["records"]) == 4
    table = dump_text(tmp_path).splitlines()
    assert "records=unreadable kept records (9 bytes)" in table[1] and "branch_result=" in table[2]


def test_times_no_date_can_say_are_printed_as_numbers(tmp_path: Path) -> None:
    odd = _completed("node1.aa")
    odd.completed.begun_at = float("nan")
    far = _completed("node1.bb")
    far.completed.begun_at = 1e300
    far.time.seconds, far.time.nanos = 253_402_300_800, 0  # the year 10000
    _write(tmp_path, [odd, far])
    first, second = [json.loads(line) for line in dump_text(tmp_path, "json").splitlines()]
    assert (first["completed"]["begunAt"], second["completed"]["begunAt"]) == ("nans", "1e+300s")
    assert second["time"] == "253402300800.000000000s"
    assert "begun_at=nans" in dump_text(tmp_path).splitlines()[1]
