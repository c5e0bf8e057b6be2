"""The coordinator's channel cache to participants stays bounded: the least recently used
channel goes past ``max_channels``, and one unused for ``idle_after`` seconds is closed."""

from __future__ import annotations

import asyncio
import contextlib
import socket

from prometheus_client import REGISTRY

from xatm.coordinator.engine.peers import PeerError, Peers
from xatm.participant.xa import FORMAT_ID


def _closed_endpoints(n: int) -> list[str]:
    """``n`` loopback addresses nothing listens on (bound, then released)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [f"127.0.0.1:{sock.getsockname()[1]}" for sock in socks]
    finally:
        for sock in socks:
            sock.close()


async def _ask(peers: Peers, endpoint: str) -> None:
    with contextlib.suppress(PeerError):  # nobody there: the channel was still opened for the call
        await peers.recover(endpoint, FORMAT_ID, timeout=0.2)


def test_channels_past_the_bound_are_closed_least_recently_used_first() -> None:
    async def run() -> None:
        peers = Peers(max_channels=2)
        endpoints = _closed_endpoints(5)
        try:
            for endpoint in endpoints:
                await _ask(peers, endpoint)
                assert peers.channel_count <= 2
            assert peers.channel_count == 2
            assert REGISTRY.get_sample_value("xatm_participant_channels") == 2
        finally:
            await peers.close()
        assert peers.channel_count == 0

    asyncio.run(run())


def test_idle_channels_are_closed() -> None:
    async def run() -> None:
        peers = Peers(idle_after=0.05)
        first, second = _closed_endpoints(2)
        try:
            await _ask(peers, first)
            await asyncio.sleep(0.1)
            await _ask(peers, second)
            assert peers.channel_count == 1  # the first one, idle, was closed
        finally:
            await peers.close()

    asyncio.run(run())
