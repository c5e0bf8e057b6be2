"""The public names of ``xatm.participant`` and ``xatm.coordinator``: listed, importable, used by the docs.

Changing either list is a change of the public API: this test must be edited with it, on purpose.
"""

from __future__ import annotations

import re

import pytest

import xatm.coordinator
import xatm.participant
from tests.conftest import REPO

PARTICIPANT = {
    "AioServerInterceptor", "AsyncParticipantServicer", "AsyncSqlAlchemyRM", "AsyncTransaction",
    "AsyncTransactionManager",
    "BranchEnded", "ClientInterceptor", "EnlistError", "FailedPreconditionError", "InternalError",
    "InvalidArgumentError", "MariaRM", "MemoryRM", "NotFoundError", "ParticipantServicer", "ParticipantStub",
    "PermissionDeniedError", "PostgresRM", "ResourceExhaustedError", "ResourceManager",
    "ServerInterceptor", "SqlAlchemyRM", "SqliteRM", "Status", "Transaction", "TransactionError",
    "TransactionHeuristicHazard", "TransactionHeuristicMixed", "TransactionManager",
    "TransactionOutcomeUnknown", "TransactionRolledBack", "TxContext", "TxOutcome", "TxStatus",
    "UnauthenticatedError", "UnavailableError", "XaCode", "XaError", "XatmError", "Xid",
    "aio_client_interceptors", "current", "intercept_channel",
}  # fmt: skip
COORDINATOR = {
    "Coordinator", "Engine", "FileWal", "LogCorrupt", "LogLocked", "LogMissing", "LogStopped",
    "MemoryLog", "Settings", "TxLog", "resolve", "run",
}  # fmt: skip


@pytest.mark.parametrize(
    ("package", "expected"), [(xatm.participant, PARTICIPANT), (xatm.coordinator, COORDINATOR)]
)
def test_all_lists_exactly_the_public_names_and_each_resolves(package: object, expected: set[str]) -> None:
    public = package.__all__  # type: ignore[attr-defined]
    assert len(public) == len(set(public)) and set(public) == expected
    for name in public:
        value = getattr(package, name)
        assert getattr(value, "__name__", name) == name
        assert name in dir(package)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        package.nope  # type: ignore[attr-defined]  # noqa: B018


def test_every_error_is_one_hierarchy() -> None:
    for name in PARTICIPANT | COORDINATOR:
        value = getattr(xatm.participant, name, None) or getattr(xatm.coordinator, name)
        if isinstance(value, type) and issubclass(value, BaseException):
            assert issubclass(value, xatm.participant.XatmError), name


def test_the_docs_import_public_names_only() -> None:
    texts = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
    pattern = re.compile(r"^from xatm\.(participant|coordinator) import ([\w, ]+)$", re.MULTILINE)
    found = 0
    for path in texts:
        for package, names in pattern.findall(path.read_text()):
            allowed = PARTICIPANT if package == "participant" else COORDINATOR
            for name in (n.strip() for n in names.split(",")):
                found += 1
                assert name in allowed, f"{path.name} imports {name} from xatm.{package}"
        assert not re.search(r"^(from|import) (participant|coordinator)\b", path.read_text(), re.MULTILINE)
    assert found >= 3
