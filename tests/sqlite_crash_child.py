"""Child process for the kill -9 test of SqliteRM.

Usage: ``sqlite_crash_child.py PATH GTRID``. Commits alice=100, bob=50, prepares branch (GTRID, b1)
moving 30 from alice to bob, leaves branch (GTRID-active, b1) active with a write to carol, prints
``prepared`` and kills itself with SIGKILL: no close, no cleanup.
"""

from __future__ import annotations

import os
import signal
import sys

from xatm.participant.stores.sqlite import SqliteRM
from xatm.participant.xa import Xid


def main(path: str, gtrid: str) -> None:
    rm = SqliteRM(path, "bank")
    with rm.local() as xid:
        rm.put(xid, "alice", 100)
        rm.put(xid, "bob", 50)
    transfer = Xid(gtrid, "b1")
    rm.start(transfer)
    alice, bob = rm.get(transfer, "alice"), rm.get(transfer, "bob")
    assert isinstance(alice, int) and isinstance(bob, int)
    rm.put(transfer, "alice", alice - 30)
    rm.put(transfer, "bob", bob + 30)
    rm.prepare(transfer)
    unprepared = Xid(f"{gtrid}-active", "b1")
    rm.start(unprepared)
    rm.put(unprepared, "carol", 1)
    print("prepared", flush=True)
    os.kill(os.getpid(), signal.SIGKILL)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
