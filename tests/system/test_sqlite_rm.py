"""SqliteRM: a prepared branch survives kill -9 of its process, locks and all."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.rm_support import assert_unlocked, raises, started
from xatm.participant.stores.sqlite import SqliteRM
from xatm.participant.xa import XaCode, Xid

CHILD = REPO / "tests" / "sqlite_crash_child.py"


# ---- durability across kill -9 -------------------------------------------------------------------


@pytest.mark.parametrize("decision", ["commit", "rollback"])
def test_prepared_branch_survives_kill_9(tmp_path: Path, decision: str) -> None:
    path = tmp_path / "bank.db"
    child = subprocess.run(
        [sys.executable, str(CHILD), str(path), "crash"],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        },
    )
    assert child.returncode == -signal.SIGKILL, child.stderr
    assert child.stdout == "prepared\n"

    rm = SqliteRM(path, "bank", lock_timeout=0.1)
    xid = Xid("crash", "b1")
    assert rm.recover() == [xid]
    assert rm.items() == {"alice": 100, "bob": 50}
    other = started(rm, "other")
    with raises(XaCode.XA_RBTIMEOUT):
        rm.get(other, "alice")
    with raises(XaCode.XA_RBTIMEOUT):
        rm.prepare(other)
    unprepared = Xid("crash-active", "b1")
    with raises(XaCode.XAER_NOTA):  # active work dies with the process...
        rm.prepare(unprepared)
    with raises(XaCode.XAER_DUPID):  # ...and its xid cannot be reused for new work
        rm.start(unprepared)
    assert_unlocked(rm, "carol")

    if decision == "commit":
        rm.commit(xid, one_phase=False)
        assert rm.items() == {"alice": 70, "bob": 80}
    else:
        rm.rollback(xid)
        assert rm.items() == {"alice": 100, "bob": 50}
    assert rm.recover() == []
    assert_unlocked(rm, "alice", "bob")
    rm.close()

    reopened = SqliteRM(path, "bank")
    assert reopened.recover() == []
    assert reopened.items()["alice"] == (70 if decision == "commit" else 100)
    reopened.close()
