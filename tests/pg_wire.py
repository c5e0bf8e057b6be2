"""What a PostgreSQL client sends, counted off the wire: the frontend messages of protocol 3.0.

    tally = FrontendTally()
    with LatencyProxy(f"127.0.0.1:{cluster.port}", delay=0, tap=tally.stream) as proxy:
        ... connect to proxy.address ...
        before = tally.snapshot()
        ... the work ...
        spent = tally.snapshot() - before
        spent.round_trips, spent.statements, spent.parses

The server answers a Query (simple protocol) or a Sync (extended protocol: Parse/Bind/Execute...
then Sync), so each of those is one round trip the client waits for; each Query or Execute is
one statement the server runs (a Query of several statements would count as one: ours have one);
a Parse is a statement the server parses and plans, which a prepared statement no longer needs.
"""

from __future__ import annotations

import struct
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["FrontendTally", "Tally"]

# Requests that come, like the startup message, without a type byte and before it.
_SSL_REQUEST, _GSSENC_REQUEST = 80877103, 80877104


@dataclass(frozen=True)
class Tally:
    """Frontend messages by type byte (``"Q"`` Query, ``"P"`` Parse, ``"E"`` Execute, ``"S"`` Sync, ...)."""

    messages: Counter[str]

    @property
    def round_trips(self) -> int:
        return self.messages["Q"] + self.messages["S"]

    @property
    def statements(self) -> int:
        return self.messages["Q"] + self.messages["E"]

    @property
    def parses(self) -> int:
        return self.messages["P"]

    def __sub__(self, earlier: Tally) -> Tally:
        return Tally(self.messages - earlier.messages)


class FrontendTally:
    """Counts the messages of every connection whose client-to-server bytes it is given."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._messages: Counter[str] = Counter()

    def snapshot(self) -> Tally:
        with self._lock:
            return Tally(Counter(self._messages))

    def stream(self) -> Callable[[bytes], None]:
        """A parser for one new connection; feed it that client's bytes in order, in any chunks."""
        pending = bytearray()
        started = False  # the startup message (after any SSL/GSS encryption request) has gone by

        def feed(data: bytes) -> None:
            nonlocal started
            pending.extend(data)
            while True:
                if not started:  # int32 length, int32 code, rest
                    if len(pending) < 8 or len(pending) < (length := struct.unpack_from("!i", pending)[0]):
                        return
                    code = struct.unpack_from("!i", pending, 4)[0]
                    started = code not in (_SSL_REQUEST, _GSSENC_REQUEST)
                    del pending[:length]
                    continue
                # type byte, int32 length (counting itself), rest
                if len(pending) < 5 or len(pending) < 1 + (length := struct.unpack_from("!i", pending, 1)[0]):
                    return
                kind = chr(pending[0])
                del pending[: 1 + length]
                with self._lock:
                    self._messages[kind] += 1

        return feed
