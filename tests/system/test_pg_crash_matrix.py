"""The crash matrix with both banks on PostgreSQL.

Every case of tests/system/test_crash_matrix.py — the same failpoints, processes and scenarios, under
the same ids — runs with bank-a's accounts in a database of the session cluster and bank-b's in
a database of a second cluster, so each branch is a PostgreSQL transaction made durable with
PREPARE TRANSACTION on a server of its own. The case runner and every check are the SQLite
matrix's; only the system differs. After each case, within a bounded wait:

* the transaction is final and every branch agrees with the durable decision (or nothing was
  applied, when the coordinator has no record: presumed abort), and the initiator was told the truth;
* ``pg_prepared_xacts`` holds nothing in either database, no session of either is left inside a
  transaction, and nothing holds a lock on ``accounts``;
* the ``accounts`` tables, queried directly, hold exactly the balances of the outcome, and the
  money in both tables together is what it was before the case;
* a follow-up transfer on the same accounts commits (every row lock was released).

While the crashed process is down, the cases whose branches must then sit prepared check that
they do, in PostgreSQL: a dead process holds nothing, the server does.

Two clusters rather than two databases of one: a cluster takes about a second to create,
and only two separate servers show that nothing couples the branches but the coordinator.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg import sql

from tests.bank_system import BankSystem, PgStore
from tests.pgcluster import PgCluster, prepared
from tests.system.test_crash_matrix import (
    BANKS,
    CASES,
    Case,
    SharedSystem,
    checkpoint_case,
    run_case,
)


class TwoClusters:
    """bank-a's databases on the session cluster, bank-b's on a cluster of this module's own.

    Each system gets a fresh pair of databases (a system replaced after a failed case starts
    clean); ``databases`` lists them all, for the final check.
    """

    def __init__(self, session: PgCluster):
        self.clusters = {"bank-a": session, "bank-b": PgCluster({"deadlock_timeout": "100ms"})}
        self.databases: list[tuple[PgCluster, str]] = []
        self._numbers = itertools.count()

    def build(self, root: Path, coordinator_env: dict[str, str]) -> BankSystem:
        n = next(self._numbers)
        stores = {}
        for name, cluster in self.clusters.items():
            dbname = f"crash_matrix_{n}_{name[-1]}"
            cluster.create_database(dbname)
            self.databases.append((cluster, dbname))
            stores[name] = PgStore(cluster, dbname)
        return BankSystem(root, coordinator_env=coordinator_env, stores=stores)

    def destroy(self) -> None:
        """Drop the module's cluster; leave the session cluster as it was found, even after a failure
        (a branch left prepared there would fail later modules' checks too)."""
        self.clusters["bank-b"].destroy()
        session = self.clusters["bank-a"]
        for dbname in (dbname for cluster, dbname in self.databases if cluster is session):
            with session.connect(dbname) as conn:
                for gid in prepared(session, dbname):
                    conn.execute(sql.SQL("ROLLBACK PREPARED {}").format(sql.Literal(gid)))
            with session.connect() as conn:
                conn.execute(sql.SQL("DROP DATABASE {} WITH (FORCE)").format(sql.Identifier(dbname)))


@pytest.fixture(scope="module")
def two_clusters(pg_cluster: PgCluster) -> Iterator[TwoClusters]:
    clusters = TwoClusters(pg_cluster)
    try:
        yield clusters
        # Every system is stopped by now: nothing of the matrix may be left prepared anywhere.
        left = {dbname: prepared(cluster, dbname) for cluster, dbname in clusters.databases}
        assert not any(left.values()), f"prepared transactions left behind: {left}"
        assert prepared(clusters.clusters["bank-b"]) == set()
    finally:
        clusters.destroy()


@pytest.fixture(scope="module")
def shared(two_clusters: TwoClusters, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SharedSystem]:
    holder = SharedSystem(tmp_path_factory.mktemp("pg-crash-matrix"), two_clusters.build)
    yield holder
    holder.close()


#: How many xatm branches each bank's database must hold prepared while the crashed process is
#: down, for the cases where that is certain. Nothing can finish them then: a bank resolves its
#: branches by asking the coordinator, and the coordinator reaches a branch only through its bank.
#: (A crashed participant's other bank may already have been told the outcome: not checked.)
PREPARED_WHILE_DOWN: dict[tuple[str, str, str], dict[str, int]] = {
    **{
        (f"coordinator.{point}", "coordinator", "transfer"): {"bank-a": 1, "bank-b": 1}
        for point in ("after_prepare", "before_decision", "after_decision")
    },
    **{
        (failpoint, bank, "transfer"): {bank: 1}
        for failpoint in ("participant.after_prepare", "participant.commit")
        for bank in BANKS
    },
}


def prepared_while_down(system: BankSystem, case: Case) -> None:
    wanted = PREPARED_WHILE_DOWN.get((case.failpoint, case.process, case.scenario))
    if wanted is None:
        return
    held = {}
    for bank in wanted:
        store = system.stores[bank]
        assert isinstance(store, PgStore)
        held[bank] = len({gid for gid in prepared(store.cluster, store.dbname) if gid.startswith("xatm/")})
    assert held == wanted, f"{case.id}: prepared in PostgreSQL while {case.process} is down: {held}"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_crash(shared: SharedSystem, case: Case) -> None:
    run_case(shared, case, prepared_while_down)


def test_checkpoint_between_decision_and_phase_two_keeps_the_decision(
    two_clusters: TwoClusters, tmp_path: Path
) -> None:
    checkpoint_case(tmp_path, two_clusters.build)
