"""Shared fixtures, and the test tiers. Multi-process systems live in tests/bank_system.py.

Every test belongs to one tier, a marker given here at collection:

- ``system``: starts processes or external services (coordinators, participants, PostgreSQL,
  Prometheus, command-line tools). Listed in ``SYSTEM_TESTS`` below.
- ``component``: the coordinator engine in this process on a memory log with fake participants;
  everything under tests/component/.
- ``unit``: the rest, in this process.

``pytest -m "not system"`` runs the fast tiers. A test outside the system tier that starts a
process is stopped at that point with an error saying to list it, so the fast tiers stay fast.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.bank_system import BankSystem
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

TIERS = ("unit", "component", "system")
COMPONENT_DIR = Path(__file__).parent / "component"
EVERY_TEST = "*"

#: Tests that start processes or external services, by module: every test in it (``EVERY_TEST``),
#: or the names of those that do (a parametrized test by its function name).
SYSTEM_TESTS: dict[str, str | frozenset[str]] = {
    "test_admin_matrix.py": EVERY_TEST,
    "test_console.py": EVERY_TEST,
    "test_approvals.py": EVERY_TEST,
    "test_architecture.py": EVERY_TEST,
    "test_business_errors.py": EVERY_TEST,
    "test_crash_matrix.py": EVERY_TEST,
    "test_e2e_2pc.py": EVERY_TEST,
    "test_etcd_txlog.py": EVERY_TEST,
    "test_replicas.py": EVERY_TEST,
    "test_latency.py": EVERY_TEST,
    "test_metrics_labels.py": EVERY_TEST,
    "test_packaging.py": EVERY_TEST,
    "test_pg_e2e.py": EVERY_TEST,
    "test_prometheus.py": EVERY_TEST,
    "test_protos_and_cli.py": EVERY_TEST,
    "test_rm_contract.py": EVERY_TEST,
    "test_soak.py": EVERY_TEST,
    "test_truthful_outcomes.py": EVERY_TEST,
    "test_admin_auth.py": frozenset(
        {
            "test_a_bad_auth_file_stops_start_up",
            "test_an_overlong_reason_is_refused_not_cut",
            "test_audit_names_actor_trace_and_result_and_survives_a_restart",
            "test_cli_and_rest_map_errors_alike",
            "test_http_events_go_through_the_coordinator_log_one_line_each",
            "test_list_and_audit_pages",
            "test_malformed_ids_are_400_and_exit_2",
            "test_no_token_or_hash_reaches_a_log",
            "test_openapi_document_is_valid_and_served",
            "test_rest_api_never_answers_5xx",
            "test_the_coordinator_service_needs_the_service_role",
            "test_the_role_is_judged_before_the_input_and_malformed_input_is_400",
            "test_wrong_verbs_paths_and_bodies",
        }
    ),
    "test_admin_tls.py": frozenset(
        {
            "test_a_tls_client_of_a_plaintext_coordinator_is_told_to_drop_tls",
            "test_mutual_tls_wants_a_client_certificate_from_the_ca",
            "test_plaintext_clients_of_a_tls_coordinator_are_told_to_use_tls",
            "test_tls_on_grpc_and_http",
        }
    ),
    "test_agent.py": frozenset(
        {
            "test_bad_flags_exit_2",
            "test_database_that_cannot_prepare_or_be_reached_stops_the_agent_at_start",
            "test_every_xatm_command_registers_the_agent_without_loading_it",
            "test_execute_and_put_commit_together_in_two_phases",
            "test_failed_statement_votes_its_code_and_dooms_the_transaction",
            "test_health_metrics_and_healthz",
            "test_refused_calls_leave_the_transaction_alone",
            "test_rollback_undoes_execute",
            "test_values_round_trip",
        }
    ),
    "test_bench.py": frozenset(
        {
            "test_a_dying_coordinator_fails_the_run",
            "test_every_run_commits_without_failures",
            "test_one_phase_writes_no_decision",
            "test_report_has_documented_shape",
            "test_slow_disk_decisions_share_fsyncs",
            "test_table_shows_each_config_and_ratio",
        }
    ),
    "test_clocks.py": frozenset(
        {
            "test_a_backward_step_neither_holds_off_a_timeout_nor_hides_it_as_overdue",
            "test_a_forward_step_does_not_expire_a_young_transaction",
            "test_a_forward_step_or_a_restart_does_not_drop_fresh_history",
            "test_an_initiator_stepped_forward_keeps_its_transaction_deadline",
            "test_faketime_steps_the_wall_clock_of_a_child_and_not_its_monotonic_clock",
        }
    ),
    "test_deploy.py": frozenset(
        {
            "test_dashboard_queries_are_valid_promql",
            "test_hadolint",
            "test_promtool_check_config",
            "test_promtool_check_rules",
            "test_promtool_test_rules",
            "test_systemd_analyze_verify",
        }
    ),
    "test_failpoints.py": frozenset({"test_crash_exits_at_once_with_no_cleanup"}),
    "test_initiator.py": frozenset(
        {
            "test_a_second_begin_in_the_same_context_is_refused",
            "test_a_transaction_past_its_timeout_does_not_block_the_next_begin",
            "test_an_unacknowledged_one_phase_commit_raises_outcome_unknown",
            "test_await_begin_binds_the_awaiting_task",
            "test_begin_awaited_in_another_task_is_active_where_it_was_called",
            "test_calls_after_begin_without_with_are_rolled_back",
            "test_calls_after_commit_carry_no_transaction",
            "test_thread_pool_calls_join_through_run",
        }
    ),
    "test_log_stops.py": frozenset(
        {
            "test_full_disk_answers_unavailable_goes_not_serving_exits_and_loses_nothing",
            "test_log_deleted_then_kill9_refuses_start_and_never_presumes_abort",
            "test_log_deleted_while_running_stops_decisions_and_start_refuses",
            "test_offline_tools_on_a_missing_log_say_so_in_one_line",
        }
    ),
    "test_logs.py": frozenset(
        {"test_json_logs_are_objects_with_the_gtrid_as_a_field", "test_text_logs_are_one_line_per_event"}
    ),
    "test_moved_participant.py": frozenset(
        {
            "test_a_new_endpoint_survives_a_coordinator_restart",
            "test_a_participant_restarted_at_a_new_address_is_followed",
            "test_a_participant_that_resolves_its_branch_itself_reports_it",
            "test_a_resource_manager_gone_for_good_is_closed_by_the_operator",
            "test_resolve_needs_the_operator_role_and_a_branch_owing_an_answer",
            "test_the_openapi_document_describes_resolve",
            "test_the_recovery_scan_follows_a_branch_found_at_its_rms_new_endpoint",
        }
    ),
    "test_peers_faults.py": frozenset(
        {
            "test_a_bad_commit_answer_is_retried_as_rmfail",
            "test_a_bad_prepare_answer_rolls_back_at_once",
            "test_a_bad_savepoint_answer_is_reported",
            "test_one_bad_endpoint_never_stops_the_recovery_scan",
        }
    ),
    "test_pg_crash_matrix.py": frozenset(
        {"test_checkpoint_between_decision_and_phase_two_keeps_the_decision", "test_crash"}
    ),
    "test_pg_rm.py": frozenset(
        {
            "test_check_violation_votes_rbintegrity",
            "test_connection_loss_maps_to_rmfail_and_votes_rbcommfail",
            "test_deadlock_victim_votes_rbdeadlock_and_the_other_commits",
            "test_lock_and_statement_timeouts_vote_rbtimeout",
            "test_misuse_outside_the_guard_votes_no",
            "test_one_phase_commit_and_rejoin",
            "test_open_row_stream_at_the_end_never_blocks_or_reaches_the_next_branch",
            "test_prepared_branch_commits_from_a_new_rm_instance",
            "test_prepared_branch_survives_a_server_crash",
            "test_read_only_branch_answers_rdonly_and_leaves_nothing_prepared",
            "test_recover_returns_only_our_branches_and_never_touches_foreign_ones",
            "test_rollback_of_prepared_and_of_active_branches",
            "test_rollback_to_savepoint_keeps_earlier_work",
            "test_rollback_to_savepoint_undoes_a_failure",
            "test_server_without_prepared_transactions_is_refused_at_construction",
            "test_statement_running_when_prepare_comes_is_waited_for_and_prepared",
            "test_unknown_or_malformed_xid",
        }
    ),
    "test_recovery.py": frozenset(
        {
            "test_checkpoint_keeps_the_log_bounded",
            "test_damage_mid_log_refuses_start_and_repair_recovers",
            "test_heuristic_outcome_is_kept_until_forgotten",
            "test_participant_resolves_its_in_doubt_branches",
            "test_torn_tail_is_cut_and_reported",
            "test_wal_dump_shows_rbrollback_and_nota_from_real_scenarios",
        }
    ),
    "test_settings.py": frozenset(
        {
            "test_a_bad_node_id_file_in_the_data_dir_exits_2",
            "test_a_bad_setting_from_any_source_exits_2_naming_it",
            "test_a_signalled_server_stops_gracefully_and_exits_0",
            "test_servers_exit_0_on_sigterm",
            "test_the_example_servers_refuse_a_malformed_address_as_a_usage_error",
            "test_xactl_refuses_a_malformed_coordinator_address_as_a_usage_error",
        }
    ),
    "test_sqlite_rm.py": frozenset({"test_prepared_branch_survives_kill_9"}),
    "test_wal.py": frozenset({"test_acknowledged_records_survive_a_crash"}),
}

#: Audit events (see ``sys.addaudithook``) that start a process.
_SPAWN_EVENTS = frozenset(
    {"subprocess.Popen", "os.system", "os.fork", "os.forkpty", "os.posix_spawn", "os.spawn"}
)
#: The test running now if it must not start processes; None while processes are allowed.
_guarded: list[pytest.Item | None] = [None]


class ProcessOutsideSystemTier(RuntimeError):
    """A test outside the system tier tried to start a process."""


def tier_of(item: pytest.Item) -> str:
    """The tier of ``item``: a tier marker it carries, else where it lives and ``SYSTEM_TESTS``."""
    for mark in item.iter_markers():
        if mark.name in TIERS:
            return mark.name
    if item.path.is_relative_to(COMPONENT_DIR):
        return "component"
    listed = SYSTEM_TESTS.get(item.path.name, frozenset())
    name = getattr(item, "originalname", item.name)
    return "system" if listed == EVERY_TEST or name in listed else "unit"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        tier = tier_of(item)
        if not item.get_closest_marker(tier):
            item.add_marker(tier)


def _refuse_processes(event: str, args: tuple[Any, ...]) -> None:
    item = _guarded[0]
    if item is not None and event in _SPAWN_EVENTS:
        what = repr(args[1] if event == "subprocess.Popen" else args)
        raise ProcessOutsideSystemTier(
            f"{item.nodeid} starts a process ({event} {what[:120]}) but is not in the system tier: "
            "list it in SYSTEM_TESTS in tests/conftest.py"
        )


def pytest_configure(config: pytest.Config) -> None:
    sys.addaudithook(_refuse_processes)  # an audit hook stays for the process; it reads ``_guarded``


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    # Before the test's fixtures are set up, so a fixture starting a process is caught too.
    _guarded[0] = None if tier_of(item) == "system" else item


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item: pytest.Item) -> None:
    # Off before teardown: the last test's teardown also ends session fixtures (PostgreSQL).
    _guarded[0] = None
