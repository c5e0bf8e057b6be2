"""Throwaway MariaDB servers for tests: mariadb-install-db into a temp dir, start, SIGKILL, restart, destroy.

Like tests/pgcluster.py: the behaviour under test (XA PREPARE surviving a crash, XA RECOVER,
the server's error codes) lives in the server, so the tests run a real one. A missing
installation is an error, never a skip.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import pymysql

__all__ = ["MariaDB", "MariaDBError", "MariaStore", "mysql_url", "xa_prepared"]

_OS_USER = "mysql"  # mariadbd refuses to run as root unless told to; run it as its service user
_START_TIMEOUT_S = 60.0


class MariaDBError(RuntimeError):
    """The test server could not be created or controlled."""


def _tool(*names: str) -> str:
    for name in names:
        for found in (shutil.which(name), f"/usr/sbin/{name}", f"/usr/bin/{name}"):
            if found and Path(found).is_file():
                return found
    raise MariaDBError(
        f"MariaDB server binaries ({' or '.join(names)}) not found: install the Debian package "
        "`mariadb-server` (apt-get install mariadb-server)"
    )


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MariaDB:
    """A private server on 127.0.0.1:<free port>, user ``root`` without a password over TCP.

    Created and started by the constructor; ``kill`` is a crash (SIGKILL, InnoDB recovers on the
    next ``start``), ``start`` restarts it on the same data directory and port; ``destroy``
    removes everything.
    """

    def __init__(self, *, lock_wait_timeout_s: int = 5) -> None:
        self.mariadbd = _tool("mariadbd", "mysqld")
        install_db = _tool("mariadb-install-db", "mysql_install_db")
        self._as_mysql = os.geteuid() == 0
        if self._as_mysql and shutil.which("runuser") is None:
            raise MariaDBError("running as root needs `runuser` (util-linux) to start MariaDB as mysql")
        self.root = Path(tempfile.mkdtemp(prefix="xatm-mariadb-"))
        self.data_dir = self.root / "data"
        self.socket = self.root / "mariadb.sock"
        self.log_file = self.root / "server.log"
        self.port = _free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._lock_wait_timeout_s = lock_wait_timeout_s
        try:
            if self._as_mysql:
                shutil.chown(self.root, _OS_USER, _OS_USER)
            result = subprocess.run(
                self._as_user(
                    install_db,
                    "--no-defaults",
                    f"--datadir={self.data_dir}",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                ),
                capture_output=True,
                text=True,
                check=False,
                cwd=self.root,
            )
            if result.returncode != 0:
                raise MariaDBError(
                    f"mariadb-install-db failed ({result.returncode}): {result.stderr[-2000:]}"
                )
            self.start()
        except BaseException:
            self.destroy()
            raise

    def _as_user(self, *command: str) -> list[str]:
        return ["runuser", "-u", _OS_USER, "--", *command] if self._as_mysql else list(command)

    def start(self) -> None:
        """Start, or restart after ``kill``/``stop`` on the same data; waits until it accepts connections."""
        with self.log_file.open("ab") as log:
            self.process = subprocess.Popen(
                self._as_user(
                    self.mariadbd,
                    "--no-defaults",
                    f"--datadir={self.data_dir}",
                    f"--socket={self.socket}",
                    f"--pid-file={self.root / 'mariadbd.pid'}",
                    "--bind-address=127.0.0.1",
                    f"--port={self.port}",
                    "--skip-name-resolve",
                    f"--innodb-lock-wait-timeout={self._lock_wait_timeout_s}",
                    "--innodb-buffer-pool-size=32M",
                    "--innodb-log-file-size=16M",
                    "--max-connections=200",
                    "--innodb-flush-log-at-trx-commit=1",
                    "--sync-binlog=1",
                ),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + _START_TIMEOUT_S
        while True:
            try:
                self.connect().close()
                return
            except pymysql.err.OperationalError as exc:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    log_tail = self.log_file.read_text(errors="replace")[-2000:]
                    self.process = None
                    raise MariaDBError(f"mariadbd did not start: {exc}\n{log_tail}") from exc
                time.sleep(0.1)

    def kill(self) -> None:
        """A crash: SIGKILL to mariadbd, no shutdown of InnoDB."""
        if self.process is not None:
            self._signal(signal.SIGKILL)
            self.process.wait(timeout=30)
            self.process = None

    def stop(self) -> None:
        """A clean shutdown (SIGTERM)."""
        if self.process is not None:
            self._signal(signal.SIGTERM)
            self.process.wait(timeout=60)
            self.process = None

    def _signal(self, sig: signal.Signals) -> None:
        assert self.process is not None
        # Under runuser the server is a child of our child: signal the whole session we started.
        os.killpg(self.process.pid, sig)

    def destroy(self) -> None:
        """Kill the server if it runs and delete its files; safe to call twice."""
        self.kill()
        shutil.rmtree(self.root, ignore_errors=True)

    def connect(self, database: str | None = None) -> pymysql.connections.Connection:
        """An autocommit root connection, for set-up and for inspecting the server."""
        return pymysql.connect(
            host="127.0.0.1",
            port=self.port,
            user="root",
            database=database,
            autocommit=True,
            connect_timeout=10,
        )

    def create_database(self, name: str) -> str:
        """Create a database and return its ``mysql://`` URL."""
        with self.connect() as conn, conn.cursor() as cur:
            cur.execute(f"CREATE DATABASE `{name}`")
        return mysql_url(self, name)

    def __enter__(self) -> MariaDB:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.destroy()


def mysql_url(server: MariaDB, database: str) -> str:
    """A database of a test server as a ``mysql://`` URL (``--resource``, ``--store``)."""
    return f"mysql://root@127.0.0.1:{server.port}/{database}"


def xa_prepared(server: MariaDB) -> list[tuple[int, bytes, bytes]]:
    """Every prepared XA branch of the server: (formatID, gtrid, bqual), any owner."""
    with server.connect() as conn, conn.cursor() as cur:
        cur.execute("XA RECOVER")
        rows = cur.fetchall()
    return [(int(fid), bytes(data)[:glen], bytes(data)[glen : glen + blen]) for fid, glen, blen, data in rows]


@dataclass(frozen=True)
class MariaStore:
    """A bank's accounts in a database of a test MariaDB server (``--store mysql://...``), for
    tests/bank_system.py; read directly, beside the running bank."""

    server: MariaDB
    database: str

    def argv(self) -> list[str]:
        return ["--store", mysql_url(self.server, self.database)]

    def _read(self, query: str) -> list[tuple[Any, ...]]:
        with self.server.connect(self.database) as conn, conn.cursor() as cur:
            cur.execute(query)
            return list(cur.fetchall())

    def accounts(self) -> dict[str, int]:
        return {str(name): int(balance) for name, balance in self._read("SELECT name, balance FROM accounts")}

    def leftovers(self) -> dict[str, object]:
        """Prepared XA branches of the server (any XID) and open InnoDB transactions (which hold
        the row locks; a prepared branch's is among them)."""
        prepared = xa_prepared(self.server)
        transactions = self._read(
            "SELECT trx_mysql_thread_id, trx_state, trx_rows_locked FROM information_schema.INNODB_TRX"
        )
        found = {"prepared": prepared, "transactions": transactions}
        return {what: rows for what, rows in found.items() if rows}
