"""Runs a coordinator: the engine, its gRPC server (with health and reflection) and HTTP port,
both behind the same token file and the same TLS settings.

When the transaction log stops (full disk, I/O error, its files deleted), the coordinator
takes no more decisions, reports NOT_SERVING, and exits with ``EXIT_LOG_STOPPED`` after
``LOG_STOP_GRACE`` seconds so that a supervisor restarts it on the log as it is on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

from xatm.coordinator import cluster, heap
from xatm.coordinator.cluster.serving import ReplicaAdminOps, RoutedCoordinatorServicer
from xatm.coordinator.engine.core import Engine
from xatm.coordinator.server import tls
from xatm.coordinator.server.admin import AdminOps
from xatm.coordinator.server.approvals import Approvals
from xatm.coordinator.server.auth import Authenticator, AuthFileError
from xatm.coordinator.server.auth_reload import AuthFileWatcher
from xatm.coordinator.server.console.history import BranchHistory
from xatm.coordinator.server.endpoints import EndpointPolicy
from xatm.coordinator.server.guard import Services, register_guarded
from xatm.coordinator.server.http import HttpServer
from xatm.coordinator.server.services import AdminServicer, CallerInterceptor, CoordinatorServicer
from xatm.coordinator.settings import NODE_FILE, Settings, SettingsError, parse_required, stored_node_id
from xatm.coordinator.txlog.file.segment import fsync_dir
from xatm.coordinator.txlog.interface import LogStopped, TxLog
from xatm.participant import failpoints
from xatm.participant.api.v1 import admin_pb2, admin_pb2_grpc, coordinator_pb2, coordinator_pb2_grpc
from xatm.participant.runtime.address import Address, check_free
from xatm.participant.runtime.serving import stop_signals
from xatm.participant.xa import SERVER_OPTIONS

__all__ = ["EXIT_LOG_STOPPED", "LOG_CHECK_INTERVAL", "LOG_STOP_GRACE", "Coordinator", "node_id_for", "run"]

log = logging.getLogger("xatm.coordinator")

#: Exit status after the transaction log stopped (EX_TEMPFAIL: a restart may succeed once the
#: cause is fixed); start-up refusals exit 1, bad configuration 2.
EXIT_LOG_STOPPED = 75
#: Seconds between checks that the log's files are still in place while nothing is written.
LOG_CHECK_INTERVAL = 1.0
#: Seconds between the log stopping and the exit: NOT_SERVING is visible to probes and
#: callers get UNAVAILABLE instead of a dropped connection.
LOG_STOP_GRACE = 5.0


def node_id_for(settings: Settings) -> str:
    """The configured node id, or the one kept in the data dir, or a new random one.

    Reads only: ``_remember_node`` writes it once the log exists, so that a data dir holding a
    node id always held a log too (start-up relies on that to notice a log that vanished).

    Raises SettingsError when the data dir's ``NODE_ID`` holds no valid node id (the configured
    one was checked with the other settings).
    """
    return settings.node_id or stored_node_id(settings.data_dir) or "n" + os.urandom(4).hex()


def _remember_node(data_dir: Path, node: str) -> None:
    """Write ``NODE_ID`` if absent: the data dir's mark that it holds a log, and this node's id."""
    path = data_dir / NODE_FILE
    if path.exists():
        return
    tmp = path.with_suffix(".tmp")
    with tmp.open("w") as file:
        file.write(node + "\n")
        file.flush()
        os.fsync(file.fileno())  # a node id lost in a crash would orphan the log's in-doubt branches
    os.replace(tmp, path)
    fsync_dir(data_dir, os.fsync)


def _open_log(settings: Settings, node: str) -> TxLog:
    if settings.store != "file":
        from xatm.coordinator.txlog.etcd import EtcdLog, parse_store_url

        ttl = settings.lease_ttl
        return EtcdLog(parse_store_url(settings.store), node, lease_ttl=ttl, wait_for_holder=ttl + 1.0)
    from xatm.coordinator.txlog.file import FileWal

    data_dir = settings.data_dir
    return FileWal(data_dir, must_exist=(data_dir / NODE_FILE).exists(), failpoint=failpoints.hit)


class Coordinator:
    def __init__(self, settings: Settings, txlog: TxLog | None = None):
        self.settings = settings
        self.tls = tls.check(settings)
        try:
            self.auth = Authenticator.load(settings.auth_file)
        except AuthFileError as err:  # a bad setting's value, as a malformed flag is
            raise SettingsError(err.message) from None
        try:
            settings.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise SettingsError(
                f"--data-dir {settings.data_dir}: cannot create it: {err.strerror or err}"
            ) from None
        self.node_id = node_id_for(settings)
        self.approvals = Approvals(parse_required(settings.require_approval), settings.approval_ttl)
        if self.approvals.required and not self.auth.enabled:
            raise SettingsError("--require-approval needs --auth-file: without tokens all operators are one")
        # BranchHistory: every XA code a branch answered, for the console and the REST API.
        #: The log itself, under the history wrapper: the takeover loop needs to see an etcd log.
        self.txlog = txlog or _open_log(settings, self.node_id)
        self.engine = Engine(settings, BranchHistory(self.txlog), self.node_id)
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None
        self.http: HttpServer | None = None
        self.grpc_port = 0
        #: Set once the log has stopped and the coordinator has fenced itself.
        self.log_stopped = asyncio.Event()
        self._watcher: asyncio.Task[None] | None = None
        #: Reloads the token file on SIGHUP (see ``run``) and when it changes; None without one.
        self.auth_file: AuthFileWatcher | None = None
        self._auth_poll: asyncio.Task[None] | None = None
        self._services: tuple[str, ...] = ()
        #: This replica's part in a cluster of replicas on etcd; None on the embedded log.
        self.cluster: cluster.Cluster | None = None

    async def start(self) -> None:
        await self.engine.start()
        _remember_node(self.settings.data_dir, self.node_id)
        s = self.settings
        self.cluster = cluster.attach(
            self.engine,
            self.txlog,
            # Replicas call each other with their own certificate; --tls-client-ca verifies the other.
            credentials=tls.channel_credentials(s.tls_client_ca, s.tls_cert, s.tls_key) if self.tls else None,
            timeout=s.commit_wait + 2 * s.call_timeout,
        )
        limit = self.settings.max_message_bytes
        # No server interceptor: the services come wrapped by CallerInterceptor once per method.
        self.server = grpc.aio.server(
            options=[
                *SERVER_OPTIONS,
                ("grpc.max_receive_message_length", limit),
                ("grpc.max_send_message_length", limit),
            ],
        )
        endpoints = EndpointPolicy.from_setting(self.settings.allow_participants)
        if self.cluster is None:
            ops, servicer = AdminOps(self.engine, self.approvals), CoordinatorServicer(self.engine, endpoints)
        else:  # any replica serves any client: calls about another's transaction go to it
            ops = ReplicaAdminOps(self.engine, self.cluster.forwarder, self.approvals)
            servicer = RoutedCoordinatorServicer(self.engine, self.cluster.forwarder, endpoints)
        names = (
            coordinator_pb2.DESCRIPTOR.services_by_name["Coordinator"].full_name,
            admin_pb2.DESCRIPTOR.services_by_name["Admin"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        services = Services()
        services.add(coordinator_pb2_grpc.add_CoordinatorServicer_to_server, servicer)
        services.add(admin_pb2_grpc.add_AdminServicer_to_server, AdminServicer(ops))
        services.add(health_pb2_grpc.add_HealthServicer_to_server, self.health)
        # What reflection.enable_server_reflection registers on a grpc.aio server, through the guard.
        services.add(
            reflection_pb2_grpc.add_ServerReflectionServicer_to_server,
            reflection.aio.ReflectionServicer(names),
        )
        await register_guarded(self.server, services, CallerInterceptor(self.auth))
        check_free(self.settings.listen, "--listen")
        try:
            if self.tls:
                creds = tls.server_credentials(self.settings)
                self.grpc_port = self.server.add_secure_port(self.settings.listen, creds)
            else:
                self.grpc_port = self.server.add_insecure_port(self.settings.listen)
        except RuntimeError:  # grpc's "Failed to bind"
            self.grpc_port = 0
        if not self.grpc_port:
            raise OSError(f"--listen {self.settings.listen}: cannot listen there (in use, or not an address)")
        await self.server.start()
        try:
            self.http = HttpServer(
                self.settings.http_listen,
                self.engine,
                ops=ops,
                auth=self.auth,
                ssl_context=tls.server_ssl_context(self.settings) if self.tls else None,
            )
            await self.http.start()
        except OSError as err:
            # Stop what started, on this loop: a gRPC server left for the garbage collector after the
            # loop closes prints a traceback below the one-line error.
            await self.server.stop(None)
            raise OSError(f"--http-listen {self.settings.http_listen}: {err.strerror or err}") from None
        self._services = names[:2]
        if self.cluster is not None:
            await self.cluster.publish(*self._advertised())
        await self._set_health(health_pb2.HealthCheckResponse.SERVING)
        self._watcher = asyncio.get_running_loop().create_task(self._watch_log())
        if self.settings.auth_file is not None:
            self.auth_file = AuthFileWatcher(self.auth, self.settings.auth_file, self.engine)
            self._auth_poll = asyncio.get_running_loop().create_task(self.auth_file.watch())
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

    def _advertised(self) -> tuple[str, str]:
        """(gRPC, HTTP) addresses where the other replicas and operators reach this one: the
        --advertise settings, else the listen addresses with the ports bound (a wildcard host
        replaced by this machine's name)."""
        assert self.http is not None

        def reachable(listen: str, port: int) -> str:
            host = Address.parse(listen, listen=True).host
            host = socket.gethostname() if host in ("0.0.0.0", "::") else host
            return str(Address(host, port))

        grpc_address = self.settings.advertise or reachable(self.settings.listen, self.grpc_port)
        http_address = self.settings.http_advertise or reachable(self.settings.http_listen, self.http.port)
        return grpc_address, http_address

    async def _set_health(self, status: int) -> None:
        """``status``: a HealthCheckResponse serving status (SERVING, NOT_SERVING)."""
        for name in ("", *self._services):
            await self.health.set(name, status)

    async def _watch_log(self) -> None:
        """Fence the engine and turn health to NOT_SERVING as soon as the log stops."""
        stopped = await self.engine.log.watch(LOG_CHECK_INTERVAL)
        self.engine.fence(stopped)
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        log.critical(
            "%s. Health is NOT_SERVING; exiting with code %d in %.0fs so that a supervisor restarts "
            "the coordinator on the log as it is on disk (see docs/operations.md)",
            stopped.message,
            EXIT_LOG_STOPPED,
            LOG_STOP_GRACE,
        )
        self.log_stopped.set()

    async def stop(self, grace: float = 2.0) -> None:
        for task in (self._watcher, self._auth_poll):
            if task is not None:
                task.cancel()
        if self.cluster is not None:
            await self.cluster.close()
        await self.health.enter_graceful_shutdown()
        if self.http is not None:
            await self.http.stop()
        if self.server is not None:
            await self.server.stop(grace)
        try:
            await self.engine.stop()
        except LogStopped as err:  # the last flush found the log gone: already reported, or say so now
            if not self.log_stopped.is_set():
                log.critical("%s", err.message)


async def run(settings: Settings) -> int:
    """Serve until SIGINT/SIGTERM (exit status 0) or until the log stops (``EXIT_LOG_STOPPED``);
    SIGHUP reloads the token file."""
    coordinator = Coordinator(settings)
    await coordinator.start()
    heap.settle()
    loop = asyncio.get_running_loop()
    reloads: set[asyncio.Task[None]] = set()

    def hangup() -> None:
        if coordinator.auth_file is None:  # not a reason to exit, SIGHUP's default
            log.info("SIGHUP: no auth file (--auth-file) to reload")
            return
        task = loop.create_task(coordinator.auth_file.reload("SIGHUP"))
        reloads.add(task)  # held until done: the loop keeps only weak references to tasks
        task.add_done_callback(reloads.discard)

    loop.add_signal_handler(signal.SIGHUP, hangup)
    async with stop_signals() as stop:
        waits = [asyncio.ensure_future(event.wait()) for event in (stop, coordinator.log_stopped)]
        await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        status = 0
        if coordinator.log_stopped.is_set():
            status = EXIT_LOG_STOPPED
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), LOG_STOP_GRACE)
        for waiting in waits:
            waiting.cancel()
        log.info("shutting down")
        await coordinator.stop()
    return status
