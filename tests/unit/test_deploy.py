"""Checks of the deployment files under deploy/, read in this process.

Python packages: PyYAML, kubernetes-validate, dockerfile (test extras). The checks that run
external tools (promtool, systemd-analyze, hadolint) are in tests/system/test_deploy.py.
"""

from __future__ import annotations

import fnmatch
import importlib
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.deploy_support import (
    DASHBOARD,
    DEPLOY,
    PROM,
    ROOT,
    SYSTEMD,
    UNITS,
    dashboard,
    dashboard_exprs,
    dashboard_panels,
    parse_unit,
)

K8S = DEPLOY / "kubernetes"

COORDINATOR_JOB = "xatm-coordinator"
PARTICIPANT_JOB = "xatm-participant"

# Label values fixed by the contract (docs/contract.md): selectors in the rules and dashboards may
# only use these.
TX_STATUSES = {
    "Created",
    "Preparing",
    "Prepared",
    "Committing",
    "Committed",
    "Rollingback",
    "Rolledback",
    "MarkedRollback",
    "HeuristicallyCompleted",
}
LABEL_VALUES = {
    "status": TX_STATUSES,
    "outcome": {"committed", "rolledback", "heuristic"},
    "action@xatm_recovery_actions_total": {
        "recommit",
        "rerollback",
        "orphan_rollback",
        "torn_tail",
        "failed",
    },
}
# Labels Prometheus itself attaches to every scraped series (static config, file SD, PodMonitor).
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "endpoint", "service", "resource"}


# --------------------------------------------------------------------------- helpers


def load_yaml_docs(path: Path) -> list[dict]:
    with path.open() as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def k8s_docs() -> list[tuple[Path, dict]]:
    return [(p, d) for p in sorted(K8S.glob("*.yaml")) for d in load_yaml_docs(p)]


