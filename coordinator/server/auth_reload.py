"""Keeps the coordinator's tokens in step with its token file: reloaded on SIGHUP and on change.

A revoked token must stop working without a restart (which would interrupt every transaction in
flight). Each reload replaces the tokens at once and leaves an audit record naming the entries
that were removed or changed (never a token or a hash); a file that no longer loads keeps the
previous tokens in force, is logged as an error and is audited as refused.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from pathlib import Path

from xatm.coordinator.engine.core import Engine
from xatm.coordinator.server.auth import Authenticator, AuthFileError
from xatm.participant.api.v1 import admin_pb2
from xatm.participant.errors import XatmError

__all__ = ["AUTH_POLL_INTERVAL", "AuthFileWatcher"]

log = logging.getLogger("xatm.coordinator")

#: Seconds between looks at the token file's modification time, size and inode.
AUTH_POLL_INTERVAL = 1.0
#: The audit record's action for a reload.
ACTION = "reload_auth"

_Stamp = tuple[int, int, int] | None


def _stamp(path: Path) -> _Stamp:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_mtime_ns, info.st_size, info.st_ino


class AuthFileWatcher:
    """Reloads ``auth`` from ``path`` on request (``reload``) and when the file changes (``watch``)."""

    def __init__(self, auth: Authenticator, path: Path, engine: Engine):
        self.auth, self.path, self.engine = auth, path, engine
        self._seen = _stamp(path)

    async def reload(self, why: str) -> None:
        """Read the file again now; ``why`` (``SIGHUP``, ``file changed``) goes into the audit record."""
        self._seen = _stamp(self.path)
        try:
            changed = self.auth.reload(self.path)
        except AuthFileError as err:
            log.error("%s; the previous tokens stay in force", err.message)
            await self._audit(why, "refused: INVALID_ARGUMENT", err.message)
            return
        detail = f"removed or changed: {', '.join(changed)}" if changed else "no entry removed or changed"
        log.info("auth file %s reloaded (%s); %s", self.path, why, detail)
        await self._audit(why, "ok", detail)

    async def watch(self, interval: float = AUTH_POLL_INTERVAL) -> None:
        """Reload whenever the file's modification time, size or inode changes; runs until cancelled."""
        while True:
            await asyncio.sleep(interval)
            if _stamp(self.path) != self._seen:
                await self.reload("file changed")

    async def _audit(self, why: str, result: str, detail: str) -> None:
        record = admin_pb2.AuditRecord(
            actor="coordinator", action=ACTION, peer=why, result=result, detail=detail[:500]
        )
        record.time.FromNanoseconds(time.time_ns())
        try:
            await self.engine.record_audit(record)
        except XatmError as err:  # the log stopped: the reload stands, its record cannot be kept
            log.error("auth file reload (%s) not audited: %s", why, err.message)
