"""The coordinator's HTTP port: ``/metrics`` for Prometheus and ``/healthz`` for probes.

A small threaded stdlib server: handlers that need the engine hop onto the asyncio loop
with ``run_coroutine_threadsafe`` so the engine stays single-threaded.
"""

from __future__ import annotations

import asyncio
import json
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .engine import Engine

__all__ = ["HttpServer", "split_hostport"]


def split_hostport(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"address {address!r} must be HOST:PORT")
    return host.strip("[]"), int(port)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        """Access logs are noise at scrape rate; errors are logged by the engine."""

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def send_json(self, status: int, payload: object) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/metrics":
            self._send(HTTPStatus.OK, generate_latest(), CONTENT_TYPE_LATEST)
        elif path == "/healthz":
            engine = self.server.engine
            status = HTTPStatus.SERVICE_UNAVAILABLE if engine.closing else HTTPStatus.OK
            self.send_json(
                status, {"status": "shutting down" if engine.closing else "ok", "node": engine.node_id}
            )
        else:
            self.send_json(HTTPStatus.NOT_FOUND, {"error": f"no resource at {path}"})


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], engine: Engine, loop: asyncio.AbstractEventLoop):
        super().__init__(address, _Handler)
        self.engine = engine
        self.loop = loop


class HttpServer:
    def __init__(self, listen: str, engine: Engine, loop: asyncio.AbstractEventLoop):
        self._server = _Server(split_hostport(listen), engine, loop)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="xatm-http", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
