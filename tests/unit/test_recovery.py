"""The recovery scanner in process: an orphan branch is rolled back only after two sightings, and
branches of other coordinators are left alone.

Recovery across real processes is in tests/system/test_recovery.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from xatm.coordinator.engine.core import Engine
from xatm.coordinator.settings import Settings
from xatm.coordinator.txlog.file import FileWal
from xatm.participant.xa import FORMAT_ID, Phase, XaCode, Xid


class _FakePeers:
    """A participant whose recover list the test controls; records what recovery sends it."""

    def __init__(self, xids: list[Xid]):
        self.xids = xids
        self.calls: list[tuple[Phase, Xid]] = []

    async def recover(self, endpoint: str, format_id: int, *, timeout: float) -> tuple[list[Xid], str]:
        return list(self.xids), "fake"

    async def call(
        self, endpoint: str, phase: Phase, xid: Xid, *, timeout: float, savepoint_id: str = ""
    ) -> tuple:
        self.calls.append((phase, xid))
        self.xids.remove(xid)
        return XaCode.XA_OK, ""

    async def close(self) -> None:
        pass


def test_orphans_roll_back_only_after_two_sightings_and_foreign_xids_are_untouched(tmp_path: Path) -> None:
    async def scenario() -> None:
        settings = Settings(data_dir=tmp_path, node_id="n1", recovery_interval=5.0)
        mine = Xid("n1.00aa", "b1")
        other_node = Xid("n2.00bb", "b1")
        other_format = Xid("n1.00cc", "b1", format_id=FORMAT_ID + 1)
        peers = _FakePeers([mine, other_node, other_format])
        engine = Engine(settings, FileWal(tmp_path), "n1", peers=peers)  # type: ignore[arg-type]
        await engine.start()
        live = await engine.begin()
        await engine.enlist(live.gtrid, "b9", "rm", "fake:1")
        peers.xids.append(Xid(live.gtrid, "b9"))
        try:
            assert (await engine.scanner.scan_once(now=1000.0))["candidates"] == 1
            assert peers.calls == []
            assert (await engine.scanner.scan_once(now=1002.0))["orphan_rollback"] == 0  # too soon
            assert (await engine.scanner.scan_once(now=1005.0))["orphan_rollback"] == 1
            assert peers.calls == [(Phase.ROLLBACK, mine)]
            assert other_node in peers.xids and other_format in peers.xids  # never touched
            assert Xid(live.gtrid, "b9") in peers.xids  # live transactions belong to the engine
        finally:
            await engine.rollback(live.gtrid)
            await engine.stop()

    asyncio.run(scenario())
