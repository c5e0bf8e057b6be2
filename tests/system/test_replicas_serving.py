"""Any coordinator replica serves any client, on a real three-member etcd cluster.

Replica r0 begins the transactions (the banks and the initiator talk to it); operators and
clients then ask r1 or r2, which answer for r0: listings and audit records span every replica,
verbs and Coordinator calls are forwarded to the owner, or the transaction is taken over when
the owner is dead. An initiator given every replica's address keeps committing while the one it
uses is killed.
"""

from __future__ import annotations

import collections
import json
import threading
import time
from pathlib import Path

import grpc
import pytest

from tests.admin_support import OK, REFUSED, audit_records, rest, write_auth_file, xactl, xactl_json
from tests.bank_system import TEST_COORDINATOR_ENV
from tests.chaos import eventually, wait_no_prepared
from tests.etcdcluster import EtcdCluster
from tests.system.test_replicas import PATIENCE, Replicas, fresh, running
from xatm.coordinator.tools.bank._proto import bank_pb2
from xatm.coordinator.tools.bank.transfer import Bank, TransferResult
from xatm.coordinator.tools.procs import Proc, coordinator_proc
from xatm.participant.api.v1 import coordinator_pb2, coordinator_pb2_grpc, xa_pb2
from xatm.participant.client.context import TxContext, use
from xatm.participant.xa import FORMAT_ID, Decision, TxOutcome, TxStatus


@pytest.fixture
def etcd(etcd_cluster: EtcdCluster) -> EtcdCluster:
    return fresh(etcd_cluster)


def stub(address: str) -> coordinator_pb2_grpc.CoordinatorStub:
    return coordinator_pb2_grpc.CoordinatorStub(grpc.insecure_channel(address))


#: Longer than the takeover tests' (nothing here measures a takeover): a replica of a loaded
#: machine whose keep-alive is late must not lose its lease in the middle of a check.
LEASE_TTL = 5


#: The REST admin API's transactions.
COLLECTION = "/admin/v1/xa-transaction"


def begin_and_apply(replicas: Replicas, amount: int) -> str:
    """A transaction begun at r0 with ``amount`` moved from alice to bob in both banks, not
    completed; its gtrid."""
    system = replicas.system
    assert system.bank is not None
    gtrid = (
        stub(replicas.r0.address).Begin(coordinator_pb2.BeginRequest(timeout_ms=120_000), timeout=10).gtrid
    )
    with use(TxContext(gtrid, replicas.r0.address)):
        system.bank.source.Apply(bank_pb2.ApplyRequest(account="alice", amount=-amount), timeout=10)
        system.bank.target.Apply(bank_pb2.ApplyRequest(account="bob", amount=amount), timeout=10)
    return gtrid


def balances(replicas: Replicas) -> tuple[int, int]:
    return replicas.system.balance("bank-a", "alice"), replicas.system.balance("bank-b", "bob")


