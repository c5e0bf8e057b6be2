"""The ended-branch rule of tests/test_rm_contract.py, held against MariaDB.

The contract's scenarios (imported from there, so they are the very same tests) run against two
more subjects, with a real coordinator process:

* ``mariadb``: a MariaRM with a pool of ONE session, linked into this process through a
  ParticipantStub; the handle is ``rm.guard(xid)``'s connection.
* ``mariadb_agent``: ``xatm participant --resource mysql://...`` with a pool of one, as a real
  process; the handle is the transaction's metadata on Execute calls.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.mariadb import MariaDB, mysql_url
from tests.system.test_rm_contract import (  # the scenarios and their fixtures, run here on MariaDB subjects
    Linked,
    SqlAgentSubject,
    SqlDialect,
    SqlSubject,
    System,
    key,
    running_agent,
    system,
    test_call_running_when_the_branch_ends,
    test_handle_kept_into_the_next_transaction,
    test_work_after_one_phase_commit,
    test_work_after_the_coordinators_rollback,
    test_work_after_the_transaction_timed_out,
    test_work_after_two_phase_commit,
)
from xatm.participant.stores.mysql import MariaRM

__all__ = [
    "key",
    "system",
    "test_call_running_when_the_branch_ends",
    "test_handle_kept_into_the_next_transaction",
    "test_work_after_one_phase_commit",
    "test_work_after_the_coordinators_rollback",
    "test_work_after_the_transaction_timed_out",
    "test_work_after_two_phase_commit",
]

UPSERT = "INSERT INTO kv VALUES (%s, %s) ON DUPLICATE KEY UPDATE v = VALUES(v)"
# The same write, still running well after the scenarios' transaction timeout.
SLOW_UPSERT = (
    "INSERT INTO kv SELECT %s, %s FROM (SELECT SLEEP(8)) AS pause ON DUPLICATE KEY UPDATE v = VALUES(v)"
)


def kv_database(server: MariaDB, name: str) -> str:
    url = server.create_database(name)
    with server.connect(name) as conn, conn.cursor() as cur:
        cur.execute("CREATE TABLE kv (k varchar(100) PRIMARY KEY, v int NOT NULL) ENGINE=InnoDB")
    return url


def maria_dialect(server: MariaDB, database: str) -> SqlDialect:
    def read(key: str) -> int | None:
        with server.connect(database) as conn, conn.cursor() as cur:
            cur.execute("SELECT v FROM kv WHERE k = %s", (key,))
            row = cur.fetchone()
        return None if row is None else int(row[0])

    return SqlDialect(UPSERT, SLOW_UPSERT, read)


@pytest.fixture(scope="module")
def mariadb_subject(system: System, mariadb: MariaDB) -> Iterator[SqlSubject]:
    url = kv_database(mariadb, "contract_rm")
    linked = Linked.serve(MariaRM(url, "contract-maria", pool_size=1), system.coordinator.address)
    yield SqlSubject(linked, MariaRM, maria_dialect(mariadb, "contract_rm"))
    linked.close()


@pytest.fixture(scope="module")
def mariadb_agent_subject(
    system: System, mariadb: MariaDB, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[SqlAgentSubject]:
    kv_database(mariadb, "contract_agent")
    root = tmp_path_factory.mktemp("agent-maria")
    with running_agent(system, root, mysql_url(mariadb, "contract_agent")) as agent:
        yield SqlAgentSubject(agent, maria_dialect(mariadb, "contract_agent"))


@pytest.fixture(params=["mariadb", "mariadb_agent"])
def subject(request: pytest.FixtureRequest) -> Any:
    return request.getfixturevalue(f"{request.param}_subject")
