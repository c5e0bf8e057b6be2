"""Coordinator logs: one line per event, the gtrid as a field of its own in JSON mode
(``--log-json``), never anything resembling a credential.

These tests read the log file of a real coordinator after a transfer whose commit a participant
refuses once (a retried phase two: several events for one transaction) and a transfer refused at
prepare. The formatters alone are checked in tests/unit/test_logs.py.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from pathlib import Path

import pytest

from tests.bank_system import BankSystem
from tests.logs_support import TEXT_LINE
from xatm.participant.xa import TxStatus

TOKENISH = re.compile(r"(?i)bearer\s+\S|authorization|\btoken\s*[=:]|eyJ[\w-]{8,}\.")
LEVELS = {"debug", "info", "warning", "error", "critical"}
#: How many lines say a transaction ended, by its final status: a commit is routine (DEBUG, not
#: shown by default), a rollback is news.
_END_LINES = {TxStatus.COMMITTED: 0, TxStatus.ROLLEDBACK: 1}


def _run_transfers(root: Path, *flags: str) -> tuple[list[str], dict[str, TxStatus]]:
    """The coordinator's log lines, and the final status of each transaction run."""
    system = BankSystem(root)
    system.coordinator.argv += list(flags)
    system.start(bank_env={"bank-b": {"XATM_FAILPOINTS": "participant.commit=1*error(UNAVAILABLE)"}})
    try:
        assert system.bank is not None
        ends = {
            system.bank.transfer("alice", "bob", 10).gtrid: TxStatus.COMMITTED,
            system.bank.transfer("alice", "bob", 1_000_000).gtrid: TxStatus.ROLLEDBACK,
        }
        for gtrid, status in ends.items():
            system.wait_status(gtrid, status)
    finally:
        system.stop()
    lines = [line for line in system.coordinator.log_path.read_text().splitlines() if line.strip()]
    return lines, ends


def test_json_logs_are_objects_with_the_gtrid_as_a_field(tmp_path: Path) -> None:
    lines, ends = _run_transfers(tmp_path, "--log-json")
    entries = []
    for line in lines:
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            pytest.fail(f"not a JSON line: {line!r}")
        assert {"time", "level", "message"} <= entry.keys(), line
        assert datetime.fromisoformat(entry["time"]).tzinfo is not None, line
        assert entry["level"] in LEVELS, line
        entries.append(entry)
    assert any("serving gRPC" in e["message"] and "gtrid" not in e for e in entries)
    for gtrid, status in ends.items():
        about = [e for e in entries if gtrid in e["message"]]
        assert [e for e in about if e.get("gtrid") != gtrid] == [], f"lines about {gtrid} lack its field"
        assert [e["message"] for e in about].count(f"{gtrid} {status.label}") == _END_LINES[status]
    committed = next(g for g, s in ends.items() if s == TxStatus.COMMITTED)
    assert any(e["level"] == "warning" and e.get("gtrid") == committed for e in entries), "no retry line"
    misattributed = [e for e in entries if "gtrid" in e and e["gtrid"] not in e["message"]]
    assert misattributed == []
    assert not TOKENISH.search("\n".join(lines))


def test_text_logs_are_one_line_per_event(tmp_path: Path) -> None:
    lines, ends = _run_transfers(tmp_path)
    assert [line for line in lines if not TEXT_LINE.match(line)] == []
    for gtrid, status in ends.items():
        assert sum(line.endswith(f": {gtrid} {status.label}") for line in lines) == _END_LINES[status]
    assert not TOKENISH.search("\n".join(lines))
