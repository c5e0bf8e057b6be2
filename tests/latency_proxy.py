"""Slow peers for tests: a TCP proxy on loopback that delays every byte by a fixed one-way
latency, and a process paused for a while.

    with LatencyProxy("127.0.0.1:7070", delay=0.040) as proxy:
        client connects to proxy.address; the server is 40 ms away in each direction

The proxy runs its own asyncio loop in a daemon thread, so synchronous tests can use it. Bytes
keep their order; each chunk read is written ``delay`` seconds (monotonic clock) after it was
read, so a round trip through the proxy costs twice the delay, as over a real distance. Closing
one side closes the other after the bytes in flight have been delivered. A ``tap`` sees what
clients send (with delay 0 the proxy only watches, e.g. to count a protocol's messages).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from types import TracebackType

__all__ = ["LatencyProxy", "paused"]

_CHUNK = 64 * 1024


#: Called once per accepted connection; what it returns gets, in order, every chunk that client sends.
Tap = Callable[[], Callable[[bytes], None]]


class LatencyProxy:
    """Listens on 127.0.0.1 (a free port), forwards to ``target`` ("host:port"), ``delay`` s each way.

    ``tap``: see ``Tap``; it runs on the proxy's thread.
    """

    def __init__(self, target: str, *, delay: float, tap: Tap | None = None):
        host, _, port = target.rpartition(":")
        self._target = (host, int(port))
        self.delay = delay
        self._tap = tap
        self.address = ""
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="latency-proxy", daemon=True)
        self._server: asyncio.Server | None = None
        self._pipes: set[asyncio.Task[None]] = set()

    def start(self) -> LatencyProxy:
        """Start listening; ``address`` is set on return."""
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._accept, "127.0.0.1", 0), self._loop
        ).result(timeout=10)
        port = self._server.sockets[0].getsockname()[1]
        self.address = f"127.0.0.1:{port}"
        return self

    def stop(self) -> None:
        """Close the listener and every proxied connection, then end the thread."""
        if not self._thread.is_alive():
            return
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._pipes):
            task.cancel()
        await asyncio.gather(*self._pipes, return_exceptions=True)

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            server_reader, server_writer = await asyncio.open_connection(*self._target)
        except OSError:
            client_writer.close()
            return
        watch = self._tap() if self._tap is not None else None
        pipes = ((client_reader, server_writer, watch), (server_reader, client_writer, None))
        for reader, writer, seen in pipes:
            task = asyncio.get_running_loop().create_task(self._pipe(reader, writer, seen))
            self._pipes.add(task)
            task.add_done_callback(self._pipes.discard)

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, seen: Callable[[bytes], None] | None
    ) -> None:
        """One direction: read chunks as they come (``seen`` gets each), deliver each ``delay`` after
        it was read."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def deliver() -> None:
            while True:
                due, data = await queue.get()
                await asyncio.sleep(max(0.0, due - loop.time()))
                if not data:
                    return
                writer.write(data)
                await writer.drain()

        sender = loop.create_task(deliver())
        try:
            while True:
                data = await reader.read(_CHUNK)
                if seen is not None and data:
                    seen(data)
                queue.put_nowait((loop.time() + self.delay, data))
                if not data:  # end of stream, delivered in turn as the close
                    break
            await sender
        except (OSError, asyncio.CancelledError):
            sender.cancel()
        finally:
            writer.close()
            with contextlib.suppress(OSError, asyncio.CancelledError):
                await writer.wait_closed()

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


@contextlib.contextmanager
def paused(pid: int, seconds: float) -> Iterator[None]:
    """SIGSTOP process ``pid`` now and SIGCONT it ``seconds`` later, while the block runs on.

    The block's calls meet a peer that has stopped answering and comes back; on leaving, the
    process is continued in any case (after the pause has run its course).
    """
    os.kill(pid, signal.SIGSTOP)
    resume = threading.Timer(seconds, os.kill, (pid, signal.SIGCONT))
    resume.start()
    try:
        yield
    finally:
        resume.join()
        os.kill(pid, signal.SIGCONT)
