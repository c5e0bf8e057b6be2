"""A coordinator restarted on a log holding a completed transaction whose records this version
cannot read (an XA code of a later version) and one it can: the operator's tools list both, show
the readable one, and say in one line why the other cannot be shown."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.admin_support import rest, xactl
from xatm.coordinator import protocol as sm
from xatm.coordinator.journal import RecordFactory as R
from xatm.coordinator.tools.procs import coordinator_proc
from xatm.coordinator.txlog.file import FileWal
from xatm.participant.xa import BranchStatus as B
from xatm.participant.xa import Phase, XaCode
from xatm.participant.xa import TxStatus as S


async def _append(data: Path, gtrids: list[str]) -> None:
    """A committed two-branch transaction for each gtrid; the first one's answers carry a code no
    release of this version knows."""
    wal = FileWal(data, must_exist=True)
    await wal.open()
    for n, gtrid in enumerate(gtrids):
        tx = sm.Transaction(gtrid=gtrid, timeout_ms=1000, begun_at=1_700_000_000.0 + n, status=S.PREPARING)
        for bqual in ("a", "b"):
            tx.branches[bqual] = sm.Branch(bqual, f"rm-{bqual}", "127.0.0.1:9")
        tx.status = S.COMMITTING
        await wal.append(R.decision(tx, tx.begun_at))
        for b in tx.branches.values():
            b.status = B.COMMITTED
            rec = R.branch_result(tx, b, Phase.COMMIT, XaCode.XA_OK, "", tx.begun_at)
            if n == 0:
                rec.branch_result.code = 999  # type: ignore[assignment]
            await wal.append(rec)
        tx.status, tx.completed_at = S.COMMITTED, tx.begun_at + 1
        await wal.append(R.end(tx, tx.begun_at + 1), force=True)
    await wal.close()


def test_the_operators_tools_list_both_and_say_why_one_cannot_be_shown(tmp_path: Path) -> None:
    data = tmp_path / "data"
    proc = coordinator_proc(data, tmp_path)
    proc.start()
    proc.stop()
    node = (data / "NODE_ID").read_text().strip()
    bad, good = f"{node}.{'0' * 35}1", f"{node}.{'0' * 35}2"
    asyncio.run(_append(data, [bad, good]))
    proc.start()
    try:
        listed = xactl(proc.address, "list")
        shown = xactl(proc.address, "show", bad)
        shown_good = xactl(proc.address, "show", good)
        every = rest(f"http://{proc.http}", "GET", "/admin/v1/xa-transaction")
    finally:
        proc.stop()
    assert listed.returncode == 0, listed.stderr
    assert bad in listed.stdout and good in listed.stdout
    assert shown_good.returncode == 0 and "rm-a" in shown_good.stdout
    (line,) = shown.stderr.strip().splitlines()
    assert shown.returncode == 1 and bad in line and "cannot be read" in line and "999" in line
    assert every.status == 200
    assert {t["txid"] for t in every.body["transactions"]} == {bad, good}
