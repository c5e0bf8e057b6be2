"""A coordinator and bank account services as real processes, for end-to-end tests."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import grpc
from prometheus_client.parser import text_string_to_metric_families

from coordinator.demo import bank_proc
from coordinator.procs import Proc, coordinator_proc
from examples.bank._proto import bank_pb2, bank_pb2_grpc
from examples.bank.transfer import Bank
from participant import intercept_channel
from participant._proto import coordinator_pb2, coordinator_pb2_grpc, xa_pb2
from participant.xa import TxStatus

#: Fast timings so failures and retries show up within a test's patience.
TEST_COORDINATOR_ENV = {
    "XATM_CALL_TIMEOUT": "1",
    "XATM_RETRY_INITIAL": "0.05",
    "XATM_RETRY_MAX": "0.3",
    "XATM_COMMIT_WAIT": "3",
    "XATM_CHECKPOINT_INTERVAL": "3600",
}
SEEDS = (("bank-a", "alice", 1000), ("bank-b", "bob", 1000))


class BankSystem:
    def __init__(
        self,
        root: Path,
        *,
        coordinator_env: dict[str, str] | None = None,
        aio: bool = False,
        seeds: tuple[tuple[str, str, int], ...] = SEEDS,
    ):
        self.root = root
        self.seeds = seeds
        self.coordinator = coordinator_proc(
            root / "coordinator", root, env={**TEST_COORDINATOR_ENV, **(coordinator_env or {})}
        )
        self.banks: dict[str, Proc] = {}
        for name, account, amount in seeds:
            proc = bank_proc(name, root / f"{name}.db", self.coordinator.address, f"{account}={amount}", root)
            if aio:
                proc.argv.append("--aio")
            self.banks[name] = proc
        self._channels: list[grpc.Channel] = []
        self.bank: Bank | None = None

    def start(self, bank_env: dict[str, dict[str, str]] | None = None) -> BankSystem:
        self.coordinator.start()
        for name, proc in self.banks.items():
            proc.start(extra_env=(bank_env or {}).get(name))
        a, b = (self.banks[name].address for name, _, _ in self.seeds[:2])
        self.bank = Bank(self.coordinator.address, a, b)
        return self

    def stop(self) -> None:
        if self.bank is not None:
            self.bank.close()
        for channel in self._channels:
            channel.close()
        for proc in [*self.banks.values(), self.coordinator]:
            proc.stop()

    # ------------------------------------------------------------ clients

    def accounts(self, name: str) -> bank_pb2_grpc.AccountsStub:
        channel = grpc.insecure_channel(self.banks[name].address)
        self._channels.append(channel)
        return bank_pb2_grpc.AccountsStub(intercept_channel(channel))

    def apply(self, name: str, account: str, amount: int) -> int:
        return (
            self.accounts(name)
            .Apply(bank_pb2.ApplyRequest(account=account, amount=amount), timeout=10)
            .balance
        )

    def balance(self, name: str, account: str) -> int:
        return self.accounts(name).Balance(bank_pb2.BalanceRequest(account=account), timeout=10).balance

    def total(self) -> int:
        return sum(self.balance(name, account) for name, account, _ in self.seeds)

    def status(self, gtrid: str) -> xa_pb2.TransactionInfo:
        with grpc.insecure_channel(self.coordinator.address) as channel:
            stub = coordinator_pb2_grpc.CoordinatorStub(channel)
            return stub.GetStatus(coordinator_pb2.StatusRequest(gtrid=gtrid), timeout=5)

    def wait_status(self, gtrid: str, wanted: TxStatus, timeout: float = 20.0) -> xa_pb2.TransactionInfo:
        deadline = time.monotonic() + timeout
        while True:
            info = self.status(gtrid)
            if info.status == wanted:
                return info
            if time.monotonic() > deadline:
                raise AssertionError(f"{gtrid} is {TxStatus(info.status).label}, not {wanted.label}:\n{info}")
            time.sleep(0.05)

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample of the coordinator's /metrics, keyed by (name, sorted labels)."""
        with urllib.request.urlopen(f"http://{self.coordinator.http}/metrics", timeout=5) as resp:
            text = resp.read().decode()
        samples = {}
        for family in text_string_to_metric_families(text):
            for s in family.samples:
                samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return samples

    def metric(self, name: str, **labels: str) -> float:
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)
