"""xatm coordinator: drives two-phase commit across participants and logs every decision.

For embedding the coordinator in another program or a test; the names load on first use. The
command line (``xatm coordinator``) is the usual way to run it.

- ``run(settings)``: serve until signalled (an ``int`` exit status); ``Coordinator`` to start and
  stop one in a running event loop. ``Settings``/``resolve`` read flags, ``XATM_*`` and TOML.
- ``Engine``: the transactions, driven by the protocol, logged through a ``TxLog``.
- ``TxLog`` backends: ``FileWal`` (the default) and ``MemoryLog`` (tests); their errors
  ``LogCorrupt``, ``LogMissing``, ``LogLocked``, ``LogStopped``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from xatm.participant.runtime.lazy import lazy_attributes

__all__ = [
    "Coordinator",
    "Engine",
    "FileWal",
    "LogCorrupt",
    "LogLocked",
    "LogMissing",
    "LogStopped",
    "MemoryLog",
    "Settings",
    "TxLog",
    "resolve",
    "run",
]

_HOME = {
    "Coordinator": "app",
    "Engine": "engine",
    "FileWal": "txlog.file",
    "LogCorrupt": "txlog.interface",
    "LogLocked": "txlog.interface",
    "LogMissing": "txlog.interface",
    "LogStopped": "txlog.interface",
    "MemoryLog": "txlog.memory",
    "Settings": "settings",
    "TxLog": "txlog.interface",
    "resolve": "settings",
    "run": "app",
}

if TYPE_CHECKING:
    from xatm.coordinator.app import Coordinator, run
    from xatm.coordinator.engine import Engine
    from xatm.coordinator.settings import Settings, resolve
    from xatm.coordinator.txlog.file import FileWal
    from xatm.coordinator.txlog.interface import LogCorrupt, LogLocked, LogMissing, LogStopped, TxLog
    from xatm.coordinator.txlog.memory import MemoryLog

__getattr__, __dir__ = lazy_attributes(__name__, _HOME, __all__)
