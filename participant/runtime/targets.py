"""Several coordinator replicas behind one setting: address lists -> gRPC targets.

A coordinator setting may name one ``HOST:PORT`` or several, comma-separated
(``c1:7070,c2:7070,c3:7070``). One address stays what it was: gRPC's default (DNS) resolver
takes every address a name resolves to, so a DNS name standing for several replicas (a
Kubernetes headless service) works as it is, and is re-resolved when a connection fails.
Several addresses become one ``ipv4:``/``ipv6:`` target over every address they resolve to
now. In both cases the channel is ``pick_first``: it keeps to one replica and moves to the
next when that one stops answering; and when there are several replicas, a call refused with
UNAVAILABLE (the replica died under it, or is shutting down) is retried by gRPC itself on the
next one, so the application does not notice the failover. Retrying is safe: a replica
answers UNAVAILABLE for what it did not carry out, and what a replica that died under the call
had carried out is finished by the takeover as its durable log says (Begin retried only begins
another transaction; the first, never used, times out).
"""

from __future__ import annotations

import json
import socket

from xatm.participant.runtime.address import Address, AddressError

__all__ = ["FAILOVER_OPTIONS", "channel_target", "check_addresses", "parse_addresses", "resolve"]

#: gRPC's retry policy for coordinator calls: UNAVAILABLE is retried on the next replica, four
#: times at most (gRPC allows five attempts), after a jittered backoff of 0.25 s growing to 2 s,
#: which lets a forwarding replica see a dead owner's lease run out.
_RETRY = {
    "methodConfig": [
        {
            "name": [{"service": "xatm.v1.Coordinator"}],
            "retryPolicy": {
                "maxAttempts": 5,
                "initialBackoff": "0.25s",
                "maxBackoff": "2s",
                "backoffMultiplier": 2,
                "retryableStatusCodes": ["UNAVAILABLE"],
            },
        }
    ]
}
#: Seconds between HTTP/2 pings while a call waits on a replica, and the wait for each ping's
#: answer. A replica that is paused (SIGSTOP, a frozen VM) still accepts connections and never
#: answers: without pings a call to it waits out its whole deadline; with them the connection is
#: given up after about both, the call fails UNAVAILABLE and is retried on the next replica. Every
#: xatm server accepts pings this often (``SERVER_OPTIONS``).
KEEPALIVE_TIME = 1.0
KEEPALIVE_TIMEOUT = 2.0
#: Channel options of a coordinator channel that fails over (besides xatm's usual ones).
FAILOVER_OPTIONS: tuple[tuple[str, str | int], ...] = (
    ("grpc.enable_retries", 1),
    ("grpc.service_config", json.dumps(_RETRY)),
    ("grpc.keepalive_time_ms", int(KEEPALIVE_TIME * 1000)),
    ("grpc.keepalive_timeout_ms", int(KEEPALIVE_TIMEOUT * 1000)),
    ("grpc.http2.ping_timeout_ms", int(KEEPALIVE_TIMEOUT * 1000)),
    # Pings only while calls are under way: an idle channel costs the replicas nothing.
    ("grpc.keepalive_permit_without_calls", 0),
    ("grpc.http2.max_pings_without_data", 0),
)


def parse_addresses(text: str) -> list[Address]:
    """``h1:p1,h2:p2`` -> the addresses, in order. Raises AddressError naming the bad one."""
    parts = [part.strip() for part in text.split(",")]
    if not text.strip() or any(not part for part in parts):
        raise AddressError(f"{text[:80]!r} must be HOST:PORT or a comma-separated list of them")
    return [Address.parse(part) for part in parts]


def check_addresses(text: str) -> str:
    """A settings rule: ``text`` normalised ("" stays unset). Raises AddressError."""
    return ",".join(str(a) for a in parse_addresses(text)) if text else text


def _families(addresses: list[Address]) -> tuple[list[str], list[str]]:
    """The IPv4 and IPv6 ``host:port`` addresses ``addresses`` resolve to now, in order, without
    duplicates. Raises ConnectionError when a name does not resolve."""
    v4: list[str] = []
    v6: list[str] = []
    for address in addresses:
        try:
            infos = socket.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
        except OSError as err:
            raise ConnectionError(f"{address} does not resolve: {err}") from None
        for family, _, _, _, sockaddr in infos:
            found, host = (v6, f"[{sockaddr[0]}]") if family == socket.AF_INET6 else (v4, sockaddr[0])
            text = f"{host}:{address.port}"
            if family in (socket.AF_INET, socket.AF_INET6) and text not in found:
                found.append(text)
    return v4, v6


def resolve(addresses: list[Address]) -> str:
    """One gRPC target over every address ``addresses`` resolve to now, in order, duplicates
    dropped: ``ipv4:a:p,b:p`` (or ``ipv6:`` when they are all IPv6).

    Raises ConnectionError when a name does not resolve.
    """
    v4, v6 = _families(addresses)
    # One target takes one family: IPv4 when there is any (what a name usually has).
    return "ipv4:" + ",".join(v4) if v4 else "ipv6:" + ",".join(v6)


def _several(text: str) -> bool:
    """Whether one ``HOST:PORT`` stands for several replicas: its name resolves to more than one
    address of a family (``localhost``, one IPv4 and one IPv6 address, is one machine)."""
    try:
        v4, v6 = _families([Address.parse(text)])
    except (AddressError, ConnectionError):
        return False  # gRPC reports it when it connects, as for any other address
    return max(len(v4), len(v6)) > 1


def channel_target(text: str) -> tuple[str, tuple[tuple[str, str | int], ...]]:
    """The gRPC target and the extra channel options for coordinator setting ``text``.

    Several addresses, or one name resolving to several, get the failover retry policy; one
    address (or any gRPC target without a comma) is passed through as it is, without it: a call
    to a coordinator that is down fails at once with UNAVAILABLE, as it always did. Raises
    AddressError for a malformed list, ConnectionError when a listed name does not resolve.
    """
    if "," in text:
        return resolve(parse_addresses(text)), FAILOVER_OPTIONS
    return text, FAILOVER_OPTIONS if _several(text) else ()
