"""``xactl``: the operator's CLI over the Admin gRPC service. Exit codes follow docs/contract.md."""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NoReturn

import grpc

from xatm.coordinator.server import tls
from xatm.coordinator.server.views import (
    audit_view,
    completion_view,
    forget_view,
    list_view,
    parse_since,
    replicas_view,
    transaction_view,
)
from xatm.participant.api.v1 import admin_pb2, admin_pb2_grpc, xa_pb2
from xatm.participant.errors import InvalidArgumentError, Status, XatmError, surface
from xatm.participant.runtime.address import Address, AddressError
from xatm.participant.runtime.grpc_status import status_of
from xatm.participant.runtime.proto_enum import proto_enum
from xatm.participant.xa import CHANNEL_OPTIONS, TxStatus, validate_bqual, validate_gtrid

__all__ = ["main"]


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value <= 86_400:
        raise argparse.ArgumentTypeError("must be a number of seconds above 0 and at most 86400")
    return value


def _limit(text: str) -> int:
    if not text.isdigit() or not 1 <= int(text) <= 1000:
        raise argparse.ArgumentTypeError("must be a whole number from 1 to 1000")
    return int(text)


class _Usage(InvalidArgumentError):
    """A usage error of xactl itself (exit 2)."""


class _Parser(argparse.ArgumentParser):
    """A usage error is one line on stderr, like every other error (``--help`` shows the usage)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: {message}; see {self.prog} --help\n")


class _Client:
    """Admin stub with the caller's token; remembers the trace id of the last answer."""

    def __init__(self, args: argparse.Namespace):
        try:
            self.address = str(Address.parse(args.coordinator))
        except AddressError as err:
            raise _Usage(f"--coordinator (or XATM_COORDINATOR) {err}") from None
        self.secure = bool(args.tls_ca or args.tls_cert)
        if self.secure:
            creds = tls.channel_credentials(
                _pem(args.tls_ca, "--tls-ca", "CERTIFICATE"),
                _pem(args.tls_cert, "--tls-cert", "CERTIFICATE"),
                _pem(args.tls_key, "--tls-key", "PRIVATE KEY"),
            )
            self.channel = grpc.secure_channel(self.address, creds, options=CHANNEL_OPTIONS)
        else:
            self.channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        self.stub = admin_pb2_grpc.AdminStub(self.channel)
        self.metadata = [("authorization", f"Bearer {args.token}")] if args.token else []
        self.timeout = args.timeout
        self.trace_id: str | None = None

    def __call__(self, method: str, request: Any) -> Any:
        reply, call = getattr(self.stub, method).with_call(
            request, metadata=self.metadata, timeout=self.timeout
        )
        self.trace_id = dict(call.initial_metadata() or ()).get("x-trace-id")
        return reply

    def unavailable(self, details: str) -> str:
        """Explain an UNAVAILABLE: nothing listening, or TLS on one side only."""
        state = tls.probe(self.address)
        where = f"coordinator at {self.address}"
        if state == "unreachable":
            return f"{where} is unreachable: is it running, and is --coordinator right? ({details})"
        if state == "tls" and not self.secure:
            return (
                f"{where} requires TLS (use --tls-ca, and --tls-cert/--tls-key if it asks for a client "
                "certificate)"
            )
        if state == "plaintext" and self.secure:
            return f"{where} does not use TLS; drop --tls-ca/--tls-cert/--tls-key"
        if state == "tls":
            return (
                f"{where} refused the TLS connection ({details}); check --tls-ca, and pass --tls-cert and "
                "--tls-key if it requires client certificates"
            )
        return f"{where} is unavailable: {details}"


def _pem(value: str | None, flag: str, kind: str) -> Path | None:
    """The file ``value`` of ``flag``, once it reads as PEM holding a ``kind`` (a certificate, a
    private key); otherwise gRPC would fail later, printing its own lines and a misleading
    "does not use TLS"."""
    if value is None:
        return None
    path = Path(value)
    try:
        text = path.read_bytes()
    except OSError:
        raise InvalidArgumentError(f"{flag}: {value} is not a readable file") from None
    if not re.search(rb"-----BEGIN [A-Z ]*" + kind.encode() + rb"-----", text):
        raise InvalidArgumentError(f"{flag}: {value} holds no PEM {kind.lower()}")
    return path


