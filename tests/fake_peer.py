"""A fake gRPC peer for the tests of peers that answer something other than a valid reply.

It serves one service's method paths with a generic handler whose answers are raw bytes chosen
by the test: garbage that is no message at all, a valid message with an XA code outside the
protocol, an odd gRPC status, an exception.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc

from xatm.participant.api.v1 import participant_pb2
from xatm.participant.xa import XaCode

#: What the fake answers one call with: raw reply bytes, or it aborts / raises on ``context``.
Answer = Callable[[bytes, grpc.ServicerContext], bytes]

GARBAGE = b"\xff\xff\xff\xff\x0fnot a protobuf message"


def ok(_: bytes, __: grpc.ServicerContext) -> bytes:
    return participant_pb2.XaReply(code=XaCode.XA_OK).SerializeToString()


def garbage(_: bytes, __: grpc.ServicerContext) -> bytes:
    return GARBAGE


class FakePeer(grpc.GenericRpcHandler):
    """One service's paths on a real port; ``answers[method]`` chooses each answer (else ``default``).

    Methods in ``unserved`` are answered UNIMPLEMENTED, as by a peer built before them (each
    attempt is kept in ``refused``): by default the Participant's ``BatchStream`` and ``Batch``,
    so the fake is called one branch at a time.
    """

    def __init__(self, service: str = "xatm.v1.Participant", default: Answer = ok) -> None:
        self.answers: dict[str, Answer] = {}
        self._service = f"/{service}"
        self._default = default
        #: (method, request bytes) of every call received, in order.
        self.calls: list[tuple[str, bytes]] = []
        self.unserved = {"BatchStream", "Batch"}
        #: The methods of the calls answered UNIMPLEMENTED, in order.
        self.refused: list[str] = []
        self._server = grpc.server(ThreadPoolExecutor(max_workers=4))
        self._server.add_generic_rpc_handlers((self,))
        self.endpoint = f"127.0.0.1:{self._server.add_insecure_port('127.0.0.1:0')}"
        self._server.start()

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler | None:
        service, _, method = handler_call_details.method.rpartition("/")  # type: ignore[attr-defined]
        if service != self._service:
            return None
        if method in self.unserved:
            self.refused.append(method)
            return None

        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            self.calls.append((method, request))
            return self.answers.get(method, self._default)(request, context)

        # No (de)serializers: the handler sees and answers raw bytes.
        return grpc.unary_unary_rpc_method_handler(handle)

    def methods(self) -> list[str]:
        return [method for method, _ in self.calls]

    def stop(self) -> None:
        self._server.stop(None)