def k8s_object(kind: str, name: str) -> dict:
    found = [d for _, d in k8s_docs() if d.get("kind") == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected exactly one {kind}/{name} in deploy/kubernetes, found {len(found)}"
    return found[0]


def alert_rules() -> list[dict]:
    doc = yaml.safe_load((PROM / "alerts.yml").read_text())
    return [r for g in doc["groups"] for r in g["rules"] if "alert" in r]


def selects(selector: dict, labels: dict) -> bool:
    """Kubernetes label-selector semantics (matchLabels + In/NotIn/Exists/DoesNotExist)."""
    for k, v in (selector.get("matchLabels") or {}).items():
        if labels.get(k) != v:
            return False
    for e in selector.get("matchExpressions") or []:
        key, op, values = e["key"], e["operator"], e.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


# --------------------------------------------------------------------------- Prometheus


def test_scrape_config_jobs_match_the_rules():
    cfg = yaml.safe_load((PROM / "prometheus.yml").read_text())
    jobs = {s["job_name"]: s for s in cfg["scrape_configs"]}
    assert {COORDINATOR_JOB, PARTICIPANT_JOB} <= set(jobs)
    for job in (COORDINATOR_JOB, PARTICIPANT_JOB):
        assert jobs[job].get("metrics_path", "/metrics") == "/metrics"
    assert "alerts.yml" in cfg["rule_files"]
    # the coordinator's HTTP port
    targets = [t for sc in jobs[COORDINATOR_JOB]["static_configs"] for t in sc["targets"]]
    assert any(t.endswith(":7071") for t in targets), targets
    # participant file-SD targets exist and parse
    for sd in jobs[PARTICIPANT_JOB].get("file_sd_configs", []):
        for pattern in sd["files"]:
            files = list(PROM.glob(pattern))
            assert files, f"file_sd pattern {pattern} matches nothing under deploy/prometheus"
            for f in files:
                groups = yaml.safe_load(f.read_text())
                assert all(g["targets"] for g in groups)
    # every job="..." used by a rule is a scrape job
    used = set(re.findall(r'job="([^"]+)"', (PROM / "alerts.yml").read_text()))
    assert used <= set(jobs), f"rules use jobs {used - set(jobs)} that prometheus.yml does not scrape"


REQUIRED_ALERTS = {
    # name: (fragments the expression must contain, minimum "for")
    "XatmInDoubtBranches": (["xatm_in_doubt_branches", "> 0"], "5m"),
    "XatmTransactionsOverdue": (
        ["xatm_transactions_overdue", "Preparing", "Committing", "Rollingback"],
        None,
    ),
    "XatmHeuristicOutcome": (['outcome="heuristic"'], None),
    "XatmWalFsyncSlow": (["histogram_quantile(0.99", "xatm_wal_fsync_duration_seconds_bucket"], None),
    "XatmCoordinatorDown": ([f'up{{job="{COORDINATOR_JOB}"}} == 0'], None),
    "XatmRecoveryFailing": (['xatm_recovery_actions_total{action="failed"}'], None),
}


def test_required_alerts_and_their_metadata():
    rules = {r["alert"]: r for r in alert_rules()}
    for name, (fragments, for_) in REQUIRED_ALERTS.items():
        assert name in rules, f"alert {name} missing from alerts.yml"
        for frag in fragments:
            assert frag in rules[name]["expr"], f"{name}: expression lacks {frag!r}"
        if for_:
            assert rules[name].get("for") == for_, f"{name}: expected for: {for_}"
    for name, r in rules.items():
        assert re.fullmatch(r"Xatm[A-Z][A-Za-z]+", name), name
        assert r.get("labels", {}).get("severity") in {"critical", "warning", "info"}, name
        ann = r.get("annotations", {})
        for key in ("summary", "description", "runbook"):
            assert ann.get(key, "").strip(), f"{name}: annotation {key} missing"


def test_every_alert_is_tested_firing_and_not_firing():
    tests = yaml.safe_load((PROM / "alerts_test.yml").read_text())["tests"]
    firing, silent = set(), set()
    for t in tests:
        for case in t.get("alert_rule_test", []):
            (firing if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {r["alert"] for r in alert_rules()}
    assert names - firing == set(), f"alerts never tested firing: {sorted(names - firing)}"
    assert names - silent == set(), f"alerts never tested staying silent: {sorted(names - silent)}"
    assert (firing | silent) <= names, f"tests name unknown alerts: {sorted((firing | silent) - names)}"


def test_prometheusrule_is_a_copy_of_alerts_yml():
    rule = k8s_object("PrometheusRule", "xatm")
    assert rule["apiVersion"] == "monitoring.coreos.com/v1"
    alerts = yaml.safe_load((PROM / "alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"], (
        "deploy/kubernetes/prometheusrule.yaml differs from deploy/prometheus/alerts.yml: "
        "copy the groups of alerts.yml under spec: (indented by two spaces)"
    )


# --------------------------------------------------------------------------- Grafana


def test_dashboard_structure():
    d = dashboard()
    assert d["uid"] and d["title"]
    assert isinstance(d["schemaVersion"], int)
    panels = dashboard_panels()
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids)), "duplicate panel ids"
    variables = {v["name"] for v in d["templating"]["list"]}
    assert "datasource" in variables
    # panels sit on the 24-column grid without overlapping
    cells: dict[tuple[int, int], str] = {}
    for p in d["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24, p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in cells, f"panel {p['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = p["title"]
    for p in panels:
        if p["type"] == "row":
            continue
        assert p["title"] and p.get("targets"), p
        assert p["datasource"]["uid"] == "${datasource}", p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${datasource}", p["title"]


def test_dashboard_covers_the_required_views():
    exprs = dashboard_exprs()

    def has(*fragments: str) -> bool:
        return any(all(f in e for f in fragments) for e in exprs)

    assert has("rate(xatm_transactions_started_total"), "throughput"
    assert has("xatm_transactions_completed_total", "by (outcome)"), "outcomes"
    assert has("histogram_quantile(", "xatm_phase_duration_seconds_bucket", "phase"), "phase latencies"
    assert has("xatm_in_doubt_branches"), "in-doubt branches"
    assert has("xatm_branch_results_total", "by (phase, code)"), "XA codes by phase"
    assert has("histogram_quantile(", "xatm_wal_fsync_duration_seconds_bucket"), "WAL fsync latency"
    assert has("xatm_admin_actions_total", "action", "result"), "admin actions"


# --------------------------------------------------------------------------- Kubernetes


def test_kubernetes_yaml_parses_and_core_objects_match_the_schema():
    import kubernetes_validate

    docs = k8s_docs()
    assert docs
    kinds = set()
    for path, d in docs:
        assert {"apiVersion", "kind"} <= set(d), f"{path.name}: object without apiVersion/kind"
        kinds.add(d["kind"])
        if d["apiVersion"].startswith(("monitoring.coreos.com/", "kustomize.config.k8s.io/")):
            continue  # CRDs: checked field by field below
        try:
            kubernetes_validate.validate(d, "1.30", strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{path.name}: {d['kind']}/{d['metadata']['name']}: {e.message} at {list(e.path)}")
    assert {"StatefulSet", "Service", "ConfigMap", "Secret", "PodMonitor", "Deployment"} <= kinds


def test_kustomization_lists_every_manifest():
    kust = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kust["resources"]) == files


def _container(pod_spec: dict, name: str) -> dict:
    return next(c for c in pod_spec["containers"] if c["name"] == name)


def test_coordinator_statefulset():
    sts = k8s_object("StatefulSet", "xatm-coordinator")
    spec = sts["spec"]
    assert spec["replicas"] == 1, "one coordinator per write-ahead log"
    pod = spec["template"]["spec"]
    c = _container(pod, "coordinator")

    # the WAL volume
    claims = {t["metadata"]["name"]: t for t in spec["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in c["volumeMounts"]}
    assert mounts.get("data") == "/var/lib/xatm"
    assert "data" in claims and claims["data"]["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claims["data"]["spec"]["resources"]["requests"]["storage"]

    # native gRPC probes on 7070
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["grpc"]["port"] == 7070, probe
        assert "httpGet" not in c[probe] and "exec" not in c[probe]

    # non-root, no privileges
    psc, csc = pod["securityContext"], c["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] != 0
    assert csc["allowPrivilegeEscalation"] is False
    assert csc["capabilities"]["drop"] == ["ALL"]

    assert c["resources"]["requests"] and c["resources"]["limits"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"grpc": 7070, "http": 7071}

    args = c["args"]
    for flag, value in {
        "--listen": "0.0.0.0:7070",
        "--http-listen": "0.0.0.0:7071",
        "--data-dir": "/var/lib/xatm",
        "--config": "/etc/xatm/xatm.toml",
        "--auth-file": "/etc/xatm/tokens.toml",
    }.items():
        assert args[args.index(flag) + 1] == value, flag

    # the config volume projects the ConfigMap and the Secret that exist
    assert mounts.get("config") == "/etc/xatm"
    vol = next(v for v in pod["volumes"] if v["name"] == "config")
    sources = vol["projected"]["sources"]
    cm = next(s["configMap"] for s in sources if "configMap" in s)
    sec = next(s["secret"] for s in sources if "secret" in s)
    assert k8s_object("ConfigMap", cm["name"])["data"]["xatm.toml"]
    assert k8s_object("Secret", sec["name"])["stringData"]["tokens.toml"]
    assert [i["path"] for i in cm["items"]] == ["xatm.toml"]
    assert [i["path"] for i in sec["items"]] == ["tokens.toml"]

    # the governing Service exists and is headless
    headless = k8s_object("Service", spec["serviceName"])
    assert headless["spec"]["clusterIP"] == "None"


def test_coordinator_service():
    svc = k8s_object("Service", "xatm-coordinator")
    ports = {p["name"]: p["port"] for p in svc["spec"]["ports"]}
    assert ports == {"grpc": 7070, "http": 7071}
    pod_labels = k8s_object("StatefulSet", "xatm-coordinator")["spec"]["template"]["metadata"]["labels"]
    assert selects({"matchLabels": svc["spec"]["selector"]}, pod_labels)


def test_config_and_token_files_are_valid_toml():
    cfg = tomllib.loads(k8s_object("ConfigMap", "xatm-coordinator-config")["data"]["xatm.toml"])
    assert cfg["data_dir"] == "/var/lib/xatm"
    raw = k8s_object("Secret", "xatm-coordinator-tokens")["stringData"]["tokens.toml"]
    tokens = tomllib.loads(raw)["tokens"]
    assert tokens
    for t in tokens:
        assert re.fullmatch(r"[0-9a-f]{64}", t["sha256"]), "tokens are stored as SHA-256 hex digests"
        assert t["name"] and t["role"]
    assert "PLACEHOLDER" in raw, "the example tokens must be clearly marked as placeholders"


def test_podmonitor_scrapes_coordinator_and_participants():
    pm = k8s_object("PodMonitor", "xatm")
    assert pm["apiVersion"] == "monitoring.coreos.com/v1"
    endpoints = pm["spec"]["podMetricsEndpoints"]
    assert [(e["port"], e.get("path", "/metrics")) for e in endpoints] == [("http", "/metrics")]
    job_label = pm["spec"]["jobLabel"]
    pods = {
        COORDINATOR_JOB: k8s_object("StatefulSet", "xatm-coordinator")["spec"]["template"],
        PARTICIPANT_JOB: k8s_object("Deployment", "xatm-participant-orders")["spec"]["template"],
    }
    for job, template in pods.items():
        labels = template["metadata"]["labels"]
        assert selects(pm["spec"]["selector"], labels), f"PodMonitor does not select the {job} pods"
        # the job label Prometheus will set must be the one the alert rules use
        assert labels[job_label] == job
        ports = {p["name"] for c in template["spec"]["containers"] for p in c.get("ports", [])}
        assert "http" in ports, f"{job} pods have no port named http"
    assert "xatm" in pm["spec"]["namespaceSelector"]["matchNames"]


def test_participant_deployment():
    dep = k8s_object("Deployment", "xatm-participant-orders")
    pod = dep["spec"]["template"]["spec"]
    c = _container(pod, "participant")
    assert c["command"][-2:] == ["/opt/xatm/bin/xatm", "participant"]
    args = c["args"]
    assert args[args.index("--listen") + 1] == "0.0.0.0:7080"
    assert args[args.index("--http-listen") + 1] == "0.0.0.0:7081"
    assert args[args.index("--coordinator") + 1].startswith("xatm-coordinator.")
    assert args[args.index("--coordinator") + 1].endswith(":7070")
    env = {e["name"]: e for e in c["env"]}
    assert "secretKeyRef" in env["XATM_RESOURCE"]["valueFrom"], "the DSN must come from a Secret"
    assert not any("postgresql://" in a for a in args), "no DSN on the command line"
    for probe in ("livenessProbe", "readinessProbe"):
        assert c[probe]["grpc"]["port"] == 7080
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["resources"]["requests"] and c["resources"]["limits"]


# --------------------------------------------------------------------------- systemd


@pytest.mark.parametrize("unit", UNITS)
def test_systemd_unit_hardening(unit):
    cp = parse_unit(SYSTEMD / unit)
    assert {"Unit", "Service", "Install"} <= set(cp.sections())
    s = cp["Service"]
    assert s["ExecStart"].split()[0] == "/opt/xatm/bin/xatm"
    assert s.get("DynamicUser") == "yes" or s.get("User"), "run as an unprivileged user"
    assert s.get("StateDirectory")
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "RestrictSUIDSGID": "yes",
        "CapabilityBoundingSet": "",
    }
    for key, value in expected.items():
        assert s.get(key) == value, f"{unit}: {key}={value} expected, got {s.get(key)!r}"
    assert cp["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_coordinator_command_line():
    s = parse_unit(SYSTEMD / "xatm-coordinator.service")["Service"]
    argv = s["ExecStart"].split()
    assert argv[1] == "coordinator"
    assert argv[argv.index("--listen") + 1] == "0.0.0.0:7070"
    assert argv[argv.index("--http-listen") + 1] == "0.0.0.0:7071"
    assert argv[argv.index("--data-dir") + 1] == "/var/lib/xatm"
    assert s["StateDirectory"] == "xatm"
    assert argv[argv.index("--config") + 1] == "/etc/xatm/xatm.toml"


# --------------------------------------------------------------------------- Dockerfile


def dockerfile_commands():
    import dockerfile

    return dockerfile.parse_file(str(DEPLOY / "Dockerfile"))


def test_dockerfile():
    cmds = dockerfile_commands()
    by = lambda name: [c for c in cmds if c.cmd.upper() == name]  # noqa: E731
    froms = by("FROM")
    assert froms and all(c.value[0] == "python:3.11-slim" for c in froms)
    users = by("USER")
    assert users, "the image must not run as root"
    assert users[-1].value[0].split(":")[0] not in {"root", "0"}
    exposed = {p for c in by("EXPOSE") for p in c.value}
    assert {"7070", "7071"} <= exposed
    entry = by("ENTRYPOINT")[-1]
    assert entry.json, "ENTRYPOINT in exec (JSON) form so that signals reach the process"
    assert list(entry.value[-2:]) == ["/opt/xatm/bin/xatm", "coordinator"]
    # pip installs the repository
    assert any("pip install" in c.value[0] for c in by("RUN"))
    # every COPY source from the build context (the repo root) exists; a glob may match nothing
    # only if another source of the same COPY exists
    for c in by("COPY"):
        if any(f.startswith("--from=") for f in c.flags):
            continue
        sources = c.value[:-1]
        found = [s for s in sources if list(ROOT.glob(s))]
        literal = [s for s in sources if not re.search(r"[*?\[]", s)]
        assert set(literal) <= set(found), (
            f"COPY {sources}: missing in the repo root: {set(literal) - set(found)}"
        )
        assert found, f"COPY {sources}: nothing to copy"


def test_dockerignore_keeps_what_the_image_needs():
    lines = (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
    kept = {ln[1:] for ln in lines if ln.startswith("!")}
    for c in dockerfile_commands():
        if c.cmd.upper() == "COPY" and not c.flags:
            for s in c.value[:-1]:
                assert any(fnmatch.fnmatch(k, s) for k in kept), f"{s} is excluded from the build context"


# --------------------------------------------------------------------------- metric names


def exported_metrics() -> dict[str, tuple[str, set[str]]]:
    """Series names the code exports -> (family name, label names)."""
    importlib.import_module("xatm.coordinator.metrics")
    importlib.import_module("xatm.participant.metrics")
    from prometheus_client import REGISTRY

    collectors = getattr(REGISTRY, "_names_to_collectors", {})
    out: dict[str, tuple[str, set[str]]] = {}
    for fam in REGISTRY.collect():
        if not fam.name.startswith("xatm_"):
            continue
        if fam.type == "counter":
            names = {fam.name + "_total"}
        elif fam.type == "histogram":
            names = {fam.name + s for s in ("_bucket", "_sum", "_count")}
        else:
            names = {fam.name}
        names |= {s.name for s in fam.samples}
        collector = collectors.get(fam.name) or collectors.get(fam.name + "_total")
        labels = set(getattr(collector, "_labelnames", ()))
        for n in names:
            out[n] = (fam.name, labels | ({"le"} if n.endswith("_bucket") else set()))
    return out


def deploy_text_files() -> list[Path]:
    return [p for p in sorted(DEPLOY.rglob("*")) if p.is_file()]


def test_every_referenced_metric_is_exported():
    exported = exported_metrics()
    assert "xatm_transactions_started_total" in exported, "the coordinator did not register its metrics"
    unknown: dict[str, set[str]] = {}
    for path in deploy_text_files():
        for name in set(re.findall(r"\bxatm_[a-z_]+[a-z]\b", path.read_text())):
            if name not in exported:
                unknown.setdefault(name, set()).add(str(path.relative_to(ROOT)))
    assert not unknown, (
        "deploy/ references metrics the code does not export (add them to coordinator/metrics.py "
        "or participant/metrics.py, or fix the name): "
        + "; ".join(f"{n} in {', '.join(sorted(files))}" for n, files in sorted(unknown.items()))
    )


MATCHER = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"')


def test_label_selectors_use_exported_labels_and_values():
    exported = exported_metrics()
    sources = [(str(PROM / "alerts.yml"), r["expr"]) for r in alert_rules()]
    sources += [(str(DASHBOARD), e) for e in dashboard_exprs()]
    problems = []
    for where, expr in sources:
        for name, body in re.findall(r"\b(xatm_[a-z_]+[a-z])\s*\{([^}]*)\}", expr):
            if name not in exported:
                continue  # reported by test_every_referenced_metric_is_exported
            family, labels = exported[name]
            for label, op, value in MATCHER.findall(body):
                if label not in labels | TARGET_LABELS:
                    problems.append(f"{name}{{{label}}} in {where}: {family} has labels {sorted(labels)}")
                    continue
                allowed = LABEL_VALUES.get(f"{label}@{name}") or LABEL_VALUES.get(label)
                if allowed and op in ("=", "=~") and not value.startswith("$"):
                    values = value.split("|") if op == "=~" else [value]
                    bad = [v for v in values if v not in allowed]
                    if bad:
                        problems.append(f"{name}{{{label}}} in {where}: unknown value(s) {bad}")
    assert not problems, "\n".join(problems)


def test_kubernetes_token_file_loads_with_the_coordinator(tmp_path: Path) -> None:
    from xatm.coordinator.server.auth import Authenticator

    secret = yaml.safe_load((DEPLOY / "kubernetes" / "coordinator-secret.yaml").read_text())
    tokens = tmp_path / "tokens.toml"
    tokens.write_text(secret["stringData"]["tokens.toml"])
    Authenticator.load(tokens)  # raises AuthFileError on an unknown role or a malformed entry
