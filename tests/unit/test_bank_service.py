"""The bank example's account service: its options reach the resource manager it opens."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from xatm.coordinator.tools.bank import account_service
from xatm.participant.agent.server import Resource


def test_the_pool_size_reaches_the_resource_manager(monkeypatch: pytest.MonkeyPatch) -> None:
    opened: list[dict[str, Any]] = []

    def open_rm(self: Resource, rm_id: str, **options: Any) -> object:
        opened.append({"kind": self.kind, "rm_id": rm_id, **options})
        raise RuntimeError("opened")  # stop here: no database behind it

    monkeypatch.setattr(Resource, "open", open_rm)
    for pool_size in (None, 8):
        with pytest.raises(RuntimeError, match="opened"):
            if pool_size is None:
                account_service.open_ledger("bank-a", "postgresql://bank@db:5432/bank_a")
            else:
                account_service.open_ledger("bank-a", "postgresql://bank@db:5432/bank_a", pool_size=pool_size)
    assert [o["pool_size"] for o in opened] == [account_service.POOL_SIZE, 8]
    assert {o["kind"] for o in opened} == {"postgresql"}


@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_a_pool_size_below_one_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], value: str
) -> None:
    argv = ["account_service", "--name", "a", "--listen", "127.0.0.1:7101", "--db", "x.db"]
    monkeypatch.setattr(sys, "argv", [*argv, "--coordinator", "127.0.0.1:7070", "--pool-size", value])
    with pytest.raises(SystemExit) as exited:
        account_service.main()
    assert exited.value.code == 2
    assert "--pool-size: expected a whole number >= 1" in capsys.readouterr().err
