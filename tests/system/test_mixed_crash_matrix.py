"""The crash matrix with bank-a on PostgreSQL and bank-b on MariaDB.

Every case of tests/test_crash_matrix.py -- same failpoints, processes, scenarios and checks,
under the same ids -- runs with one branch a PostgreSQL transaction made durable with PREPARE
TRANSACTION and the other an XA branch of a MariaDB server. After each case the runner checks
that the transaction is final and both stores agree with the durable decision, that nothing is
left prepared (``pg_prepared_xacts`` and ``XA RECOVER`` empty) nor holding a lock, that the money
is conserved, and that a follow-up transfer commits. While a crashed process is down, the cases
whose branches must sit prepared check that they do, in each server.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg import sql

from tests.bank_system import BankSystem, PgStore
from tests.mariadb import MariaDB, MariaStore, xa_prepared
from tests.pgcluster import PgCluster, prepared
from tests.system.test_crash_matrix import CASES, Case, SharedSystem, run_case
from tests.system.test_pg_crash_matrix import PREPARED_WHILE_DOWN


class Mixed:
    """Each system gets a fresh PostgreSQL database for bank-a and a MariaDB one for bank-b."""

    def __init__(self, cluster: PgCluster, server: MariaDB):
        self.cluster, self.server = cluster, server
        self.pg_databases: list[str] = []
        self._numbers = itertools.count()

    def build(self, root: Path, coordinator_env: dict[str, str]) -> BankSystem:
        n = next(self._numbers)
        pg_db, maria_db = f"mixed_matrix_{n}_a", f"mixed_matrix_{n}_b"
        self.cluster.create_database(pg_db)
        self.pg_databases.append(pg_db)
        self.server.create_database(maria_db)
        stores = {"bank-a": PgStore(self.cluster, pg_db), "bank-b": MariaStore(self.server, maria_db)}
        return BankSystem(root, coordinator_env=coordinator_env, stores=stores)

    def release(self) -> None:
        """Leave both servers clean even after a failure (a prepared branch would fail later modules)."""
        for dbname in self.pg_databases:
            with self.cluster.connect(dbname) as conn:
                for gid in prepared(self.cluster, dbname):
                    conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
        with self.server.connect() as conn, conn.cursor() as cur:
            for fid, gtrid, bqual in xa_prepared(self.server):
                cur.execute(f"XA ROLLBACK X'{gtrid.hex()}',X'{bqual.hex()}',{fid}")


@pytest.fixture(scope="module")
def mixed(pg_cluster: PgCluster, mariadb: MariaDB) -> Iterator[Mixed]:
    holder = Mixed(pg_cluster, mariadb)
    try:
        yield holder
        left = {dbname: prepared(pg_cluster, dbname) for dbname in holder.pg_databases}
        assert not any(left.values()), f"prepared PostgreSQL transactions left behind: {left}"
        assert xa_prepared(mariadb) == [], "prepared XA branches left behind in MariaDB"
    finally:
        holder.release()


@pytest.fixture(scope="module")
def shared(mixed: Mixed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedSystem]:
    holder = SharedSystem(tmp_path_factory.mktemp("mixed-crash-matrix"), mixed.build)
    yield holder
    holder.close()


def prepared_while_down(system: BankSystem, case: Case) -> None:
    wanted = PREPARED_WHILE_DOWN.get((case.failpoint, case.process, case.scenario))
    if wanted is None:
        return
    held = {}
    for bank in wanted:
        store = system.stores[bank]
        if isinstance(store, PgStore):
            held[bank] = len(
                {gid for gid in prepared(store.cluster, store.dbname) if gid.startswith("xatm/")}
            )
        else:
            assert isinstance(store, MariaStore)
            held[bank] = len(xa_prepared(store.server))
    assert held == wanted, f"{case.id}: prepared while {case.process} is down: {held}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_crash(shared: SharedSystem, case: Case) -> None:
    run_case(shared, case, prepared_while_down)
