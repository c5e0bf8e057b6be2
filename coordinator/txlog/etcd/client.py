"""The etcd connection: parsing a store address, reaching any member, telling outages apart.

``aetcd`` (the ``etcd`` extra) talks to one gRPC target; gRPC's ``ipv4:`` target takes several
addresses and moves to the next one when a member stops answering, so a killed member costs
one reconnect, not an outage.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from xatm.coordinator.txlog.etcd.metrics import ETCD_READ_DURATION
from xatm.participant.errors import InvalidArgumentError
from xatm.participant.runtime.address import Address
from xatm.participant.runtime.targets import resolve

__all__ = ["STORE_SCHEME", "connect", "is_outage", "parse_store_url", "read_prefix"]

STORE_SCHEME = "etcd://"

#: Keys per range read. A start-up read of a large keyspace in one reply would pass gRPC's
#: receive limit; pages of this many records stay far below it.
PAGE_KEYS = 2000

#: The client's receive limit (bytes): one transaction's records, read whole by a takeover
#: claim, may pass gRPC's default 4 MiB.
MAX_RECEIVE_BYTES = 256 * 1024 * 1024


def parse_store_url(url: str) -> list[tuple[str, int]]:
    """``etcd://h1:2379,h2:2379`` -> [("h1", 2379), ("h2", 2379)]; a missing port is 2379.

    Raises InvalidArgumentError naming what is wrong.
    """
    if not url.startswith(STORE_SCHEME):
        raise InvalidArgumentError(f"store {url!r} is not an etcd:// address")
    endpoints = []
    for part in url[len(STORE_SCHEME) :].rstrip("/").split(","):
        host, _, port = part.strip().rpartition(":") if ":" in part else (part.strip(), "", "2379")
        if not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise InvalidArgumentError(f"store {url!r}: {part!r} is not host:port")
        endpoints.append((host, int(port)))
    return endpoints


def connect(endpoints: list[tuple[str, int]], timeout: float) -> Any:
    """An ``aetcd.Client`` over every endpoint; each call gives up after ``timeout`` seconds.

    Raises RuntimeError when the extra is not installed, ConnectionError when an endpoint does
    not resolve.
    """
    try:
        import aetcd
    except ImportError:
        raise RuntimeError("the etcd store needs the etcd extra: pip install 'xatm[etcd]'") from None
    # aetcd joins host and port as "host:port"; the last address's port goes in ``port``.
    try:
        target = resolve([Address(host, port) for host, port in endpoints])
    except ConnectionError as err:
        raise ConnectionError(f"etcd endpoint {err}") from None
    host, _, port = target.rpartition(":")
    return aetcd.Client(
        host, int(port), timeout=timeout, options={"grpc.max_receive_message_length": MAX_RECEIVE_BYTES}
    )


async def read_prefix(
    client: Any, prefix: bytes, *, keys_only: bool = False, page: int | None = None
) -> list[Any]:
    """Every key-value under ``prefix``, read in pages of ``page`` keys (default ``PAGE_KEYS``) at
    one revision, so the result is a consistent snapshot however large it is.

    Returns etcd's raw ``KeyValue`` messages (``key``, ``value``, ``mod_revision``...) in key
    order. Raises the client's errors, as its own reads do.
    """
    from aetcd import exceptions, rpc, utils

    started = time.monotonic()
    await client.connect()
    end = utils.prefix_range_end(prefix)
    start, revision, kvs = prefix, 0, []
    while True:
        request = rpc.RangeRequest(
            key=start, range_end=end, limit=page or PAGE_KEYS, revision=revision, keys_only=keys_only
        )
        try:
            reply = await client.kvstub.Range(request, timeout=client._timeout, metadata=client.metadata)
        except rpc.AioRpcError as err:
            exceptions._handle_exception(err)
        kvs.extend(reply.kvs)
        if not reply.more or not reply.kvs:
            ETCD_READ_DURATION.observe(time.monotonic() - started)
            return kvs
        # Later pages read the revision of the first, and start just past the last key read.
        revision = reply.header.revision
        start = reply.kvs[-1].key + b"\0"


def is_outage(err: BaseException) -> bool:
    """True when ``err`` says etcd cannot answer now (no quorum, member gone, deadline passed),
    so the call may be retried, rather than that the request itself is wrong."""
    import aetcd.exceptions as errors

    if isinstance(err, asyncio.TimeoutError | errors.ConnectionFailedError | errors.ConnectionTimeoutError):
        return True
    return isinstance(err, errors.ClientError) and not isinstance(
        err, errors.InvalidArgumentError | errors.PreconditionFailedError | errors.UnauthenticatedError
    )
