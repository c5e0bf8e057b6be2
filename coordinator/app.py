"""Runs a coordinator: the engine, its gRPC server (with health and reflection) and HTTP port,
both behind the same token file and the same TLS settings."""

from __future__ import annotations

import asyncio
import logging
import os
import re
import signal
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from participant._proto import admin_pb2, admin_pb2_grpc, coordinator_pb2, coordinator_pb2_grpc

from . import tls
from .admin import AdminOps
from .auth import Authenticator
from .engine import Engine
from .httpapi import HttpServer
from .service import AdminServicer, CallerInterceptor, CoordinatorServicer
from .settings import Settings
from .txlog import TxLog

__all__ = ["Coordinator", "node_id_for", "run"]

log = logging.getLogger("xatm.coordinator")
_NODE = re.compile(r"^[A-Za-z0-9_-]{1,24}$")


def node_id_for(settings: Settings) -> str:
    """The configured node id, or one kept in the data dir so it survives restarts."""
    if settings.node_id:
        if not _NODE.match(settings.node_id):
            raise ValueError(f"node_id {settings.node_id!r} must be 1-24 characters of [A-Za-z0-9_-]")
        return settings.node_id
    path = settings.data_dir / "NODE_ID"
    if path.exists():
        return path.read_text().strip()
    node = "n" + os.urandom(4).hex()
    tmp = path.with_suffix(".tmp")
    tmp.write_text(node + "\n")
    os.replace(tmp, path)
    return node


def _open_log(data_dir: Path) -> TxLog:
    from .wal import FileWal

    return FileWal(data_dir)


class Coordinator:
    def __init__(self, settings: Settings, txlog: TxLog | None = None):
        self.settings = settings
        self.tls = tls.check(settings)
        self.auth = Authenticator.load(settings.auth_file)
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.node_id = node_id_for(settings)
        self.engine = Engine(settings, txlog or _open_log(settings.data_dir), self.node_id)
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.http: HttpServer | None = None
        self.grpc_port = 0

    async def start(self) -> None:
        await self.engine.start()
        limit = self.settings.max_message_bytes
        self.server = grpc.aio.server(
            interceptors=[CallerInterceptor(self.auth)],
            options=[("grpc.max_receive_message_length", limit), ("grpc.max_send_message_length", limit)],
        )
        ops = AdminOps(self.engine)
        coordinator_pb2_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(self.engine), self.server)
        admin_pb2_grpc.add_AdminServicer_to_server(AdminServicer(ops), self.server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        names = (
            coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name,
            admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, self.server)
        if self.tls:
            creds = tls.server_credentials(self.settings)
            self.grpc_port = self.server.add_secure_port(self.settings.listen, creds)
        else:
            self.grpc_port = self.server.add_insecure_port(self.settings.listen)
        if not self.grpc_port:
            raise OSError(f"cannot listen on {self.settings.listen}")
        await self.server.start()
        self.http = HttpServer(
            self.settings.http_listen,
            self.engine,
            asyncio.get_running_loop(),
            ops=ops,
            auth=self.auth,
            ssl_context=tls.server_ssl_context(self.settings) if self.tls else None,
        )
        self.http.start()
        await self.health.set("", health_pb2.HealthCheckResponse.SERVING)
        for name in names[:2]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        if not self.auth.enabled:
            log.warning(
                "no auth file (--auth-file): every gRPC and HTTP call is accepted without a token, "
                "force operations included; configure tokens before exposing this coordinator"
            )
        transport = "plaintext"
        if self.tls:
            transport = "mutual TLS" if self.settings.tls_client_ca else "TLS"
        log.info(
            "coordinator %s serving gRPC on %s, HTTP on %s (%s), data in %s",
            self.node_id,
            self.settings.listen,
            self.settings.http_listen,
            transport,
            self.settings.data_dir,
        )

    async def stop(self, grace: float = 2.0) -> None:
        await self.health.enter_graceful_shutdown()
        if self.http is not None:
            self.http.stop()
        if self.server is not None:
            await self.server.stop(grace)
        await self.engine.stop()


async def run(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM."""
    coordinator = Coordinator(settings)
    await coordinator.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutting down")
    await coordinator.stop()
