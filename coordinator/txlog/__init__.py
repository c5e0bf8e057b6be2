"""The transaction log: the interface every backend implements, and the backends.

- ``interface``: ``TxLog`` and its typed errors (the contract a backend meets).
- ``memory``: an in-process log for component tests, with crash simulation.
- ``file``: the embedded write-ahead log, the coordinator's default backend.
- ``_proto``: the record format (``WalRecord``), internal, apart from the public wire API.
"""

from xatm.coordinator.txlog.interface import LogCorrupt, LogLocked, LogMissing, LogStopped, TxLog

__all__ = ["LogCorrupt", "LogLocked", "LogMissing", "LogStopped", "TxLog"]
