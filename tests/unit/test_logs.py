"""The log formatters in process: one line per event, the gtrid as a field of its own in JSON
mode (``--log-json``).

A real coordinator's log file is read in tests/system/test_logs.py.
"""

from __future__ import annotations

import io
import json
import logging

import pytest

from tests.logs_support import TEXT_LINE
from xatm.participant.runtime import logs
from xatm.participant.xa import Xid, new_bqual, new_gtrid

# ------------------------------------------------------------ the formatters, in-process


@pytest.fixture
def log_stream() -> io.StringIO:
    """What logs.setup writes (tests/conftest.py puts pytest's own handlers back afterwards)."""
    return io.StringIO()


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
