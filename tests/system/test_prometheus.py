"""Issue 6 acceptance: a real Prometheus scrapes a coordinator and two bank services while
transactions run, and its query API tells exactly what happened (docs/contract.md).

Scenario: a transfer whose commit crashes bank-b (failpoint) stays in doubt until bank-b is
restarted without the failpoint; then N transfers commit and M are refused by bank-a's
insufficient-funds vote (XA_RBINTEGRITY at prepare). Every value is read from Prometheus,
polled until its scrapes catch up; nothing depends on how long anything takes.
"""

from __future__ import annotations

from pathlib import Path

from tests.bank_system import BankSystem
from tests.prom import Prometheus
from xatm.coordinator.tools.procs import free_port
from xatm.participant.xa import TxStatus

N_COMMITS = 4
M_REFUSALS = 3
COORDINATOR = 'job="xatm-coordinator"'
PARTICIPANTS = 'job="xatm-participant"'


def _nonzero(values: dict[tuple[str, ...], float]) -> dict[tuple[str, ...], float]:
    """Labelled counters appear on first increment, pre-created ones at 0: compare what happened."""
    return {key: value for key, value in values.items() if value}


def test_prometheus_scrapes_transaction_outcomes_codes_and_in_doubt_branches(tmp_path: Path) -> None:
    # The in-doubt transfer commits the whole way round once bank-b is back.
    committed = N_COMMITS + 1
    # Phase two waits a short bounded time: the in-doubt transfer returns after it.
    system = BankSystem(tmp_path, coordinator_env={"XATM_COMMIT_WAIT": "1"})
    bank_of: dict[str, str] = {}
    for name, proc in system.banks.items():
        address = f"127.0.0.1:{free_port()}"
        proc.argv += ["--metrics-listen", address]
        bank_of[address] = name
    prom = Prometheus({"xatm-coordinator": [system.coordinator.http], "xatm-participant": list(bank_of)})
    prom.start()
    try:
        system.start(bank_env={"bank-b": {"XATM_FAILPOINTS": "participant.commit=crash"}})
        prom.wait_ready()
        assert system.bank is not None
        prom.wait_until(
            "all three targets up",
            lambda: prom.values("up", "job", "instance"),
            lambda up: len(up) == 3 and set(up.values()) == {1.0},
        )

        # 1. Phase two fails: bank-b dies on commit, the coordinator retries until it is back.
        in_doubt = system.bank.transfer("alice", "bob", 100)
        assert in_doubt.committed, in_doubt.detail  # the decision is durable
        system.banks["bank-b"].wait_exit(10)
        gauge = f"xatm_in_doubt_branches{{{COORDINATOR}}}"
        seen = prom.wait_until("an in-doubt branch", lambda: prom.scalar(gauge), lambda v: (v or 0) > 0)
        assert seen == 1
        system.banks["bank-b"].start()  # without the failpoint
        finished = system.wait_status(in_doubt.gtrid, TxStatus.COMMITTED)
        # bank-b's start-up resolver may also commit the branch and report it first: then no
        # commit call for it reaches bank-b at all.
        reported = sum(1 for b in finished.branches if b.last_reason.startswith("applied by bank-b"))
        assert prom.wait_until("no in-doubt branch", lambda: prom.scalar(gauge), lambda v: v == 0) == 0

        # 2. Commits and vote-no refusals.
        for _ in range(N_COMMITS):
            result = system.bank.transfer("alice", "bob", 10)
            assert result.committed, result.detail
        for _ in range(M_REFUSALS):
            result = system.bank.transfer("alice", "bob", 1_000_000)
            assert not result.committed
            system.wait_status(result.gtrid, TxStatus.ROLLEDBACK)

        # 3. Coordinator: Prometheus converges on the coordinator's own /metrics, then the
        # converged values must be the scenario's.
        direct = {
            (dict(labels)["phase"], dict(labels)["code"]): value
            for (name, labels), value in system.metrics().items()
            if name == "xatm_branch_results_total"
        }
        results = prom.wait_until(
            "branch results equal to the coordinator's /metrics",
            lambda: prom.values(f"xatm_branch_results_total{{{COORDINATOR}}}", "phase", "code"),
            lambda seen: _nonzero(seen) == _nonzero(direct),
        )
        # bank-b's start-up resolver may commit the in-doubt branch before the coordinator's
        # retry reaches it; the retry then reads XAER_NOTA (already done), not XA_OK.
        nota = results.get(("commit", "XAER_NOTA"), 0)
        assert nota in (0, 1)
        assert results.pop(("commit", "XAER_RMFAIL"), 0) >= 1, "the crash was never retried"
        assert _nonzero(results) == _nonzero(
            {
                ("prepare", "XA_OK"): 2 * committed + M_REFUSALS,
                ("prepare", "XA_RBINTEGRITY"): M_REFUSALS,
                # A report of bank-b's own resolution counts as its XA_OK, even when a retry
                # already in flight then reads XAER_NOTA.
                ("commit", "XA_OK"): 2 * committed - nota + min(nota, reported),
                ("commit", "XAER_NOTA"): nota,
                ("rollback", "XA_OK"): M_REFUSALS,
            }
        )

        expected_outcomes = {("committed",): committed, ("rolledback",): M_REFUSALS, ("heuristic",): 0}
        for expr in (
            f"sum by (outcome) (xatm_transactions_completed_total{{{COORDINATOR}}})",
            f"sum by (outcome) (xatm_transaction_duration_seconds_count{{{COORDINATOR}}})",
        ):
            outcomes = prom.wait_until(
                expr,
                lambda e=expr: prom.values(e, "outcome"),
                lambda v: _nonzero(v) == _nonzero(expected_outcomes),
            )
            assert _nonzero(outcomes) == _nonzero(expected_outcomes)
        started = f"xatm_transactions_started_total{{{COORDINATOR}}}"
        total = committed + M_REFUSALS
        assert prom.wait_until(started, lambda: prom.scalar(started), lambda v: v == total) == total
        active = f"sum(xatm_transactions_active{{{COORDINATOR}}})"
        assert prom.wait_until(active, lambda: prom.scalar(active), lambda v: v == 0) == 0

        # 4. Participants, per service. bank-b's counters restarted with its process: they
        # hold every call after the crash, including the retried commit.
        expected_calls = {
            ("bank-a", "prepare", "XA_OK"): committed,
            ("bank-a", "prepare", "XA_RBINTEGRITY"): M_REFUSALS,
            ("bank-a", "commit", "XA_OK"): committed,
            ("bank-b", "prepare", "XA_OK"): N_COMMITS + M_REFUSALS,
            # The in-doubt branch got its commit call unless bank-b's resolver committed it first
            # (then the coordinator saw XAER_NOTA, the report, or both).
            ("bank-b", "commit", "XA_OK"): N_COMMITS + 1 - max(nota, reported),
            ("bank-b", "commit", "XAER_NOTA"): nota,
            ("bank-b", "rollback", "XA_OK"): M_REFUSALS,
        }

        def calls() -> dict[tuple[str, ...], float]:
            # Recover calls come from periodic scans, whose count depends on timing.
            expr = f'xatm_participant_calls_total{{{PARTICIPANTS},verb!="recover"}}'
            raw = prom.values(expr, "instance", "verb", "code")
            return _nonzero({(bank_of[i], verb, code): v for (i, verb, code), v in raw.items()})

        seen_calls = prom.wait_until("participant calls", calls, lambda v: v == _nonzero(expected_calls))
        assert seen_calls == _nonzero(expected_calls)
    finally:
        system.stop()
        prom.stop()
