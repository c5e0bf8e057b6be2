"""The transfer initiator: one global transaction that debits one bank and credits another."""

from __future__ import annotations

import os
from dataclasses import dataclass

import grpc

from xatm.coordinator.tools.bank._proto import bank_pb2, bank_pb2_grpc
from xatm.participant import (
    TransactionError,
    TransactionManager,
    TransactionOutcomeUnknown,
    TransactionRolledBack,
    XatmError,
    intercept_channel,
)
from xatm.participant.xa import CHANNEL_OPTIONS


@dataclass
class TransferResult:
    gtrid: str
    #: "committed", "rolledback", "heuristic" (mixed or hazard), or "unknown" when the reply was lost.
    outcome: str
    detail: str

    @property
    def committed(self) -> bool:
        return self.outcome == "committed"


class Bank:
    """Clients of the two account services, with the transaction context propagated."""

    def __init__(self, coordinator: str, source: str, target: str, *, token: str | None = None):
        """``token``: a service-role token when the coordinator has an auth file (default $XATM_TOKEN)."""
        self.tm = TransactionManager(coordinator, token=token or os.environ.get("XATM_TOKEN") or None)
        self._channels = [grpc.insecure_channel(t, options=CHANNEL_OPTIONS) for t in (source, target)]
        self.source = bank_pb2_grpc.AccountsStub(intercept_channel(self._channels[0]))
        self.target = bank_pb2_grpc.AccountsStub(intercept_channel(self._channels[1]))

    def transfer(self, src: str, dst: str, amount: int, *, timeout: float | None = None) -> TransferResult:
        """Move ``amount``; commits in both banks or in neither."""
        tx = self.tm.begin(timeout=timeout)
        try:
            with tx:
                self.source.Apply(bank_pb2.ApplyRequest(account=src, amount=-amount), timeout=10)
                self.target.Apply(bank_pb2.ApplyRequest(account=dst, amount=amount), timeout=10)
        except TransactionRolledBack as err:
            return TransferResult(tx.gtrid, "rolledback", str(err))
        except TransactionOutcomeUnknown as err:
            return TransferResult(tx.gtrid, "unknown", str(err))
        except TransactionError as err:  # heuristic mixed or hazard
            return TransferResult(tx.gtrid, "heuristic", str(err))
        except XatmError as err:
            return TransferResult(tx.gtrid, "unknown", f"{err.status.name}: {err.message}")
        return TransferResult(tx.gtrid, "committed", "committed")

    def balances(self, src: str, dst: str) -> tuple[int, int]:
        a = self.source.Balance(bank_pb2.BalanceRequest(account=src), timeout=10).balance
        b = self.target.Balance(bank_pb2.BalanceRequest(account=dst), timeout=10).balance
        return a, b

    def close(self) -> None:
        self.tm.close()
        for channel in self._channels:
            channel.close()
