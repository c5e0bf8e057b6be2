"""Logging set-up: one line per event, as text or (``--log-json``) one JSON object per line.

Records about a transaction carry its ``gtrid`` (and ``bqual``, ``trace_id`` when known) as
fields of their own, so a log pipeline can follow one transaction without parsing messages.
A call may pass them with ``extra=``; otherwise they are taken from the first argument that is
a gtrid (``<node>.<hex>``, the shape ``new_gtrid`` makes) or an ``Xid``. That is the engine's
convention, ``log.info("%s %s", tx.gtrid, ...)``, which thus needs no ``extra=``.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import time

from xatm.participant.xa import Xid

__all__ = ["setup"]

#: A node id as the coordinator accepts it, a dot, the hex of time and randomness.
_GTRID = re.compile(r"^[A-Za-z0-9_-]{1,24}\.[0-9a-f]{16,}$")
_FIELDS = ("gtrid", "bqual", "trace_id")


class _TransactionFields(logging.Filter):
    """Fills ``record.gtrid``/``record.bqual`` from the arguments; ``extra=`` always wins."""

    def filter(self, record: logging.LogRecord) -> bool:
        if hasattr(record, "gtrid") or not isinstance(record.args, tuple):
            return True
        for arg in record.args:
            if isinstance(arg, Xid):
                record.gtrid = arg.gtrid
                if not hasattr(record, "bqual"):
                    record.bqual = arg.bqual
                break
            if isinstance(arg, str) and _GTRID.match(arg):
                record.gtrid = arg
                break
        return True


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key in _FIELDS:
            if hasattr(record, key):
                entry[key] = getattr(record, key)
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class _OneLineFormatter(logging.Formatter):
    """Text whose multi-line parts (tracebacks, reasons quoted from peers) stay on the event's
    line, escaped, so that a line is always a whole event."""

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\r", "\\r").replace("\n", "\\n")


def setup(*, json_lines: bool = False, level: int = logging.INFO) -> None:
    """Send every logger's records to stderr, one line per event."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_TransactionFields())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
