"""Checks of deploy/kubernetes-replicas, the overlay running three coordinator replicas over a
three-member etcd cluster: every manifest parses and matches the Kubernetes schema, and the
names that tie the objects together (etcd members, Services, the ConfigMap and Secret of the
base, the coordinator's flags and environment) agree."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.deploy_support import DEPLOY
from xatm.coordinator.settings import Settings, check_store, parse_store_url

OVERLAY = DEPLOY / "kubernetes-replicas"
BASE = DEPLOY / "kubernetes"


def docs(folder: Path) -> list[tuple[Path, dict]]:
    return [
        (path, doc)
        for path in sorted(folder.glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc is not None
    ]


def one(kind: str, name: str, folder: Path = OVERLAY) -> dict:
    found = [d for _, d in docs(folder) if d.get("kind") == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name} in {folder.name}, found {len(found)}"
    return found[0]


def arg(args: list[str], flag: str) -> str:
    """The value after ``flag`` (``--flag VALUE`` or ``--flag=VALUE``)."""
    for i, item in enumerate(args):
        if item == flag:
            return args[i + 1]
        if item.startswith(flag + "="):
            return item.split("=", 1)[1]
    raise AssertionError(f"no {flag} in {args}")


def test_every_manifest_parses_and_matches_the_schema() -> None:
    import kubernetes_validate

    kinds = set()
    for path, doc in docs(OVERLAY):
        kinds.add(doc["kind"])
        if doc["apiVersion"].startswith("kustomize.config.k8s.io/") or doc.get("$patch") == "delete":
            continue
        try:
            kubernetes_validate.validate(doc, "1.30", strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(
                f"{path.name}: {doc['kind']}/{doc['metadata']['name']}: {e.message} at {list(e.path)}"
            )
    assert {"Deployment", "StatefulSet", "Service", "PodDisruptionBudget", "Kustomization"} <= kinds


def test_the_kustomization_builds_on_the_base_and_lists_every_file() -> None:
    kust = yaml.safe_load((OVERLAY / "kustomization.yaml").read_text())
    assert "../kubernetes" in kust["resources"]
    listed = {r for r in kust["resources"] if r.endswith(".yaml")} | {p["path"] for p in kust["patches"]}
    assert listed == {p.name for p in OVERLAY.glob("*.yaml")} - {"kustomization.yaml"}
    # The patch deletes the base's single coordinator, which exists there.
    patch = yaml.safe_load((OVERLAY / "delete-coordinator-statefulset.yaml").read_text())
    assert patch["$patch"] == "delete"
    assert one(patch["kind"], patch["metadata"]["name"], BASE)["spec"]["replicas"] == 1


def test_the_coordinators_reach_every_etcd_member() -> None:
    etcd = one("StatefulSet", "xatm-etcd")
    service = one("Service", etcd["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    namespace = etcd["metadata"]["namespace"]
    members = [
        f"xatm-etcd-{i}.{service['metadata']['name']}.{namespace}.svc"
        for i in range(etcd["spec"]["replicas"])
    ]
    assert len(members) == 3
    args = etcd["spec"]["template"]["spec"]["containers"][0]["args"]
    assert arg(args, "--initial-cluster") == ",".join(f"{m.split('.')[0]}=http://{m}:2380" for m in members)
    coordinator = one("Deployment", "xatm-coordinator")
    assert coordinator["spec"]["replicas"] == 3
    container = coordinator["spec"]["template"]["spec"]["containers"][0]
    store = check_store(arg(container["args"], "--store"))
    assert parse_store_url(store) == [(m, 2379) for m in members]


def test_the_coordinator_flags_and_environment_are_settings() -> None:
    container = one("Deployment", "xatm-coordinator")["spec"]["template"]["spec"]["containers"][0]
    fields = set(Settings.model_fields) | {"config"}
    flags = {a[2:].split("=")[0].replace("-", "_") for a in container["args"] if a.startswith("--")}
    assert flags <= fields, flags - fields
    env = {e["name"][len("XATM_") :].lower() for e in container["env"] if e["name"].startswith("XATM_")}
    assert {"advertise", "http_advertise"} <= env <= fields


def test_the_replicas_are_what_the_base_services_select_and_use_its_files() -> None:
    pod = one("Deployment", "xatm-coordinator")["spec"]["template"]
    labels = pod["metadata"]["labels"]
    for name in ("xatm-coordinator", "xatm-coordinator-headless"):
        selector = one("Service", name, BASE)["spec"]["selector"]
        assert selector.items() <= labels.items()
    sources = pod["spec"]["volumes"][1]["projected"]["sources"]
    assert one("ConfigMap", sources[0]["configMap"]["name"], BASE)
    assert one("Secret", sources[1]["secret"]["name"], BASE)
    pdb = one("PodDisruptionBudget", "xatm-coordinator")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
