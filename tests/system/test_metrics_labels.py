"""Label hygiene of the exported metrics (docs/contract.md): bounded label values only, never a
transaction id, and latency histograms that resolve both fsyncs and stuck retries.

A coordinator and two bank services (each serving /metrics) run transactions along every path
cheap to reach: two-phase commit, vote-no, one-phase, read-only, and a phase-two call refused
once and retried. Then every xatm_ sample of every endpoint is checked.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from tests.bank_system import BankSystem
from xatm.coordinator.tools.procs import free_port
from xatm.coordinator.txlog._proto import wal_pb2
from xatm.participant.api.v1 import participant_pb2
from xatm.participant.xa import Phase, TxStatus, XaCode

#: Every label an xatm_ metric may carry, with every value it may take ("label@family" first).
ALLOWED: dict[str, set[str]] = {
    "status": {s.label for s in TxStatus},
    "outcome": {"committed", "rolledback", "heuristic"},
    "phase": {str(p) for p in Phase} | {"decision"},
    # Participants label a refused call by its gRPC status.
    "code": {c.name for c in XaCode} | {c.name for c in grpc.StatusCode},
    # RPCs the coordinator sent to participants, by Participant method.
    "method": {m.name for m in participant_pb2.DESCRIPTOR.services_by_name["Participant"].methods},
    "verb": {"prepare", "commit", "rollback", "forget", "recover", "savepoint", "rollback_to_savepoint"},
    "action@xatm_recovery_actions": {
        "recommit",
        "rerollback",
        "presumed_abort",
        "orphan_rollback",
        "torn_tail",
        "failed",
    },
    "action@xatm_admin_actions": {"force_rollback", "force_commit", "forget", "resolve_branch"},
    # A refused operator action is counted under its gRPC status.
    "result@xatm_admin_actions": {"ok"} | {c.name.lower() for c in grpc.StatusCode},
    "type": {f.name for f in wal_pb2.WalRecord.DESCRIPTOR.oneofs_by_name["body"].fields},
}
# Shapes of transaction ids: "<node>.<hex>" gtrids, hex bquals, any long hex run.
ID_SHAPES = re.compile(r"[A-Za-z0-9_-]+\.[0-9a-f]{8,}|[0-9a-f]{12,}")
BUCKET_BOUND = re.compile(r"^(\+Inf|[0-9.]+(e[+-]?[0-9]+)?)$")
SERIES_SUFFIX = re.compile(r"_(total|created|bucket|count|sum)$")
HISTOGRAMS = {
    "coordinator": (
        "xatm_phase_duration_seconds",
        "xatm_transaction_duration_seconds",
        "xatm_wal_fsync_duration_seconds",
    ),
    "bank-a": ("xatm_participant_call_duration_seconds",),
}


@dataclass
class Scraped:
    samples: dict[str, list[tuple[str, Sample]]]  # endpoint name -> its xatm_ (family, sample)
    gtrids: set[str]
    bquals: set[str]


def _scrape(address: str) -> list[tuple[str, Sample]]:
    """(family, sample) pairs; the family is the name less its series suffix, which the text
    format parser does not strip from ``_created``."""
    with urllib.request.urlopen(f"http://{address}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return [
        (SERIES_SUFFIX.sub("", s.name), s)
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name.startswith("xatm_")
    ]


@pytest.fixture(scope="module")
def scraped(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scraped]:
    system = BankSystem(tmp_path_factory.mktemp("labels"))
    metrics_at = {}
    for name, proc in system.banks.items():
        metrics_at[name] = f"127.0.0.1:{free_port()}"
        proc.argv += ["--metrics-listen", metrics_at[name]]
    # bank-b refuses its first commit once: a retried phase two, with a gRPC status as code.
    system.start(bank_env={"bank-b": {"XATM_FAILPOINTS": "participant.commit=1*error(UNAVAILABLE)"}})
    try:
        assert system.bank is not None
        ends = {
            system.bank.transfer("alice", "bob", 10).gtrid: TxStatus.COMMITTED,  # commit retried once
            system.bank.transfer("alice", "bob", 1_000_000).gtrid: TxStatus.ROLLEDBACK,  # XA_RBINTEGRITY
        }
        with system.bank.tm.begin() as tx:  # one branch: one-phase commit
            system.apply("bank-a", "alice", 5)
        ends[tx.gtrid] = TxStatus.COMMITTED
        with system.bank.tm.begin() as tx:  # a read-only branch: XA_RDONLY
            system.apply("bank-a", "alice", -5)
            system.apply("bank-b", "bob", 0)
        ends[tx.gtrid] = TxStatus.COMMITTED
        infos = [system.wait_status(gtrid, status) for gtrid, status in ends.items()]
        yield Scraped(
            samples={
                "coordinator": _scrape(system.coordinator.http),
                **{name: _scrape(address) for name, address in metrics_at.items()},
            },
            gtrids={info.gtrid for info in infos},
            bquals={b.bqual for info in infos for b in info.branches},
        )
    finally:
        system.stop()


def test_the_scenario_reached_the_labels_under_test(scraped: Scraped) -> None:
    """Guards the other tests against passing on an empty scrape."""
    coordinator = {(s.labels.get("phase"), s.labels.get("code")) for _, s in scraped.samples["coordinator"]}
    assert {
        ("prepare", "XA_RBINTEGRITY"),
        ("commit", "XAER_RMFAIL"),
        ("one_phase_commit", "XA_OK"),
        ("prepare", "XA_RDONLY"),
    } <= coordinator
    bank_b = {(s.labels.get("verb"), s.labels.get("code")) for _, s in scraped.samples["bank-b"]}
    assert ("commit", "UNAVAILABLE") in bank_b
    assert len(scraped.gtrids) == 4 and len(scraped.bquals) == 7


def test_no_label_value_is_a_transaction_id_or_outside_its_bounded_set(scraped: Scraped) -> None:
    problems = []
    for endpoint, samples in scraped.samples.items():
        for family, sample in samples:
            for label, value in sample.labels.items():
                where = f"{endpoint}: {sample.name}{{{label}={value!r}}}"
                allowed = ALLOWED.get(f"{label}@{family}") or ALLOWED.get(label)
                if value in scraped.gtrids or value in scraped.bquals or ID_SHAPES.search(value):
                    problems.append(f"{where} looks like a transaction id")
                elif label == "le":
                    if not BUCKET_BOUND.match(value):
                        problems.append(f"{where}: not a bucket bound")
                elif allowed is None:
                    problems.append(f"{where}: label {label!r} has no bounded set here; add it to ALLOWED")
                elif value not in allowed:
                    problems.append(f"{where}: value outside {sorted(allowed)}")
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize(
    ("endpoint", "family"), [(e, f) for e, families in HISTOGRAMS.items() for f in families]
)
def test_latency_buckets_span_sub_millisecond_to_seconds(
    scraped: Scraped, endpoint: str, family: str
) -> None:
    les = {float(s.labels["le"]) for _, s in scraped.samples[endpoint] if s.name == f"{family}_bucket"}
    bounds = les - {float("inf")}
    assert bounds, f"{family} exported no buckets"
    assert min(bounds) < 0.001, f"{family}: smallest bucket {min(bounds)}s cannot resolve an fsync"
    assert max(bounds) >= 5, f"{family}: largest bucket {max(bounds)}s cannot show a stuck phase"


def test_each_process_exports_the_metrics_of_the_parts_it_runs(scraped: Scraped) -> None:
    """Found by a newcomer: participants exported the write-ahead log's and etcd's metrics (all
    zero) and a coordinator on the file log etcd's, because a module defining them was imported."""
    families = {name: {family for family, _ in samples} for name, samples in scraped.samples.items()}
    assert "xatm_wal_fsync_duration_seconds" in families["coordinator"]
    assert not {f for f in families["coordinator"] if f.startswith("xatm_etcd_")}
    for bank in ("bank-a", "bank-b"):
        assert not {f for f in families[bank] if f.startswith(("xatm_wal_", "xatm_etcd_"))}, families[bank]
