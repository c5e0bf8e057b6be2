"""Prometheus metrics of the coordinator (docs/contract.md). Labels are bounded enums only, and
``labels()`` returns a cached child (a dictionary lookup on the hot path)."""

from __future__ import annotations

from xatm.participant.runtime.metric_types import Counter, Gauge, Histogram

# Sub-millisecond to multi-second: phases span local SQLite fsyncs to retried RPCs.
LATENCY_BUCKETS = (0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)

TRANSACTIONS_STARTED = Counter("xatm_transactions_started_total", "Transactions begun")
TRANSACTIONS_COMPLETED = Counter(
    "xatm_transactions_completed_total", "Transactions that reached a final status", ["outcome"]
)
TRANSACTIONS_ACTIVE = Gauge("xatm_transactions_active", "Transactions not yet final, by status", ["status"])
BRANCH_RESULTS = Counter(
    "xatm_branch_results_total", "XA return codes received from branches", ["phase", "code"]
)
PHASE_DURATION = Histogram(
    "xatm_phase_duration_seconds", "Time spent in each protocol phase", ["phase"], buckets=LATENCY_BUCKETS
)
TRANSACTION_DURATION = Histogram(
    "xatm_transaction_duration_seconds",
    "Begin to final status",
    ["outcome"],
    buckets=LATENCY_BUCKETS,
)
IN_DOUBT_BRANCHES = Gauge(
    "xatm_in_doubt_branches", "Branches whose phase-two outcome is decided but not yet acknowledged"
)
UNREACHABLE_PARTICIPANTS = Gauge(
    "xatm_unreachable_participants",
    "Participant endpoints whose calls fail (XAER_RMFAIL) and that the engine backs off from",
)
PARTICIPANT_CHANNELS = Gauge(
    "xatm_participant_channels", "gRPC channels to participant endpoints open now (bounded, idle ones closed)"
)
PARTICIPANT_CALLS = Counter(
    "xatm_participant_rpcs_sent_total",
    "RPCs the coordinator sent to participants, by method (a Batch carries many branches' calls; "
    "each message on a BatchStream counts as one)",
    ["method"],
)
BATCH_BRANCHES = Histogram(
    "xatm_participant_batch_branches",
    "Branch calls carried by each Batch RPC or BatchStream message to a participant",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
RECOVERY_ACTIONS = Counter("xatm_recovery_actions_total", "Recovery actions taken", ["action"])
RETRIES = Counter("xatm_retries_total", "Phase-two calls retried by the backoff policy", ["phase"])
ADMIN_ACTIONS = Counter("xatm_admin_actions_total", "Operator actions", ["action", "result"])
TRANSACTIONS_OVERDUE = Gauge(
    "xatm_transactions_overdue", "Transactions not yet final and past their timeout, by status", ["status"]
)

# Create the known label sets up front so rate()/increase() see a zero before the first event.
for _outcome in ("committed", "rolledback", "heuristic"):
    TRANSACTIONS_COMPLETED.labels(outcome=_outcome)
for _method in (
    "Prepare",
    "Commit",
    "Rollback",
    "Forget",
    "Recover",
    "Savepoint",
    "RollbackToSavepoint",
    "Batch",
):
    PARTICIPANT_CALLS.labels(method=_method)
for _action in ("recommit", "rerollback", "presumed_abort", "orphan_rollback", "torn_tail", "failed"):
    RECOVERY_ACTIONS.labels(action=_action)