def _printable(text: object) -> str:
    """``text`` with every control character escaped (``\\n``, ``\\x1b``): reasons and ids come from
    participants and clients, and must neither forge table lines nor drive the operator's terminal."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(text))


def _table(rows: list[list[str]], headers: list[str]) -> str:
    rows = [[_printable(c) for c in row] for row in rows]
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]
    return "\n".join(lines)


def _unreachable(branch: dict[str, Any]) -> str:
    """ "since TIME, N failed calls" while the branch waits for a participant that does not answer."""
    since = branch["unreachableSince"]
    return f"since {since}, {branch['endpointFailures']} failed calls" if since else "-"


def _next_retry(branch: dict[str, Any]) -> str:
    """When the backoff calls the branch again; "calling" once that time has passed (the call is
    out, waiting for its answer or its deadline)."""
    due = branch["nextRetry"]
    if not due:
        return "-"
    if datetime.fromisoformat(due.replace("Z", "+00:00")) <= datetime.now(UTC):
        return f"calling (since {due})"
    return str(due)


def _show_transaction(view: dict[str, Any]) -> str:
    head = [
        f"txid:       {view['txid']}",
        f"status:     {view['status']}" + (f" (decision: {view['decision']})" if view["decision"] else ""),
        f"owner:      {view['owner'] or '-'}",
        f"begun:      {view['begunAt']}  age: {view['ageSeconds']:.1f} s  timeout: {view['timeoutMs']} ms"
        f"  deadline: {view['deadline']}",
    ]
    if view["completedAt"]:
        head.append(f"completed:  {view['completedAt']}")
    if view["rollbackReason"]:
        head.append(f"rollback:   {view['rollbackCode']} {_printable(view['rollbackReason'])}")
    rows = [
        [
            b["branchId"],
            b["rmId"],
            b["url"],
            b["status"] or "",
            b["returnCode"] or "-",
            b["phase"] or "-",
            str(b["attempts"]),
            _next_retry(b),
            _unreachable(b),
        ]
        for b in view["branches"]
    ]
    headers = ["BRANCH", "RM", "ENDPOINT", "STATUS", "LAST CODE", "PHASE", "TRIES", "NEXT RETRY"]
    headers.append("UNREACHABLE")
    table = _table(rows, headers)
    reasons = [f"  {b['branchId']}: {_printable(b['reason'])}" for b in view["branches"] if b["reason"]]
    return "\n".join(head + ["", table] + (["", "reasons:", *reasons] if reasons else []))


def _emit(
    args: argparse.Namespace, client: _Client, view: dict[str, Any], text: Callable[[Any], str]
) -> None:
    """JSON is the REST body of the same request, trace id included; tables are for people."""
    if args.output == "json":
        print(json.dumps({**view, "traceId": client.trace_id}, indent=2))
    else:
        print(text(view))


def _confirm(args: argparse.Namespace, client: _Client, verb: str) -> bool:
    """On a terminal, show the transaction and ask; elsewhere only --yes proceeds."""
    if args.yes:
        return True
    _refuse_unless_terminal(f"force {verb}")
    view = transaction_view(client("GetTransaction", admin_pb2.GetTransactionRequest(gtrid=args.gtrid)))
    return _asked(_show_transaction(view) + f"\n\nForce {verb} of {args.gtrid}? [y/N] ")


def _refuse_unless_terminal(what: str) -> None:
    if not sys.stdin.isatty():
        raise _Usage(f"refusing to {what} without confirmation: stdin is not a terminal; pass --yes")


def _asked(question: str) -> bool:
    sys.stderr.write(question)
    sys.stderr.flush()
    return sys.stdin.readline().strip().lower() in ("y", "yes")


def cmd_list(args: argparse.Namespace, client: _Client) -> int:
    request = admin_pb2.ListTransactionsRequest(
        statuses=[
            proto_enum(TxStatus.parse(s), xa_pb2.TransactionStatus)
            for v in args.status
            for s in v.split(",")
            if s
        ],
        page_size=args.limit,
        page_token=args.page_token,
    )
    if args.since:
        request.begun_after.FromNanoseconds(int(parse_since(args.since) * 1e9))

    def text(view: dict[str, Any]) -> str:
        rows = [
            [
                v["txid"],
                v["status"],
                v["owner"] or "-",
                v["begunAt"] or "",
                f"{v['ageSeconds']:.1f}",
                str(len(v["branches"])),
                str(sum(1 for b in v["branches"] if b["unreachableSince"]) or "-"),
            ]
            for v in view["transactions"]
        ]
        headers = ["TXID", "STATUS", "OWNER", "BEGUN", "AGE S", "BRANCHES", "UNREACHABLE"]
        table = _table(rows, headers) if rows else "no transactions"
        more = view["nextPageToken"]
        return table + (f"\n(more: --page-token {more})" if more else "")

    _emit(args, client, list_view(client("ListTransactions", request)), text)
    return 0


def cmd_replicas(args: argparse.Namespace, client: _Client) -> int:
    def text(view: dict[str, Any]) -> str:
        rows = [
            [
                r["name"] + (" *" if r["answering"] else ""),
                "live" if r["live"] else "dead",
                r["grpc"] or "-",
                r["http"] or "-",
                str(r["transactions"]),
            ]
            for r in view["replicas"]
        ]
        return _table(rows, ["REPLICA", "LEASE", "GRPC", "HTTP", "TRANSACTIONS"]) + "\n(* answered)"

    _emit(args, client, replicas_view(client("ListReplicas", admin_pb2.ListReplicasRequest())), text)
    return 0


def cmd_show(args: argparse.Namespace, client: _Client) -> int:
    validate_gtrid(args.gtrid)
    view = transaction_view(client("GetTransaction", admin_pb2.GetTransactionRequest(gtrid=args.gtrid)))
    _emit(args, client, view, _show_transaction)
    return 0


def _force(method: str, verb: str) -> Callable[[argparse.Namespace, _Client], int]:
    def run(args: argparse.Namespace, client: _Client) -> int:
        validate_gtrid(args.gtrid)
        if not _confirm(args, client, verb):
            print("xactl: not confirmed; nothing changed", file=sys.stderr)
            return 1
        view = completion_view(client(method, admin_pb2.ForceRequest(gtrid=args.gtrid, reason=args.reason)))
        _emit(args, client, view, _completion_text)
        return 0

    return run


def _completion_text(view: dict[str, Any]) -> str:
    rows = [[b["branchId"], b["status"] or "", b["returnCode"] or "-", b["url"]] for b in view["branches"]]
    summary = f"{view['txid']}: {view['status']} (transaction {view['transactionStatus']})"
    return summary + ("\n" + _table(rows, ["BRANCH", "STATUS", "CODE", "ENDPOINT"]) if rows else "")


def cmd_resolve(args: argparse.Namespace, client: _Client) -> int:
    validate_gtrid(args.gtrid)
    validate_bqual(args.bqual)
    if not args.reason.strip():
        raise _Usage("resolve needs --reason TEXT: it is kept in the log and the audit record")
    outcome = {
        "committed": admin_pb2.RESOLVED_OUTCOME_COMMITTED,
        "rolledback": admin_pb2.RESOLVED_OUTCOME_ROLLEDBACK,
    }
    request = admin_pb2.ResolveBranchRequest(
        gtrid=args.gtrid, bqual=args.bqual, outcome=outcome[args.outcome], reason=args.reason
    )
    _emit(args, client, completion_view(client("ResolveBranch", request)), _completion_text)
    return 0


def cmd_forget(args: argparse.Namespace, client: _Client) -> int:
    for gtrid in args.gtrids:
        validate_gtrid(gtrid)
    if not args.yes:
        _refuse_unless_terminal("forget")
        if not _asked(f"Forget {len(args.gtrids)} transaction(s) ({', '.join(args.gtrids)})? [y/N] "):
            print("xactl: not confirmed; nothing changed", file=sys.stderr)
            return 1
    view = forget_view(client("Forget", admin_pb2.ForgetRequest(gtrids=args.gtrids)))
    refused = [r for r in view["results"] if not r["forgotten"]]
    if args.output == "json":
        _emit(args, client, view, str)
    else:  # what was done on stdout, each refusal one line on stderr
        done = [f"{r['txid']}: forgotten" for r in view["results"] if r["forgotten"]]
        if done:
            print("\n".join(done))
        for r in refused:
            print(f"xactl: {r['txid']}: {r['error']}", file=sys.stderr)
    return max((surface(Status[r["code"]]).exit_code for r in refused if r["code"]), default=0)


def cmd_audit(args: argparse.Namespace, client: _Client) -> int:
    request = admin_pb2.ListAuditRequest(page_size=args.limit, page_token=args.page_token)

    def text(view: dict[str, Any]) -> str:
        rows = [
            [r["time"], r["actor"], r["action"], r["txid"] or "-", r["result"], r["peer"], r["traceId"]]
            for r in view["records"]
        ]
        if not rows:
            return "no audit records"
        table = _table(rows, ["TIME", "WHO", "ACTION", "TXID", "RESULT", "FROM", "TRACE"])
        more = view["nextPageToken"]
        return table + (f"\n(older: --page-token {more})" if more else "")

    _emit(args, client, audit_view(client("ListAudit", request)), text)
    return 0


def cmd_approvals(args: argparse.Namespace, client: _Client) -> int:
    """``approvals list|approve|reject``: requests of forced operations awaiting a second operator."""
    from xatm.coordinator.server.approvals import approval_view, decision_view

    if args.approvals_command == "list":
        found = client("ListApprovals", admin_pb2.ListApprovalsRequest(all=args.all)).approvals
        view: dict[str, Any] = {"approvals": [approval_view(a) for a in found]}

        def text(v: dict[str, Any]) -> str:
            rows = [
                [a["id"], a["action"], " ".join(a["txids"]), a["requestedBy"], a["state"], a["expiresAt"]]
                for a in v["approvals"]
            ]
            headers = ["ID", "ACTION", "TXIDS", "REQUESTED BY", "STATE", "EXPIRES"]
            return _table(rows, headers) if rows else "no approval requests"

        _emit(args, client, view, text)
        return 0
    method = "Approve" if args.approvals_command == "approve" else "Reject"
    done = client(method, admin_pb2.DecideApprovalRequest(id=args.id, reason=args.reason))
    view = decision_view(done)

    def decided(v: dict[str, Any]) -> str:
        a = v["approval"]
        head = f"{a['id']}: {a['state']} by {a['decidedBy']} (requested by {a['requestedBy']})"
        return head + (f"\n{_completion_text(v['completion'])}" if v["completion"] else "")

    _emit(args, client, view, decided)
    return 0


def cmd_wal_dump(args: argparse.Namespace) -> int:
    from xatm.coordinator.txlog.file import dump_text, find_wal_dir
    from xatm.coordinator.txlog.interface import LogCorrupt

    if not Path(args.dir).is_dir():
        raise _Usage(f"{args.dir} is not a directory")
    try:
        wal = find_wal_dir(args.dir)
    except FileNotFoundError as err:  # the wrong directory: a usage error, like a bad id
        raise _Usage(str(err)) from None
    try:
        text = dump_text(wal, output=args.output)
    except LogCorrupt as err:
        print(f"xactl: damaged log: {err}", file=sys.stderr)
        return 1
    except OSError as err:  # a log that cannot be read
        print(f"xactl: {args.dir}: {err.strerror or err}", file=sys.stderr)
        return 1
    print(text)
    return 0


def _global_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    """Options accepted before and after the command; only the top level holds the defaults."""
    env = os.environ.get

    def default(value: Any) -> Any:
        return value if defaults else argparse.SUPPRESS

    parser.add_argument(
        "--coordinator",
        default=default(env("XATM_COORDINATOR", "127.0.0.1:7070")),
        metavar="HOST:PORT",
        help="coordinator gRPC address (env XATM_COORDINATOR; default 127.0.0.1:7070)",
    )
    parser.add_argument(
        "--token",
        default=default(env("XATM_TOKEN")),
        help="bearer token (prefer env XATM_TOKEN: other users can see command lines)",
    )
    parser.add_argument(
        "--tls-ca",
        default=default(env("XATM_TLS_CA")),
        metavar="PEM",
        help="CA that signed the coordinator's certificate (env XATM_TLS_CA)",
    )
    parser.add_argument(
        "--tls-cert",
        default=default(env("XATM_CLIENT_CERT")),
        metavar="PEM",
        help="client certificate for mutual TLS (env XATM_CLIENT_CERT)",
    )
    parser.add_argument(
        "--tls-key",
        default=default(env("XATM_CLIENT_KEY")),
        metavar="PEM",
        help="client private key for mutual TLS (env XATM_CLIENT_KEY)",
    )
    parser.add_argument(
        "--timeout", type=_seconds, default=default(60.0), help="seconds to wait for an answer"
    )
    parser.add_argument(
        "--output", "-o", choices=("table", "json"), default=default("table"), help="output format"
    )
    parser.add_argument("--debug", action="store_true", default=default(False), help="show tracebacks")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="xactl",
        description="Inspect and operate xatm transactions. Exit codes: 0 ok, 1 unavailable, 2 usage or "
        "malformed argument, 3 unknown transaction, 4 status forbids it, 5 credentials, 6 a bound reached.",
    )
    _global_options(parser, defaults=True)
    common = _Parser(add_help=False)
    _global_options(common, defaults=False)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("list", parents=[common], help="list transactions, oldest first")
    p.add_argument("--status", action="append", default=[], help="only this status (repeatable, or S1,S2)")
    p.add_argument("--since", help="only those begun at or after this RFC 3339 time or Unix time")
    p.add_argument("--limit", type=_limit, default=100, help="page size (at most 1000)")
    p.add_argument("--page-token", default="", help="next page, as printed by the previous one")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser(
        "show", parents=[common], help="show a transaction: age, timeout, each branch's code and retries"
    )
    p.add_argument("gtrid")
    p.set_defaults(func=cmd_show)

    for name, method, rule in (
        ("rollback", "ForceRollback", "only from Created, Preparing, Rollingback"),
        ("commit", "ForceCommit", "only from Created, Preparing, Committing"),
    ):
        p = sub.add_parser(name, parents=[common], help=f"force {name} ({rule}); asks first on a terminal")
        p.add_argument("gtrid")
        p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
        p.add_argument("--reason", default="", help="recorded in the audit log")
        p.set_defaults(func=_force(method, name))

    p = sub.add_parser(
        "resolve",
        parents=[common],
        help="close a branch whose resource manager is gone for good, stating its outcome (a heuristic "
        "decision; only for a branch still owed an answer in Committing or Rollingback)",
    )
    p.add_argument("gtrid")
    p.add_argument("bqual", help="the branch, as `xactl show` lists it")
    p.add_argument(
        "--outcome",
        required=True,
        choices=("committed", "rolledback"),
        help="what happened to the branch at its resource manager",
    )
    p.add_argument("--reason", required=True, help="why (kept in the log and the audit record)")
    p.set_defaults(func=cmd_resolve)

    p = sub.add_parser(
        "replicas", parents=[common], help="coordinator replicas sharing the store, and whether each is alive"
    )
    p.set_defaults(func=cmd_replicas)

    p = sub.add_parser(
        "forget",
        parents=[common],
        help="forget heuristically completed transactions; asks first on a terminal",
    )
    p.add_argument("gtrids", nargs="+", metavar="GTRID")
    p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    p.set_defaults(func=cmd_forget)

    p = sub.add_parser("audit", parents=[common], help="list audited operator actions, newest last")
    p.add_argument("--limit", type=_limit, default=100, help="the newest this many (at most 1000)")
    p.add_argument("--page-token", default="", help="older records, as printed by the previous page")
    p.set_defaults(func=cmd_audit)

    approvals = sub.add_parser(
        "approvals", help="forced operations awaiting a second operator (coordinator --require-approval)"
    ).add_subparsers(dest="approvals_command", required=True)
    p = approvals.add_parser("list", parents=[common], help="list pending requests")
    p.add_argument("--all", action="store_true", help="also decided and expired ones")
    p.set_defaults(func=cmd_approvals)
    for name, what in (("approve", "approve (not your own) and carry out"), ("reject", "reject")):
        p = approvals.add_parser(name, parents=[common], help=f"{what} a pending request; audited")
        p.add_argument("id", help="the request id, as `xactl approvals list` shows it")
        p.add_argument("--reason", default="", help="recorded in the audit log")
        p.set_defaults(func=cmd_approvals)

    wal = sub.add_parser("wal", help="write-ahead log tools").add_subparsers(
        dest="wal_command", required=True
    )
    p = wal.add_parser(
        "dump", parents=[common], help="print every record of a data dir's log (no coordinator needed)"
    )
    p.add_argument("dir", help="data dir (or its wal/ folder)")
    p.set_defaults(func=cmd_wal_dump, offline=True)
    return parser


def _explain(client: _Client, code: grpc.StatusCode, details: str) -> str:
    if code == grpc.StatusCode.UNAVAILABLE:
        return client.unavailable(details)
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return f"{details}; pass a token with --token or XATM_TOKEN"
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"coordinator at {client.address} did not answer within {client.timeout:.0f}s (--timeout)"
    return details


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    client: _Client | None = None
    try:
        if getattr(args, "offline", False):
            return args.func(args)
        client = _Client(args)
        return args.func(args, client)
    except _Usage as err:
        print(f"xactl: {err}", file=sys.stderr)
        return 2
    except XatmError as err:
        print(f"xactl: {err.message}", file=sys.stderr)
        return surface(err.status).exit_code
    except grpc.RpcError as err:
        if args.debug:
            raise
        code = err.code()
        assert client is not None
        print(f"xactl: {_explain(client, code, err.details() or code.name)}", file=sys.stderr)
        return surface(status_of(code)).exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # `xactl ... | head` stopped reading: not worth a traceback.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141


if __name__ == "__main__":
    sys.exit(main())
