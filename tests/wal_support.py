"""Helpers for the tests of the embedded write-ahead log, in process and across a crash."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from xatm.coordinator.txlog._proto import wal_pb2
from xatm.coordinator.txlog.file import FileWal

WalRecord = wal_pb2.WalRecord
T = TypeVar("T")
SMALL = 1024  # segment_bytes that makes a few dozen records span several segments


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def reopen(data_dir: Path) -> tuple[list[WalRecord], FileWal]:
    async def go() -> tuple[list[WalRecord], FileWal]:
        wal = FileWal(data_dir, segment_bytes=SMALL)
        records = list(await wal.open())
        await wal.close()
        return records, wal

    return run(go())


def segments(data_dir: Path) -> list[Path]:
    """The log's segment files under ``data_dir``, oldest first."""
    return sorted((data_dir / "wal").glob("*.wal"))
