"""Throwaway PostgreSQL clusters: initdb into a temp dir, start, restart, crash, destroy.

For the tests and ``xatm bench --postgresql``. Tests run against a real server because the
behaviour under test (PREPARE TRANSACTION, recovery after a crash, SQLSTATEs) lives in
PostgreSQL, not in our code. A missing installation is an error, never a skip: a green run
must mean the RM was exercised. Needs the ``postgresql`` extra (psycopg).
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

import psycopg
from psycopg import sql

__all__ = ["PgCluster", "PgClusterError", "find_bindir", "pg_url", "prepared"]

_OS_USER = "postgres"  # PostgreSQL refuses to run as root


class PgClusterError(RuntimeError):
    """The throwaway cluster could not be created or controlled."""


def find_bindir() -> Path:
    """Where initdb and pg_ctl are: $XATM_PG_BINDIR, `pg_config --bindir`, or the newest Debian one."""
    candidates: list[Path] = []
    if env := os.environ.get("XATM_PG_BINDIR"):
        candidates.append(Path(env))
    if pg_config := shutil.which("pg_config"):
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True, check=False)
        if result.returncode == 0:
            candidates.append(Path(result.stdout.strip()))
    debian = sorted(
        glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name), reverse=True
    )
    candidates += [Path(p) for p in debian if Path(p).parent.name.isdigit()]
    for bindir in candidates:
        if (bindir / "initdb").is_file() and (bindir / "pg_ctl").is_file():
            return bindir
    raise PgClusterError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install the Debian package `postgresql` "
        "(apt-get install postgresql) or point XATM_PG_BINDIR at the directory holding them"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class PgCluster:
    """A private cluster on 127.0.0.1:<free port>, superuser ``postgres`` with trust auth.

    Created and started by the constructor; ``stop``/``start`` restart it on the same data
    directory and port (to simulate crashes and restarts); ``destroy`` removes everything.
    """

    def __init__(
        self, settings: Mapping[str, str | int] | None = None, *, max_prepared_transactions: int = 20
    ):
        self.bindir = find_bindir()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres and shutil.which("runuser") is None:
            raise PgClusterError(
                "running as root needs `runuser` (util-linux) to start PostgreSQL as postgres"
            )
        self.root = Path(tempfile.mkdtemp(prefix="xatm-pg-"))
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "sock"
        self.log_file = self.root / "server.log"
        self.port = _free_port()
        self.running = False
        try:
            self.socket_dir.mkdir()
            if self._as_postgres:
                shutil.chown(self.root, _OS_USER, _OS_USER)
                shutil.chown(self.socket_dir, _OS_USER, _OS_USER)
            self._run(
                "initdb",
                "-D",
                str(self.data_dir),
                "-U",
                "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            )
            config = {
                "listen_addresses": "127.0.0.1",
                "port": self.port,
                "unix_socket_directories": str(self.socket_dir),
                "max_prepared_transactions": max_prepared_transactions,
                "fsync": "on",
                "max_connections": 60,
                **(settings or {}),
            }
            with (self.data_dir / "postgresql.conf").open("a") as conf:
                for name, value in config.items():
                    conf.write(f"{name} = '{value}'\n")
            self.start()
        except BaseException:
            self.destroy()
            raise

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if self._as_postgres:
            command = ["runuser", "-u", _OS_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, check=False, cwd=self.root)
        if result.returncode != 0:
            log = self.log_file.read_text(errors="replace")[-2000:] if self.log_file.exists() else ""
            raise PgClusterError(
                f"{tool} {' '.join(args)} failed ({result.returncode}): "
                f"{result.stderr.strip() or result.stdout.strip()}\n{log}"
            )

    def start(self) -> None:
        """Start, or restart after ``stop`` on the same data; waits until it accepts connections."""
        self._run("pg_ctl", "start", "-D", str(self.data_dir), "-l", str(self.log_file), "-w", "-t", "60")
        self.running = True

    def stop(self, mode: str = "fast") -> None:
        """``fast`` rolls back sessions and checkpoints; ``immediate`` is a crash (recovery on next start)."""
        if mode not in ("smart", "fast", "immediate"):
            raise ValueError(f"unknown pg_ctl stop mode {mode!r}")
        self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", mode, "-w", "-t", "60")
        self.running = False

    def destroy(self) -> None:
        """Stop the server if it runs and delete its files; safe to call twice."""
        if self.running:
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def dsn(self, dbname: str = "postgres") -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={dbname} connect_timeout=10"

    def connect(self, dbname: str = "postgres") -> psycopg.Connection:
        """An autocommit superuser connection, for set-up and for inspecting the server."""
        return psycopg.connect(self.dsn(dbname), autocommit=True)

    def create_database(self, name: str) -> str:
        """Create a database and return its DSN."""
        with self.connect() as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.dsn(name)

    def __enter__(self) -> PgCluster:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.destroy()


def pg_url(cluster: PgCluster, dbname: str) -> str:
    """A database of a throwaway cluster as a ``postgresql://`` URI (``--resource``, ``--store``)."""
    return f"postgresql://postgres@127.0.0.1:{cluster.port}/{dbname}?connect_timeout=10"


def prepared(cluster: PgCluster, dbname: str | None = None) -> set[str]:
    """The gids of prepared transactions in the cluster (in one database of it, if named)."""
    with cluster.connect() as conn:
        rows = conn.execute("SELECT database, gid FROM pg_prepared_xacts").fetchall()
    return {gid for database, gid in rows if dbname in (None, database)}
