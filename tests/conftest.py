"""Shared fixtures, and the test tiers. Multi-process systems live in tests/bank_system.py.

Every test belongs to one tier, given by the folder of tests/ it lives in and marked here at
collection with a marker of the same name:

- ``tests/unit``: in this process, no processes started;
- ``tests/component``: the coordinator engine in this process on a memory log with fake
  participants;
- ``tests/system``: starts processes or external services (coordinators, participants,
  PostgreSQL, Prometheus, command-line tools).

``pytest -m "not system"`` runs the fast tiers. A test outside the system tier that starts a
process is stopped at that point with an error saying to move it to tests/system, so the fast
tiers stay fast. A test in no tier folder, or marked with a tier other than its folder's,
fails with what to do.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bank_system import BankSystem
from tests.certs import Certs, make_certs
from tests.pgcluster import PgCluster
from xatm.participant import failpoints
from xatm.participant.client.context import use

#: The checkout: child processes the tests start import ``tests.*`` service modules (and the
#: checkout's ``xatm``) from here, whatever directory pytest was started in.
REPO = Path(__file__).resolve().parent.parent
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))


@pytest.fixture(autouse=True)
def _no_failpoints_leak() -> Iterator[None]:
    yield
    failpoints.disarm()


@pytest.fixture(autouse=True)
def _no_logging_setup_leak() -> Iterator[None]:
    """What a server's log set-up changes for the whole process (the root logger's handlers and
    level, warnings routed to logging, the thread and unraisable hooks) is put back after each
    test: left in place, ``logging.captureWarnings`` keeps the previous test's warning recorder
    and a later test's warnings reach no log."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level, threading.excepthook, sys.unraisablehook)
    yield
    root.handlers[:], level, threading.excepthook, sys.unraisablehook = saved
    root.setLevel(level)
    logging.captureWarnings(False)


@pytest.fixture(autouse=True)
def _no_transaction_leak() -> Iterator[None]:
    """A transaction a test began and never completed stays out of the next test's thread."""
    with use(None):
        yield


@pytest.fixture
def bank_system(tmp_path: Path) -> Iterator[BankSystem]:
    """A started coordinator with bank-a (alice=1000) and bank-b (bob=1000)."""
    system = BankSystem(tmp_path).start()
    yield system
    system.stop()


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    """A CA with server and client certificates, made once per module that uses them."""
    return make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """One throwaway PostgreSQL cluster per session; deadlock_timeout is short so deadlock tests are quick."""
    cluster = PgCluster({"deadlock_timeout": "100ms"})
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture(scope="session")
def pg_dsn(pg_cluster: PgCluster) -> str:
    return pg_cluster.create_database("xatm_test")


# ----------------------------------------------------------------- tiers

#: The tiers, each a folder of tests/ and a marker.
TIERS = ("unit", "component", "system")
TESTS = Path(__file__).resolve().parent

#: Audit events (see ``sys.addaudithook``) that start a process.
_SPAWN_EVENTS = frozenset(
    {"subprocess.Popen", "os.system", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn"}
)
#: The test running now if it must not start processes; None while processes are allowed.
_guarded: list[pytest.Item | None] = [None]
#: Why a collected test is in no tier or in two, for the tests that are.
_MISPLACED = pytest.StashKey[str]()


class ProcessOutsideSystemTier(RuntimeError):
    """A test outside the system tier tried to start a process."""


def tier_at(path: Path) -> str | None:
    """The tier of the test module at ``path``: the tier folder of tests/ holding it, else None."""
    try:
        parts = path.resolve().relative_to(TESTS).parts
    except ValueError:  # not under tests/ at all
        return None
    return parts[0] if len(parts) > 1 and parts[0] in TIERS else None


def misplaced(path: Path, markers: Iterable[str]) -> str | None:
    """Why a test at ``path`` carrying the markers named ``markers`` is in no tier or in two; None
    when it is in exactly one."""
    tier = tier_at(path)
    if tier is None:
        return (
            f"{path.name} is in no tier: move it to tests/unit (in process), tests/component (the "
            "engine on fakes) or tests/system (starts processes)"
        )
    others = sorted(set(markers) & set(TIERS) - {tier})
    if others:
        return (
            f"{path.name} is in tests/{tier} but marked {' and '.join(others)}: the folder gives the "
            f"tier, so drop the marker or move it to tests/{others[0]}"
        )
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        problem = misplaced(item.path, (mark.name for mark in item.iter_markers()))
        tier = tier_at(item.path)
        if problem is not None:
            item.stash[_MISPLACED] = problem
        elif tier is not None and not item.get_closest_marker(tier):
            item.add_marker(tier)


def _refuse_processes(event: str, args: tuple[Any, ...]) -> None:
    item = _guarded[0]
    if item is not None and event in _SPAWN_EVENTS:
        what = repr(args[1] if event == "subprocess.Popen" else args)
        raise ProcessOutsideSystemTier(
            f"{item.nodeid} starts a process ({event} {what[:120]}) but is not in the system tier: "
            "move it to tests/system"
        )


def pytest_configure(config: pytest.Config) -> None:
    sys.addaudithook(_refuse_processes)  # an audit hook stays for the process; it reads ``_guarded``


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Before the test's fixtures are set up, so a fixture starting a process is caught too.
    in_system = tier_at(item.path) == "system" and _MISPLACED not in item.stash
    _guarded[0] = None if in_system else item
    if _MISPLACED in item.stash:
        pytest.fail(item.stash[_MISPLACED], pytrace=False)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    # Off before teardown: the last test's teardown also ends session fixtures (PostgreSQL).
    _guarded[0] = None
