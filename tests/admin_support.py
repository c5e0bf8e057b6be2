"""Clients for the admin tests: the installed ``xactl`` as a subprocess and the REST API."""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from email.message import Message
from pathlib import Path
from typing import Any

import grpc
from prometheus_client.parser import text_string_to_metric_families

from xatm.participant.api.v1 import admin_pb2, admin_pb2_grpc

#: The console script pip installed next to this interpreter.
XACTL = Path(sys.executable).with_name("xactl")
#: Exit codes of docs/contract.md and the HTTP status of the same condition.
OK, UNAVAILABLE, INVALID, NOT_FOUND, REFUSED, CREDENTIALS = 0, 1, 2, 3, 4, 5


def write_auth_file(path: Path, entries: Mapping[str, tuple[str, str, int | None]]) -> Path:
    """An auth file at ``path``: name -> (role, token, max_open or None)."""
    from xatm.coordinator.server.auth import hash_token

    text = ""
    for name, (role, token, max_open) in entries.items():
        text += f'[[tokens]]\nname = "{name}"\nrole = "{role}"\nsha256 = "{hash_token(token)}"\n'
        text += f"max_open = {max_open}\n\n" if max_open else "\n"
    path.write_text(text)
    return path


def xactl(
    coordinator: str, *args: str, token: str | None = None, **popen: Any
) -> subprocess.CompletedProcess[str]:
    """Run ``xactl --coordinator COORDINATOR ARGS`` with a clean XATM_* environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("XATM_")}
    if token:
        env["XATM_TOKEN"] = token
    popen.setdefault("stdin", subprocess.DEVNULL)
    return subprocess.run(
        [str(XACTL), "--coordinator", coordinator, *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
        **popen,
    )


def xactl_json(coordinator: str, *args: str, token: str | None = None) -> Any:
    done = xactl(coordinator, "--output", "json", *args, token=token)
    assert done.returncode == OK, done.stderr
    return json.loads(done.stdout)


@dataclass
class Reply:
    status: int
    headers: Message  # looked up without regard to case, as HTTP header names are
    body: Any


def rest(
    base: str,
    method: str,
    path: str,
    *,
    token: str | None = None,
    body: Any = None,
    headers: dict[str, str] | None = None,
    context: ssl.SSLContext | None = None,
) -> Reply:
    """One request to ``base`` (http://host:port); error statuses are returned, not raised."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method, headers=headers or {})
    if token:
        request.add_header("Authorization", f"Bearer {token}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as resp:
            status, got, raw = resp.status, resp.headers, resp.read()
    except urllib.error.HTTPError as err:
        status, got, raw = err.code, err.headers, err.read()
    parsed = json.loads(raw) if got.get("Content-Type") == "application/json" else raw.decode()
    return Reply(status, got, parsed)


def audit_records(address: str, token: str | None = None) -> list[admin_pb2.AuditRecord]:
    """Every audit record the coordinator keeps, through the Admin gRPC service."""
    metadata = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(address) as channel:
        reply = admin_pb2_grpc.AdminStub(channel).ListAudit(
            admin_pb2.ListAuditRequest(page_size=1000), metadata=metadata, timeout=10
        )
    return list(reply.records)


def scrape(http: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of the /metrics at ``http``, keyed by (name, sorted labels)."""
    with urllib.request.urlopen(f"http://{http}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def admin_actions(http: str, action: str, result: str) -> float:
    """xatm_admin_actions_total{action,result} of the coordinator whose HTTP port is ``http``."""
    key = ("xatm_admin_actions_total", (("action", action), ("result", result)))
    return scrape(http).get(key, 0.0)
