"""Coordinator address lists -> gRPC targets: one address is passed through unchanged and
fails at once when its coordinator is down; several (or a name resolving to several) become a
failover channel that retries UNAVAILABLE on the next replica."""

from __future__ import annotations

import json
import socket

import grpc
import pytest

from xatm.participant.api.v1 import coordinator_pb2, coordinator_pb2_grpc
from xatm.participant.client.initiator import coordinator_channel
from xatm.participant.runtime.address import AddressError
from xatm.participant.runtime.targets import (
    FAILOVER_OPTIONS,
    channel_target,
    check_addresses,
    parse_addresses,
)


def test_one_address_is_passed_through_without_retries() -> None:
    assert channel_target("127.0.0.1:7070") == ("127.0.0.1:7070", ())
    assert channel_target("localhost:7070") == ("localhost:7070", ())  # one machine, two families


def test_a_list_becomes_one_target_over_every_address_with_retries() -> None:
    target, options = channel_target("127.0.0.1:7070, 127.0.0.2:7071,127.0.0.1:7070")
    assert target == "ipv4:127.0.0.1:7070,127.0.0.2:7071"
    assert options == FAILOVER_OPTIONS
    policy = json.loads(dict(options)["grpc.service_config"])["methodConfig"][0]
    assert policy["name"] == [{"service": "xatm.v1.Coordinator"}]
    assert policy["retryPolicy"]["retryableStatusCodes"] == ["UNAVAILABLE"]
    assert channel_target("[::1]:7070,[::1]:7071")[0] == "ipv6:[::1]:7070,[::1]:7071"


def test_a_name_resolving_to_several_addresses_fails_over(monkeypatch: pytest.MonkeyPatch) -> None:
    def several(host: str, port: int, *args: object, **kwargs: object) -> list[tuple]:
        assert host == "coordinators.example"
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ("10.0.0.1", "10.0.0.2")]

    monkeypatch.setattr(socket, "getaddrinfo", several)
    assert channel_target("coordinators.example:7070") == ("coordinators.example:7070", FAILOVER_OPTIONS)


@pytest.mark.parametrize("text", ["", "a:1,", ",a:1", "a:1,,b:2", "a:1,b", "a:1,dns:2"])
def test_malformed_lists_are_refused_in_one_line(text: str) -> None:
    with pytest.raises(AddressError) as caught:
        parse_addresses(text)
    assert "\n" not in caught.value.message


def test_the_setting_rule_normalises_and_keeps_unset() -> None:
    assert check_addresses("") == ""
    assert check_addresses("a:1, b:2") == "a:1,b:2"


def test_a_name_in_a_list_that_does_not_resolve_is_one_line() -> None:
    with pytest.raises(ConnectionError, match="does not resolve"):
        channel_target("127.0.0.1:1,no-such-host.invalid:2")


def test_a_call_fails_over_to_the_next_replica_in_the_list() -> None:
    """The first replica refuses connections; the call is answered by the second one."""
    from concurrent import futures

    class Answering(coordinator_pb2_grpc.CoordinatorServicer):
        def GetStatus(self, request: coordinator_pb2.StatusRequest, context: grpc.ServicerContext) -> object:
            from xatm.participant.api.v1 import xa_pb2

            return xa_pb2.TransactionInfo(gtrid=request.gtrid, owner="second")

    dead = socket.socket()
    dead.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    coordinator_pb2_grpc.add_CoordinatorServicer_to_server(Answering(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with coordinator_channel(f"127.0.0.1:{dead.getsockname()[1]},127.0.0.1:{port}") as channel:
            reply = coordinator_pb2_grpc.CoordinatorStub(channel).GetStatus(
                coordinator_pb2.StatusRequest(gtrid="n1.x"), timeout=10
            )
        assert reply.owner == "second"
    finally:
        server.stop(None)
        dead.close()