def test_admin_reads_and_verbs_from_a_replica_that_does_not_own_the_transaction(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    with running(Replicas(etcd, tmp_path, lease_ttl=LEASE_TTL)) as replicas:
        assert replicas.system.bank is not None
        committed = replicas.system.bank.transfer("alice", "bob", 10).gtrid
        open_one = begin_and_apply(replicas, 100)
        r1, r2 = (p.address for p in replicas.others)

        listed = {t["txid"]: t for t in xactl_json(r1, "list")["transactions"]}
        assert (listed[committed]["owner"], listed[committed]["status"]) == ("r0", TxStatus.COMMITTED.label)
        # Presumed abort writes nothing for an undecided transaction, so etcd does not have it:
        # the other replicas' listings ask its owner, with or without a status filter.
        assert (listed[open_one]["owner"], listed[open_one]["status"]) == ("r0", TxStatus.CREATED.label)
        created = xactl_json(r2, "list", "--status", "created")["transactions"]
        assert [(t["txid"], t["owner"]) for t in created] == [(open_one, "r0")]
        committed_only = xactl_json(r2, "list", "--status", "committed")["transactions"]
        assert open_one not in {t["txid"] for t in committed_only}
        page = rest(f"http://{replicas.others[0].http}", "GET", COLLECTION)
        assert page.status == 200, page.body
        assert [t["txid"] for t in page.body["transactions"]].count(open_one) == 1
        table = xactl(replicas.r0.address, "list")
        assert table.returncode == OK, table.stderr
        assert table.stdout.splitlines()[0].split()[:3] == ["TXID", "STATUS", "OWNER"]
        row = next(line.split() for line in table.stdout.splitlines() if line.startswith(open_one))
        assert row[1:3] == [TxStatus.CREATED.label, "r0"]

        shown = xactl_json(r2, "show", open_one)
        assert (shown["owner"], len(shown["branches"])) == ("r0", 2)
        assert "owner:      r0" in xactl(r1, "show", open_one).stdout

        forced = xactl(r1, "rollback", open_one, "--yes", "--reason", "asked of r1")
        assert forced.returncode == OK, forced.stderr
        assert xactl_json(replicas.r0.address, "show", open_one)["status"] == TxStatus.ROLLEDBACK.label
        # The owner carried it out and audited it; every replica lists the record.
        for address in (replicas.r0.address, r2):
            records = xactl_json(address, "audit")["records"]
            assert [(r["action"], r["result"]) for r in records if r["txid"] == open_one] == [
                ("force_rollback", "ok")
            ]
        # Forget is the owner's to refuse: a committed transaction was not completed heuristically.
        done = xactl(r2, "--output", "json", "forget", "--yes", committed)
        assert done.returncode == REFUSED, done.stderr
        forget = json.loads(done.stdout)["results"]
        assert [(r["txid"], r["forgotten"], r["code"]) for r in forget] == [
            (committed, False, "FAILED_PRECONDITION")
        ]
        assert replicas.metric("r1", "xatm_forwarded_calls_total") >= 1
        assert replicas.metric("r2", "xatm_forwarded_calls_total") >= 2
        assert replicas.metric("r1", "xatm_etcd_read_duration_seconds_count") >= 1
        wait_no_prepared(replicas.system, PATIENCE)
        assert balances(replicas) == (990, 1010)


def test_coordinator_calls_of_initiators_and_participants_go_to_the_owner(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    """GetStatus and QueryOutcome at r1, Commit at r2, of a transaction r0 began and owns."""
    with running(Replicas(etcd, tmp_path, lease_ttl=LEASE_TTL)) as replicas:
        gtrid = begin_and_apply(replicas, 100)
        r1, r2 = (stub(p.address) for p in replicas.others)
        info = r1.GetStatus(coordinator_pb2.StatusRequest(gtrid=gtrid), timeout=10)
        assert (info.owner, TxStatus(info.status), len(info.branches)) == ("r0", TxStatus.CREATED, 2)
        started = time.monotonic()
        done = r2.Commit(coordinator_pb2.CompletionRequest(gtrid=gtrid), timeout=30)
        print(f"\nCommit forwarded r2 -> r0 answered in {(time.monotonic() - started) * 1000:.1f} ms")
        assert (TxOutcome(done.outcome), TxStatus(done.status)) == (TxOutcome.TX_OK, TxStatus.COMMITTED)
        bqual = info.branches[0].bqual
        query = coordinator_pb2.QueryOutcomeRequest(
            xid=xa_pb2.Xid(gtrid=gtrid, bqual=bqual, format_id=FORMAT_ID)
        )
        assert Decision(r1.QueryOutcome(query, timeout=10).decision) == Decision.COMMIT
        assert balances(replicas) == (900, 1100)
        assert replicas.metric("r1", "xatm_forwarded_calls_total") >= 2


def test_a_call_about_a_dead_owners_transaction_takes_it_over(etcd: EtcdCluster, tmp_path: Path) -> None:
    """r0 dies holding an undecided transaction; a Commit asked of r1 is refused UNAVAILABLE
    while r0's lease holds; then r1 answers for it as presumed abort says: r0 logged nothing for
    it, so it is rolled back (the Commit carries no branch: the banks end theirs themselves)."""
    with running(Replicas(etcd, tmp_path, lease_ttl=LEASE_TTL)) as replicas:
        gtrid = begin_and_apply(replicas, 100)
        replicas.r0.kill()
        r1 = stub(replicas.others[0].address)
        refused: list[str] = []

        def commit() -> coordinator_pb2.CompletionResponse | None:
            try:
                return r1.Commit(coordinator_pb2.CompletionRequest(gtrid=gtrid), timeout=30)
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                refused.append(err.details() or "")
                return None

        answer = eventually("r1 to answer for r0's transaction", commit, PATIENCE, interval=0.2)
        assert TxOutcome(answer.outcome) == TxOutcome.TX_ROLLBACK, answer
        assert "replica r0" in answer.rollback_reason
        assert all("does not answer" in why or "takes it over" in why for why in refused), refused
        wait_no_prepared(replicas.system, PATIENCE)
        assert balances(replicas) == (1000, 1000)


AFTER_KILL = 15


def test_an_initiator_given_every_replica_keeps_committing_when_its_replica_is_killed(
    etcd: EtcdCluster, tmp_path: Path
) -> None:
    with running(Replicas(etcd, tmp_path, lease_ttl=LEASE_TTL)) as replicas:
        system = replicas.system
        everyone = ",".join(p.address for p in (replicas.r0, *replicas.others))
        bank = Bank(everyone, system.banks["bank-a"].address, system.banks["bank-b"].address)
        results: list[tuple[TransferResult, int, bool]] = []
        killed = threading.Event()
        stop = threading.Event()

        failed: list[str] = []
        committed_at: list[float] = []  # monotonic time each result came back

        def transfers() -> None:
            amount = 1
            while not stop.is_set():
                after = killed.is_set()
                try:
                    results.append((bank.transfer("alice", "bob", amount, timeout=20), amount, after))
                    committed_at.append(time.monotonic())
                except grpc.RpcError as err:
                    # A bank's call failed (the transaction was taken over and rolled back under
                    # it): the initiator rolled back; the balances below show nothing moved.
                    failed.append(f"{err.code().name}: {err.details()}")
                amount = amount % 7 + 1

        worker = threading.Thread(target=transfers)
        worker.start()
        try:
            eventually("ten commits through r0", lambda: True if len(results) >= 10 else None, PATIENCE)
            replicas.r0.kill()  # the replica the initiator's channel is connected to
            died = time.monotonic()
            killed.set()
            eventually(
                f"{AFTER_KILL} commits after r0 died",
                lambda: (
                    True
                    if sum(1 for r, _, after in results if after and r.outcome == "committed") >= AFTER_KILL
                    else None
                ),
                PATIENCE,
            )
            first = next(i for i, (r, _, after) in enumerate(results) if after and r.outcome == "committed")
            back = committed_at[first] - died
        finally:
            stop.set()
            worker.join(PATIENCE)
            bank.close()
        print(
            f"\nfailover: {len(results)} transfers; the first commit after the kill (#{first}) came "
            f"{back:.2f}s after it; "
            f"{time.monotonic() - died:.1f}s of transfers after it; outcomes "
            f"{collections.Counter(r.outcome for r, _, _ in results)}, {len(failed)} failed in a bank call"
        )
        replicas.r0.start(wait=PATIENCE)
        wait_no_prepared(system, PATIENCE)
        moved = 0
        for result, amount, _ in results:
            if result.outcome != "committed" and replicas.status_anywhere(result.gtrid, r0_too=True) is None:
                # Presumed abort: a rollback of a transaction never decided writes nothing, so the
                # restarted r0 need not know it; the balances below show nothing moved for it.
                continue
            final = eventually(
                f"{result.gtrid} to be final",
                lambda g=result.gtrid: (lambda s: s if s is not None and s[1].is_final else None)(
                    replicas.status_anywhere(g, r0_too=True)
                ),
                PATIENCE,
            )
            if result.outcome == "committed":
                assert final[1] == TxStatus.COMMITTED, (result, final)
            if result.outcome == "rolledback":
                assert final[1] == TxStatus.ROLLEDBACK, (result, final)
            moved += amount if final[1] == TxStatus.COMMITTED else 0
        assert balances(replicas) == (1000 - moved, 1000 + moved)
        assert sum(1 for r, _, _ in results if r.outcome == "committed") >= 10 + AFTER_KILL


def test_xactl_replicas_shows_each_replica_and_its_lease(etcd: EtcdCluster, tmp_path: Path) -> None:
    with running(Replicas(etcd, tmp_path, lease_ttl=LEASE_TTL)) as replicas:
        r1, r2 = replicas.others
        assert replicas.system.bank is not None
        replicas.system.bank.transfer("alice", "bob", 10)
        seen = {r["name"]: r for r in xactl_json(r2.address, "replicas")["replicas"]}
        assert {name: (r["live"], r["grpc"], r["answering"]) for name, r in seen.items()} == {
            "r0": (True, replicas.r0.address, False),
            "r1": (True, r1.address, False),
            "r2": (True, r2.address, True),
        }
        assert seen["r1"]["http"] == r1.http
        assert seen["r0"]["transactions"] >= 1
        r1.kill()

        def r1_gone() -> dict[str, bool] | None:
            found = {r["name"]: r["live"] for r in xactl_json(r2.address, "replicas")["replicas"]}
            return found if not found.get("r1", False) else None

        after = eventually("r1's lease to expire", r1_gone, PATIENCE)
        assert (after["r0"], after["r2"]) == (True, True)
        table = xactl(replicas.r0.address, "replicas")
        assert table.returncode == OK, table.stderr
        assert table.stdout.splitlines()[0].split() == ["REPLICA", "LEASE", "GRPC", "HTTP", "TRANSACTIONS"]
        r1.start(wait=PATIENCE)
        seen = {r["name"]: r["live"] for r in xactl_json(r2.address, "replicas")["replicas"]}
        assert seen == {"r0": True, "r1": True, "r2": True}


def test_a_forwarded_call_carries_the_callers_token(etcd: EtcdCluster, tmp_path: Path) -> None:
    """With tokens required, a REST show and a forced rollback asked of r1 about r0's transaction
    are carried out by r0 as the caller: r0 audits the operator's name, and a caller without a
    token is refused at r1 before anything is forwarded."""
    tokens = write_auth_file(
        tmp_path / "tokens.toml",
        {"app": ("service", "app-token", None), "alice": ("operator", "alice-token", None)},
    )
    procs: list[Proc] = []
    try:
        for node in ("r0", "r1"):
            (tmp_path / node).mkdir()
            env = {
                **TEST_COORDINATOR_ENV,
                "XATM_STORE": etcd.url,
                "XATM_LEASE_TTL": str(LEASE_TTL),
                "XATM_NODE_ID": node,
                "XATM_AUTH_FILE": str(tokens),
            }
            procs.append(coordinator_proc(tmp_path / node, tmp_path / node, env=env).start(wait=PATIENCE))
        r0, r1 = procs
        begun = stub(r0.address).Begin(
            coordinator_pb2.BeginRequest(timeout_ms=120_000),
            metadata=[("authorization", "Bearer app-token")],
            timeout=10,
        )
        base = f"http://{r1.http}{COLLECTION}/{begun.gtrid}"
        assert rest(base, "GET", "").status == 401
        # A listing asks r0 for its undecided transactions with the caller's own token.
        listed = rest(f"http://{r1.http}{COLLECTION}", "GET", "", token="alice-token")
        assert listed.status == 200, listed.body
        assert [(t["txid"], t["owner"]) for t in listed.body["transactions"]] == [(begun.gtrid, "r0")]
        shown = rest(base, "GET", "", token="alice-token")
        assert (shown.status, shown.body["owner"]) == (200, "r0"), shown.body
        forced = rest(base, "DELETE", "", token="alice-token")
        assert forced.status == 200, forced.body
        records = [r for r in audit_records(r0.address, token="alice-token") if r.gtrid == begun.gtrid]
        assert [(r.actor, r.action, r.result) for r in records] == [("alice", "force_rollback", "ok")]
    finally:
        for proc in procs:
            proc.stop()


def test_a_listing_does_not_wait_on_a_paused_replica(etcd: EtcdCluster, tmp_path: Path) -> None:
    """r0, holding an undecided transaction, is paused while its lease still holds: another
    replica's listing gives up on it after a few seconds and answers with what etcd has, with a
    warning; resumed, r0's undecided transaction is listed again."""
    with running(Replicas(etcd, tmp_path, lease_ttl=120)) as replicas:
        assert replicas.system.bank is not None and replicas.r0.popen is not None
        committed = replicas.system.bank.transfer("alice", "bob", 10).gtrid
        open_one = begin_and_apply(replicas, 100)
        r1 = replicas.others[0]
        replicas.r0.popen.send_signal(19)  # SIGSTOP
        try:
            listed = {t["txid"]: t["owner"] for t in xactl_json(r1.address, "list")["transactions"]}
            assert listed == {committed: "r0"}
            assert "listing without replica r0's undecided transactions" in r1.tail(200)
        finally:
            replicas.r0.popen.send_signal(18)  # SIGCONT
        listed = {t["txid"]: t["owner"] for t in xactl_json(r1.address, "list")["transactions"]}
        assert listed == {committed: "r0", open_one: "r0"}
