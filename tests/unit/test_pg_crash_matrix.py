"""The PostgreSQL crash matrix's table of branches left prepared names only cases of the matrix.

The matrix itself, on real processes and two PostgreSQL clusters, is in
tests/system/test_pg_crash_matrix.py; its cases are those of tests/system/test_crash_matrix.py.
"""

from __future__ import annotations

from tests.system.test_crash_matrix import CASES
from tests.system.test_pg_crash_matrix import PREPARED_WHILE_DOWN


def test_the_matrix_checks_prepared_branches_of_real_cases() -> None:
    ids = {(c.failpoint, c.process, c.scenario) for c in CASES}
    assert set(PREPARED_WHILE_DOWN) <= ids
