"""The embedded write-ahead log: the default ``TxLog`` backend and its offline tools.

``FileWal`` is what the coordinator opens; ``read_records``/``dump_text`` read a log with no
coordinator running (``xactl wal dump``); ``repair`` is the operator's way past mid-log damage
(``xatm coordinator --repair-wal``).
"""

from xatm.coordinator.txlog.file.dump import dump_text, find_wal_dir, iter_dump_lines, read_records
from xatm.coordinator.txlog.file.filewal import DEFAULT_SEGMENT_BYTES, FileWal
from xatm.coordinator.txlog.file.repair import RepairReport, repair
from xatm.coordinator.txlog.file.scan import LogScan, TornTail

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "FileWal",
    "LogScan",
    "RepairReport",
    "TornTail",
    "dump_text",
    "find_wal_dir",
    "iter_dump_lines",
    "read_records",
    "repair",
]
