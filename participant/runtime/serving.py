"""Serve until SIGTERM or SIGINT: the one stop-signal handling of every xatm server process.

A supervisor (systemd, Kubernetes, a test) stops a server with SIGTERM, a person with Ctrl-C
(SIGINT); either one asks for a graceful stop, after which the process exits 0. Two forms:

- ``until_signalled()`` blocks a threaded server's main thread (grpc.server, the agent);
- ``stop_signals()`` is an asyncio context whose event is set by a signal (grpc.aio servers),
  for a loop that also waits on other things (the coordinator waits on its log, too).

Both put the previous handlers back afterwards, so a second signal during the graceful stop
is not lost to a stale handler, and tests can run them in-process.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
from collections.abc import AsyncIterator, Callable

__all__ = ["STOP_SIGNALS", "stop_signals", "until_signalled"]

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def until_signalled(started: Callable[[], None] | None = None) -> None:
    """Block the main thread until SIGTERM or SIGINT; the caller then stops gracefully.

    ``started`` runs once the handlers are in place, so a signal that arrives while the server
    starts is not lost (it ends this wait at once instead of killing the process half-started).
    """
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in STOP_SIGNALS}
    try:
        if started is not None:
            started()
        stop.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


@contextlib.asynccontextmanager
async def stop_signals() -> AsyncIterator[asyncio.Event]:
    """An event of the running loop set by SIGTERM/SIGINT while the block runs."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    installed = []
    try:
        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
        yield stop
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)
