"""Replay of the records the engine writes now, and of logs written before the decision carried
the whole transaction."""

from __future__ import annotations

from xatm.coordinator import protocol as sm
from xatm.coordinator.journal import RecordFactory as R
from xatm.coordinator.journal import replay
from xatm.coordinator.txlog._proto import wal_pb2
from xatm.participant.xa import BranchStatus as B
from xatm.participant.xa import Decision
from xatm.participant.xa import TxStatus as S


def _prepared() -> sm.Transaction:
    tx = sm.Transaction(gtrid="n1.abc", timeout_ms=4000, status=S.PREPARED)
    for i in range(2):
        tx.branches[f"b{i}"] = sm.Branch(f"b{i}", f"rm{i}", f"127.0.0.1:{9000 + i}", B.PREPARED)
    return tx


def test_the_decision_record_alone_rebuilds_the_transaction() -> None:
    tx = _prepared()
    rebuilt = replay([R.decision(tx, 5.0)])["n1.abc"]
    assert (rebuilt.status, rebuilt.decision, rebuilt.timeout_ms) == (S.COMMITTING, Decision.COMMIT, 4000)
    assert {b.bqual: (b.rm_id, b.endpoint, b.status) for b in rebuilt.branches.values()} == {
        "b0": ("rm0", "127.0.0.1:9000", B.PREPARED),
        "b1": ("rm1", "127.0.0.1:9001", B.PREPARED),
    }
    assert tx.status == S.PREPARED  # the record says Committing; the transaction is left as it was


def test_a_log_written_with_begin_and_enlist_records_still_replays() -> None:
    records = [
        wal_pb2.WalRecord(gtrid="n1.old", begin=wal_pb2.BeginRecord(timeout_ms=3000)),
        wal_pb2.WalRecord(
            gtrid="n1.old", enlist=wal_pb2.EnlistRecord(bqual="b0", rm_id="rm0", endpoint="h:1")
        ),
        wal_pb2.WalRecord(
            gtrid="n1.old", enlist=wal_pb2.EnlistRecord(bqual="b1", rm_id="rm1", endpoint="h:2")
        ),
        wal_pb2.WalRecord(gtrid="n1.old", decision=wal_pb2.DecisionRecord(commit=True)),
    ]
    old = replay(records)["n1.old"]
    assert (old.status, old.decision, old.timeout_ms, list(old.branches)) == (
        S.COMMITTING,
        Decision.COMMIT,
        3000,
        ["b0", "b1"],
    )
