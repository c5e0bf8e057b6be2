"""``xactl``: the operator's CLI over the Admin gRPC service. Exit codes follow DESIGN §5."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

from participant._proto import admin_pb2, admin_pb2_grpc
from participant.xa import TxStatus, XatmError, validate_gtrid

from .views import completion_view, transaction_view

__all__ = ["main"]

EXIT = {
    grpc.StatusCode.OK: 0,
    grpc.StatusCode.INVALID_ARGUMENT: 2,
    grpc.StatusCode.UNAUTHENTICATED: 5,
    grpc.StatusCode.PERMISSION_DENIED: 5,
    grpc.StatusCode.NOT_FOUND: 3,
    grpc.StatusCode.FAILED_PRECONDITION: 4,
    grpc.StatusCode.UNAVAILABLE: 1,
}


class _Client:
    def __init__(self, args: argparse.Namespace):
        self.address = args.coordinator
        if args.tls_ca:
            creds = grpc.ssl_channel_credentials(root_certificates=Path(args.tls_ca).read_bytes())
            self.channel = grpc.secure_channel(self.address, creds)
        else:
            self.channel = grpc.insecure_channel(self.address)
        self.stub = admin_pb2_grpc.AdminStub(self.channel)
        self.metadata = [("authorization", f"Bearer {args.token}")] if args.token else []

    def __call__(self, method: str, request: Any) -> Any:
        return getattr(self.stub, method)(request, metadata=self.metadata, timeout=60)


def _table(rows: list[list[str]], headers: list[str]) -> str:
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=False)]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
        for row in [headers, *rows]
    ]
    return "\n".join(lines)


def _show_transaction(view: dict[str, Any]) -> str:
    head = [
        f"txid:       {view['txid']}",
        f"status:     {view['status']}" + (f" (decision: {view['decision']})" if view["decision"] else ""),
        f"begun:      {view['begunAt']}  timeout: {view['timeoutMs']} ms  deadline: {view['deadline']}",
    ]
    if view["completedAt"]:
        head.append(f"completed:  {view['completedAt']}")
    if view["rollbackReason"]:
        head.append(f"rollback:   {view['rollbackCode']} {view['rollbackReason']}")
    rows = [
        [
            b["branchId"],
            b["rmId"],
            b["url"],
            b["status"] or "",
            b["returnCode"] or "-",
            b["phase"] or "-",
            str(b["attempts"]),
            b["nextRetry"] or "-",
        ]
        for b in view["branches"]
    ]
    table = _table(rows, ["BRANCH", "RM", "ENDPOINT", "STATUS", "LAST CODE", "PHASE", "TRIES", "NEXT RETRY"])
    reasons = [f"  {b['branchId']}: {b['reason']}" for b in view["branches"] if b["reason"]]
    return "\n".join(head + ["", table] + (["", "reasons:", *reasons] if reasons else []))


def _emit(args: argparse.Namespace, payload: Any, text: Callable[[Any], str]) -> None:
    print(json.dumps(payload, indent=2) if args.output == "json" else text(payload))


def _confirm(args: argparse.Namespace, client: _Client, verb: str) -> bool:
    if args.yes or not sys.stdin.isatty():
        return True
    view = transaction_view(client("GetTransaction", admin_pb2.GetTransactionRequest(gtrid=args.gtrid)))
    print(_show_transaction(view))
    answer = input(f"\nForce {verb} of {args.gtrid}? [y/N] ")
    return answer.strip().lower() in ("y", "yes")


def cmd_list(args: argparse.Namespace, client: _Client) -> int:
    statuses = [int(TxStatus.parse(s)) for s in args.status]
    resp = client(
        "ListTransactions", admin_pb2.ListTransactionsRequest(statuses=statuses, page_size=args.limit)
    )
    views = [transaction_view(t) for t in resp.transactions]

    def text(items: list[dict[str, Any]]) -> str:
        rows = [[v["txid"], v["status"], v["begunAt"] or "", str(len(v["branches"]))] for v in items]
        return _table(rows, ["TXID", "STATUS", "BEGUN", "BRANCHES"]) if rows else "no transactions"

    _emit(args, views, text)
    return 0


def cmd_show(args: argparse.Namespace, client: _Client) -> int:
    validate_gtrid(args.gtrid)
    _emit(
        args,
        transaction_view(client("GetTransaction", admin_pb2.GetTransactionRequest(gtrid=args.gtrid))),
        _show_transaction,
    )
    return 0


def _force(method: str, verb: str) -> Callable[[argparse.Namespace, _Client], int]:
    def run(args: argparse.Namespace, client: _Client) -> int:
        validate_gtrid(args.gtrid)
        if not _confirm(args, client, verb):
            print("aborted; nothing changed", file=sys.stderr)
            return 1
        resp = client(method, admin_pb2.ForceRequest(gtrid=args.gtrid, reason=args.reason))
        view = completion_view(resp)

        def text(v: dict[str, Any]) -> str:
            rows = [
                [b["branchId"], b["status"] or "", b["returnCode"] or "-", b["url"]] for b in v["branches"]
            ]
            summary = f"{v['txid']}: {v['status']} (transaction {v['transactionStatus']})"
            return summary + ("\n" + _table(rows, ["BRANCH", "STATUS", "CODE", "ENDPOINT"]) if rows else "")

        _emit(args, view, text)
        return 0

    return run


def cmd_forget(args: argparse.Namespace, client: _Client) -> int:
    for gtrid in args.gtrids:
        validate_gtrid(gtrid)
    resp = client("Forget", admin_pb2.ForgetRequest(gtrids=args.gtrids))
    results = [{"txid": r.gtrid, "forgotten": r.forgotten, "error": r.error or None} for r in resp.results]
    _emit(
        args,
        results,
        lambda rs: "\n".join(f"{r['txid']}: {'forgotten' if r['forgotten'] else r['error']}" for r in rs),
    )
    return 0 if all(r["forgotten"] for r in results) else 4


def cmd_audit(args: argparse.Namespace, client: _Client) -> int:
    resp = client("ListAudit", admin_pb2.ListAuditRequest(page_size=args.limit))
    records = [
        {
            "time": r.time.ToJsonString(),
            "actor": r.actor,
            "action": r.action,
            "txid": r.gtrid,
            "peer": r.peer,
            "traceId": r.trace_id,
            "result": r.result,
            "detail": r.detail,
        }
        for r in resp.records
    ]

    def text(rs: list[dict[str, Any]]) -> str:
        rows = [[r["time"], r["actor"], r["action"], r["txid"], r["result"], r["traceId"]] for r in rs]
        return (
            _table(rows, ["TIME", "WHO", "ACTION", "TXID", "RESULT", "TRACE"]) if rows else "no audit records"
        )

    _emit(args, records, text)
    return 0


def cmd_wal_dump(args: argparse.Namespace) -> int:
    from .txlog import TxLogCorrupt
    from .wal import dump_text

    if not Path(args.dir).is_dir():
        print(f"xactl: {args.dir} is not a directory", file=sys.stderr)
        return 2
    try:
        print(dump_text(Path(args.dir), output=args.output))
    except TxLogCorrupt as err:
        print(f"xactl: damaged log: {err}", file=sys.stderr)
        return 1
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xactl", description="Inspect and operate xatm transactions.")
    parser.add_argument(
        "--coordinator",
        default=os.environ.get("XATM_COORDINATOR", "127.0.0.1:7070"),
        metavar="HOST:PORT",
        help="coordinator gRPC address (env XATM_COORDINATOR; default 127.0.0.1:7070)",
    )
    parser.add_argument("--token", default=os.environ.get("XATM_TOKEN"), help="bearer token (env XATM_TOKEN)")
    parser.add_argument(
        "--tls-ca",
        default=os.environ.get("XATM_TLS_CA"),
        metavar="PEM",
        help="CA to verify a TLS coordinator",
    )
    parser.add_argument("--output", choices=("table", "json"), default="table", help="output format")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("list", help="list transactions")
    p.add_argument("--status", action="append", default=[], help="only this status (repeatable)")
    p.add_argument("--limit", type=int, default=100, help="at most this many")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("show", help="show one transaction and its branches")
    p.add_argument("gtrid")
    p.set_defaults(func=cmd_show)

    for name, method, verb, helptext in (
        (
            "rollback",
            "ForceRollback",
            "rollback",
            "force rollback (only from Created, Preparing, Rollingback)",
        ),
        ("commit", "ForceCommit", "commit", "force commit (only from Created, Preparing, Committing)"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("gtrid")
        p.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
        p.add_argument("--reason", default="", help="recorded in the audit log")
        p.set_defaults(func=_force(method, verb))

    p = sub.add_parser("forget", help="forget heuristically completed transactions")
    p.add_argument("gtrids", nargs="+", metavar="GTRID")
    p.set_defaults(func=cmd_forget)

    p = sub.add_parser("audit", help="list audited operator actions")
    p.add_argument("--limit", type=int, default=100)
    p.set_defaults(func=cmd_audit)

    wal = sub.add_parser("wal", help="write-ahead log tools").add_subparsers(
        dest="wal_command", required=True
    )
    p = wal.add_parser("dump", help="print every record of a data dir's log (no coordinator needed)")
    p.add_argument("dir", help="data dir (or its wal/ folder)")
    p.set_defaults(func=cmd_wal_dump, offline=True)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if getattr(args, "offline", False):
            return args.func(args)
        return args.func(args, _Client(args))
    except XatmError as err:
        print(f"xactl: {err.message}", file=sys.stderr)
        return EXIT.get(err.code, 1)
    except grpc.RpcError as err:
        code = err.code()  # type: ignore[attr-defined]
        details = err.details()  # type: ignore[attr-defined]
        if code == grpc.StatusCode.UNAVAILABLE:
            details = f"coordinator at {args.coordinator} is unreachable or unavailable ({details})"
        elif code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            details = f"{details}; pass an operator token with --token or XATM_TOKEN"
        if args.debug:
            raise
        print(f"xactl: {details}", file=sys.stderr)
        return EXIT.get(code, 1)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
