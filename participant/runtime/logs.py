"""Logging set-up: one line per event, as text or (``--log-json``) one JSON object per line.

Records about a transaction carry its ``gtrid`` (and ``bqual``, ``trace_id`` when known) as
fields of their own, so a log pipeline can follow one transaction without parsing messages.
A call may pass them with ``extra=``; otherwise they are taken from the first argument that is
a gtrid (``<node>.<hex>``, the shape ``new_gtrid`` makes) or an ``Xid``. That is the engine's
convention, ``log.info("%s %s", tx.gtrid, ...)``, which thus needs no ``extra=``.

Everything the process would otherwise print by itself goes through the same format: Python
warnings, exceptions that end a thread or that nobody could raise (``sys.unraisablehook``),
and the event loop's unhandled errors. A client that drops or resets its connection is normal
on a network port: it costs one debug record, never a warning.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
import threading
import time
from typing import Any

from xatm.participant.xa import Xid

__all__ = ["quiet_disconnects", "setup"]

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


#: What a peer that went away raises into a server's sockets.
_DISCONNECTS = (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)
# asyncio's own words for writes to a connection its peer already reset.
_LOST_WRITES = ("socket.send() raised exception.",)


class _ClientDisconnects(logging.Filter):
    """A record about a client that went away becomes a debug record (dropped below debug)."""

    def filter(self, record: logging.LogRecord) -> bool:
        error = record.exc_info[1] if record.exc_info else None
        if isinstance(error, _DISCONNECTS) or (record.name == "asyncio" and record.msg in _LOST_WRITES):
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            record.exc_info = record.exc_text = None
            return logging.getLogger().isEnabledFor(logging.DEBUG)
        return True


def quiet_disconnects(loop: asyncio.AbstractEventLoop) -> None:
    """``loop``'s unhandled errors as log records: a client's disconnect one debug line, the rest
    errors with their traceback, in the configured format."""
    log = logging.getLogger("asyncio")

    def handle(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        error = context.get("exception")
        message = context.get("message", "unhandled error in the event loop")
        if isinstance(error, _DISCONNECTS):
            log.debug("a client went away: %s (%s)", message, error)
        else:
            log.error("%s", message, exc_info=error)

    loop.set_exception_handler(handle)


def _thread_ended(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit:
        return
    name = args.thread.name if args.thread else "?"
    logging.getLogger("xatm").error("thread %s ended by an error", name, exc_info=args.exc_value)


def _unraisable(args: Any) -> None:
    message = args.err_msg or "Exception ignored in"
    logging.getLogger("xatm").error("%s: %r", message, args.object, exc_info=args.exc_value)


def setup(*, json_lines: bool = False, level: int = logging.INFO) -> None:
    """Send every logger's records to stderr, one line per event; warnings and unhandled errors
    of threads and finalizers become records too."""
    handler = logging.StreamHandler(sys.stderr)
    if json_lines:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(_OneLineFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(_TransactionFields())
    handler.addFilter(_ClientDisconnects())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.captureWarnings(True)
    threading.excepthook = _thread_ended
    sys.unraisablehook = _unraisable
