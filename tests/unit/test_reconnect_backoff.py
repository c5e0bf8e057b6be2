"""A peer back at its address is reached within a call's deadline, however long it was away.

While a participant is down, each of the coordinator channel's failed connection attempts makes
gRPC wait longer before the next (up to ``grpc.max_reconnect_backoff_ms``, with 20 % jitter). A
call that waits for the channel waits out that backoff even when the peer is back: with a 1 s
ceiling, a prepare of a shorter deadline failed although the participant answered, and the
transaction rolled back. Here a listener that takes and drops every connection stands for the
peer while it is away; right after one of its refusals the real participant takes the port.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time

import grpc
from hypothesis import given
from hypothesis import strategies as st

from xatm.coordinator.engine.peers import Peers
from xatm.participant.api.v1 import participant_pb2_grpc
from xatm.participant.servicer import AsyncParticipantServicer
from xatm.participant.stores.memory import MemoryRM
from xatm.participant.xa import CHANNEL_OPTIONS, Phase, XaCode, Xid, channel_options, new_gtrid

#: The calls' deadline: below the 0.8 s that a 1 s reconnect backoff lasts at the least.
TIMEOUT = 0.6
#: Long enough for the backoff to reach its ceiling (100 ms growing 1.6 times per attempt).
AWAY = 3.5


class Refuser:
    """Listens on a loopback port and resets every connection at once, noting when."""

    def __init__(self) -> None:
        self._sock = socket.socket()
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(64)
        self.port: int = self._sock.getsockname()[1]
        self.refused: list[float] = []
        self._turn = threading.Condition()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            # A reset, not a close: no TIME_WAIT left on the port the participant takes next.
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            with self._turn:
                self.refused.append(time.monotonic())
                self._turn.notify_all()

    def next_refusal(self) -> float:
        """Wait for the next connection refused; when it was."""
        with self._turn:
            seen = len(self.refused)
            assert self._turn.wait_for(lambda: len(self.refused) > seen, timeout=10), "no attempt came"
            return self.refused[-1]

    def close(self) -> None:
        self._sock.close()
        self._thread.join(5)


async def _keep_calling(peers: Peers, endpoint: str, stop: asyncio.Event) -> None:
    """Phase-two calls that keep the channel trying to connect, as a rollback driver's do."""
    while not stop.is_set():
        code, _ = await peers.call(endpoint, Phase.ROLLBACK, Xid(new_gtrid("t1"), "away"), timeout=TIMEOUT)
        assert code == XaCode.XAER_RMFAIL


def test_a_participant_back_at_its_address_answers_the_next_call_within_its_deadline() -> None:
    async def run() -> None:
        refuser = Refuser()
        endpoint = f"127.0.0.1:{refuser.port}"
        peers = Peers(call_timeout=TIMEOUT)
        server: grpc.aio.Server | None = None
        stop = asyncio.Event()
        caller = asyncio.ensure_future(_keep_calling(peers, endpoint, stop))
        try:
            await asyncio.sleep(AWAY)
            assert len(refuser.refused) >= 4  # the channel kept trying, backing off each time
            last = await asyncio.to_thread(refuser.next_refusal)
            refuser.close()
            server = grpc.aio.server()
            participant_pb2_grpc.add_ParticipantServicer_to_server(
                AsyncParticipantServicer(MemoryRM("back")), server
            )
            assert server.add_insecure_port(endpoint) == refuser.port
            await server.start()
            xid = Xid(new_gtrid("t1"), "back")
            code, reason = await peers.call(endpoint, Phase.PREPARE, xid, timeout=TIMEOUT)
            # Reached and answered (a memory RM prepares a branch it never saw): not a call that
            # found no connection within its deadline.
            assert code == XaCode.XA_OK, (code, reason, time.monotonic() - last)
        finally:
            stop.set()
            await asyncio.gather(caller, return_exceptions=True)
            await peers.close()
            refuser.close()
            if server is not None:
                await server.stop(None)

    asyncio.run(run())


def _backoff_ceiling(options: tuple[tuple[str, int], ...]) -> int:
    return dict(options)["grpc.max_reconnect_backoff_ms"]


@given(st.floats(min_value=0.001, max_value=3600, allow_nan=False))
def test_the_reconnect_backoff_stays_well_inside_the_calls_deadline(call_timeout: float) -> None:
    ceiling = _backoff_ceiling(channel_options(call_timeout))
    assert 100 <= ceiling <= _backoff_ceiling(CHANNEL_OPTIONS)
    if call_timeout >= 0.4:  # below, gRPC's 100 ms floor decides
        # gRPC's jitter adds up to a fifth: the longest wait is still under a third of a call.
        assert ceiling * 1.2 <= call_timeout * 1000 / 3
    others = {k: v for k, v in channel_options(call_timeout) if k != "grpc.max_reconnect_backoff_ms"}
    assert others == {k: v for k, v in CHANNEL_OPTIONS if k != "grpc.max_reconnect_backoff_ms"}
