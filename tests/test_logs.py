"""Coordinator logs: one line per event, the gtrid as a field of its own in JSON mode
(``--log-json``), never anything resembling a credential.

The end-to-end tests read the log file of a real coordinator after a transfer whose commit a
participant refuses once (a retried phase two: several events for one transaction) and a
transfer refused at prepare.
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from tests.bank_system import BankSystem
from xatm.participant.runtime import logs
from xatm.participant.xa import TxStatus, Xid, new_bqual, new_gtrid

TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) [\w.]+: \S"
)
TOKENISH = re.compile(r"(?i)bearer\s+\S|authorization|\btoken\s*[=:]|eyJ[\w-]{8,}\.")
LEVELS = {"debug", "info", "warning", "error", "critical"}


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
        assert [e["message"] for e in about].count(f"{gtrid} {status.label}") == 1
    committed = next(g for g, s in ends.items() if s == TxStatus.COMMITTED)
    assert any(e["level"] == "warning" and e.get("gtrid") == committed for e in entries), "no retry line"
    misattributed = [e for e in entries if "gtrid" in e and e["gtrid"] not in e["message"]]
    assert misattributed == []
    assert not TOKENISH.search("\n".join(lines))


def test_text_logs_are_one_line_per_event(tmp_path: Path) -> None:
    lines, ends = _run_transfers(tmp_path)
    assert [line for line in lines if not TEXT_LINE.match(line)] == []
    for gtrid, status in ends.items():
        assert sum(line.endswith(f": {gtrid} {status.label}") for line in lines) == 1
    assert not TOKENISH.search("\n".join(lines))


# ------------------------------------------------------------ the formatters, in-process


@pytest.fixture
def log_stream() -> Iterator[io.StringIO]:
    """What logs.setup writes, with pytest's own handlers put back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield io.StringIO()
    root.handlers[:] = handlers
    root.setLevel(level)


def _setup(stream: io.StringIO, json_lines: bool) -> logging.Logger:
    logs.setup(json_lines=json_lines)
    handler = logging.getLogger().handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(stream)
    return logging.getLogger("xatm.coordinator")


@pytest.mark.parametrize("json_lines", [False, True])
def test_a_traceback_stays_on_its_event_line(log_stream: io.StringIO, json_lines: bool) -> None:
    log = _setup(log_stream, json_lines)
    gtrid = new_gtrid("n0")
    try:
        raise ValueError("a reason\nspanning lines")
    except ValueError:
        log.exception("%s branch %s: commit failed", gtrid, new_bqual())
    [line] = log_stream.getvalue().splitlines()
    if json_lines:
        entry = json.loads(line)
        assert entry["gtrid"] == gtrid and entry["level"] == "error"
        assert "ValueError: a reason\nspanning lines" in entry["error"]
    else:
        assert TEXT_LINE.match(line) and "Traceback" in line and "ValueError" in line


def test_transaction_fields_come_from_extra_an_xid_or_a_gtrid_argument(log_stream: io.StringIO) -> None:
    log = _setup(log_stream, json_lines=True)
    gtrid, other, bqual = new_gtrid("node-1"), new_gtrid("node-2"), new_bqual()
    log.info("%s %s", gtrid, "Committed")
    log.info("recovery: %s %s from %s", "recommit", gtrid, "Committing")
    log.warning("recovery: %s %s at %s", "recommit", Xid(gtrid, bqual), "127.0.0.1:7101")
    log.info("%s timed out", other, extra={"gtrid": gtrid, "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"})
    log.info("coordinator %s serving gRPC on %s", "n1a2b3c4d", "127.0.0.1:7070")
    log.info("%s 1.%s", "not-a-gtrid", "abc")
    fields = [
        {k: v for k, v in json.loads(line).items() if k in ("gtrid", "bqual", "trace_id")}
        for line in log_stream.getvalue().splitlines()
    ]
    assert fields == [
        {"gtrid": gtrid},
        {"gtrid": gtrid},
        {"gtrid": gtrid, "bqual": bqual},
        {"gtrid": gtrid, "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736"},
        {},
        {},
    ]
