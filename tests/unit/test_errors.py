"""The error hierarchy and its one table: the contract's table, gRPC's codes, every surface."""

from __future__ import annotations

import re

import grpc
import pytest

from tests.conftest import REPO
from xatm.participant import errors
from xatm.participant.errors import SURFACES, UNLISTED, Status, XatmError, error_for, surface
from xatm.participant.runtime.grpc_status import from_rpc_error, status_of, to_grpc

CONTRACT = REPO / "docs" / "contract.md"
_ROW = re.compile(r"^\| [^|]+ \| `([A-Z_]+)` \| (\d{3}) \| (\d+) \|$", re.MULTILINE)


def test_the_contract_tabulates_exactly_the_table() -> None:
    section = CONTRACT.read_text().split("## Errors everywhere", 1)[1].split("\n## ", 1)[0]
    documented = {(name, int(http), int(code)) for name, http, code in _ROW.findall(section)}
    table = {(status.name, row.http, row.exit_code) for status, row in SURFACES.items()}
    assert documented == table
    assert "| anything else (an internal error) | its own code | 500 | 1 |" in section
    assert (UNLISTED.http, UNLISTED.exit_code) == (500, 1)


def test_status_is_grpcs_canonical_code_by_name_and_number() -> None:
    assert [s.name for s in Status] == [c.name for c in grpc.StatusCode]
    for status in Status:
        assert to_grpc(status).value[0] == status.value
        assert status_of(to_grpc(status)) is status
    assert status_of(None) is Status.UNKNOWN


@pytest.mark.parametrize("status", list(Status))
def test_every_status_has_one_error_and_one_surface(status: Status) -> None:
    error = error_for(status, "why")
    assert (error.status, error.message, str(error)) == (status, "why", "why")
    assert isinstance(error, XatmError)
    assert surface(status) == SURFACES.get(status, UNLISTED)
    if status in SURFACES and status is not Status.OK:
        assert type(error) is not XatmError, f"{status.name} has a row but no class of its own"


def test_each_class_of_the_hierarchy_names_its_status() -> None:
    classes = [getattr(errors, name) for name in errors.__all__ if name.endswith("Error")]
    assert XatmError in classes
    for cls in classes:
        if cls is not XatmError:
            assert issubclass(cls, XatmError)
            assert error_for(cls.status, "x").__class__ is cls


class _Failed(grpc.RpcError):
    def __init__(self, code: grpc.StatusCode | None, details: str | None) -> None:
        self._code, self._details = code, details

    def code(self) -> grpc.StatusCode | None:
        return self._code

    def details(self) -> str | None:
        return self._details


def test_a_failed_call_becomes_the_hierarchys_error() -> None:
    refused = from_rpc_error(_Failed(grpc.StatusCode.NOT_FOUND, "unknown transaction n1.x"))
    assert (type(refused), refused.message) == (errors.NotFoundError, "unknown transaction n1.x")
    bare = from_rpc_error(_Failed(grpc.StatusCode.DATA_LOSS, None))
    assert (type(bare), bare.status, bare.message) == (XatmError, Status.DATA_LOSS, "DATA_LOSS")
    assert from_rpc_error(_Failed(None, None)).status is Status.UNKNOWN
