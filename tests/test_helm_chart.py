"""The Helm chart (helm/binderbox), checked without a cluster.

What these tests verify is what rendering and offline validation can show: ``helm lint``;
``helm template`` of the three example value sets (store mode, image mode with a registry,
persistent homes with logins); every rendered object strictly valid against Kubernetes 1.30
and the newest schemas kubernetes-validate ships (1.37); and what an operator relies on:
unprivileged sessions and builds, least-privilege RBAC, the sessions' network policy, the
shared volumes read-only in sessions.  The session pod checked is the one a real
KubeSpawner 7.1 builds from the rendered hub configuration (tests/kubespawner_pod.py).
Nothing here runs on Kubernetes: no API server, no scheduler, no network plugin.  Nothing is
skipped either: helm comes with ``scripts/setup --test`` and zero-to-jupyterhub is vendored
(helm/binderbox/charts/jupyterhub/VENDORED.md), so a missing piece fails the module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from helm_helpers import (
    CHART,
    NAMESPACE,
    VALUE_SETS,
    Packet,
    build_job,
    documents,
    egress_allows,
    find,
    helm,
    hub_values,
    ours,
    render,
    session_pod,
    template_args,
)
from traitlets.config.loader import PyFileConfigLoader

from binderbox.hub.config import SERVICE_NAME, SERVICE_SCOPES
from binderbox.images import ImageRegistry

#: Kubernetes 1.30 and the newest version kubernetes-validate has schemas for
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
#: kinds of the Gateway API (custom resources): no schema in Kubernetes' own
CUSTOM_KINDS = {"HTTPRoute"}
#: addresses a session or a build must not reach: cloud metadata, the private ranges
FORBIDDEN = ("169.254.169.254", "10.0.0.1", "10.96.0.1", "172.16.0.10", "192.168.1.1")


@pytest.fixture(scope="module")
def rendered() -> dict[tuple[str, str], str]:
    """Each value set rendered for each Kubernetes version."""
    return {
        (name, version): render(path, version)
        for name, path in VALUE_SETS.items()
        for version in KUBE_VERSIONS
    }


@pytest.fixture(scope="module")
def pods(
    rendered: dict[tuple[str, str], str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, dict[str, Any]]:
    """The session pod of each value set, as KubeSpawner makes it."""
    tmp = tmp_path_factory.mktemp("pods")
    return {name: session_pod(rendered[name, KUBE_VERSIONS[-1]], tmp) for name in VALUE_SETS}


#: zero-to-jupyterhub, vendored as released
ZERO_TO_JUPYTERHUB = CHART / "charts" / "jupyterhub"


def test_zero_to_jupyterhub_is_vendored_as_released() -> None:
    done = helm("dependency", "list", str(CHART))
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()[1:] if line.strip()]
    # "unpacked": helm found charts/jupyterhub/ with this name and a matching version
    assert [(r[0], r[1], r[-1]) for r in rows] == [("jupyterhub", "4.4.0", "unpacked")]
    chart = yaml.safe_load((ZERO_TO_JUPYTERHUB / "Chart.yaml").read_text())
    assert (chart["version"], chart["appVersion"]) == ("4.4.0", "5.5.0")  # JupyterHub 5.5.0
    values = (ZERO_TO_JUPYTERHUB / "values.yaml").read_text()
    assert "set-by-chartpress" not in values
    assert values.count('tag: "4.4.0"') == 5  # the images chartpress tags on a release
    assert (ZERO_TO_JUPYTERHUB / "LICENSE").read_text().startswith("BSD 3-Clause License")
    assert (
        "5c5f5df751588a68a7781ead01d0f62e88e2e72f"
        in (ZERO_TO_JUPYTERHUB / "VENDORED.md").read_text()
    )
    # its own schema is shipped, so helm checks the jupyterhub: values too
    assert (ZERO_TO_JUPYTERHUB / "values.schema.json").is_file()


def test_newest_schemas_are_1_37_or_later() -> None:
    major, minor = (int(x) for x in KUBE_VERSIONS[-1].split(".")[:2])
    assert (major, minor) >= (1, 37)


@pytest.mark.parametrize("values", [None, *VALUE_SETS.values()], ids=["defaults", *VALUE_SETS])
def test_lint(values: Path | None) -> None:
    args = ["lint", "--strict", str(CHART)] + (["--values", str(values)] if values else [])
    done = helm(*args)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("version", KUBE_VERSIONS)
@pytest.mark.parametrize("name", VALUE_SETS)
def test_every_object_is_valid(
    name: str, version: str, rendered: dict[tuple[str, str], str], pods: dict[str, Any]
) -> None:
    docs = documents(rendered[name, version])
    # what binderbox and KubeSpawner create at run time, from what the chart rendered
    docs += [build_job(docs), pods[name]]
    custom = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.SchemaNotFoundError:
            custom.append(doc["kind"])
        except kubernetes_validate.ValidationError as err:
            path = ".".join(str(p) for p in err.path)
            pytest.fail(f"{doc['kind']}/{doc['metadata'].get('name')}: {path}: {err.message}")
    assert set(custom) <= CUSTOM_KINDS
    kinds = {d["kind"] for d in docs}
    assert {"Deployment", "Job", "Pod", "Role", "NetworkPolicy"} <= kinds


@pytest.mark.parametrize("name", VALUE_SETS)
def test_session_pods_are_unprivileged_uid_1000(name: str, pods: dict[str, Any]) -> None:
    spec = pods[name]["spec"]
    assert not spec.get("initContainers")  # no privileged iptables container
    assert not spec.get("hostNetwork") and not spec.get("hostPID") and not spec.get("hostIPC")
    assert spec["automountServiceAccountToken"] is False
    assert all("hostPath" not in v for v in spec.get("volumes") or [])
    for container in spec["containers"]:
        context = container["securityContext"]
        assert context["runAsUser"] == 1000
        assert context["runAsNonRoot"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert not context.get("privileged")
        assert context["capabilities"]["drop"] == ["ALL"]
        assert not context["capabilities"].get("add")


@pytest.mark.parametrize("name", VALUE_SETS)
def test_shared_volumes_are_read_only_in_sessions(name: str, pods: dict[str, Any]) -> None:
    spec = pods[name]["spec"]
    claims = {
        v["name"]: v["persistentVolumeClaim"]
        for v in spec["volumes"]
        if "persistentVolumeClaim" in v
    }
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    shared = {"binderbox-datasets"} | ({"binderbox-store"} if name != "image" else set())
    assert shared <= set(claims)
    for volume in shared:
        assert claims[volume]["readOnly"] is True
        assert mounts[volume]["readOnly"] is True
    # image mode: the environment is the image, the store stays with binderbox
    assert ("binderbox-store" in claims) is (name != "image")
    home = mounts[next(m for m in mounts if mounts[m]["mountPath"] == "/home/jovyan")]
    assert not home.get("readOnly")
    if name == "persistent-login":  # a volume of the user's own, kept between sessions
        assert claims[home["name"]]["claimName"].startswith("claim-")


@pytest.mark.parametrize("name", VALUE_SETS)
def test_build_job_pod_is_unprivileged(name: str, rendered: dict[tuple[str, str], str]) -> None:
    docs = documents(rendered[name, KUBE_VERSIONS[-1]])
    job = build_job(docs)
    spec = job["spec"]["template"]["spec"]
    assert job["spec"]["backoffLimit"] == 0
    assert spec["automountServiceAccountToken"] is False
    assert not spec["hostNetwork"] and not spec["hostPID"] and not spec["hostIPC"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 1000
    for volume in spec["volumes"]:
        assert "hostPath" not in volume
    for container in spec["containers"]:
        context = container["securityContext"]
        assert context["privileged"] is False
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
        assert not context["capabilities"].get("add")
        assert context.get("runAsNonRoot", True) is True  # the pod's holds
        for mount in container["volumeMounts"]:
            assert "docker.sock" not in mount["mountPath"]
        assert all(e["name"] != "DOCKER_HOST" for e in container.get("env") or [])
    mounts = {m["name"]: m for m in spec["containers"][0]["volumeMounts"]}
    if name == "image":  # pushes with the registry's credentials, read-only
        assert mounts["registry"]["readOnly"] is True
    else:  # writes a folder of its own on the store, never the published environments
        assert mounts["output"]["subPath"] == "tmp/{build_id}"  # the store's build folder
    # its ServiceAccount holds no permission
    account = spec["serviceAccountName"]
    bindings = [d for d in docs if d["kind"] in ("RoleBinding", "ClusterRoleBinding")]
    assert all(s.get("name") != account for b in bindings for s in b.get("subjects") or [])


@pytest.mark.parametrize("name", VALUE_SETS)
def test_release_holds_no_cluster_wide_permission(
    name: str, rendered: dict[tuple[str, str], str]
) -> None:
    # zero-to-jupyterhub's user scheduler (a ClusterRole) is off; its hub's Role is KubeSpawner's
    docs = documents(rendered[name, KUBE_VERSIONS[-1]])
    assert not [d["kind"] for d in docs if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    roles = {d["metadata"]["name"] for d in docs if d["kind"] == "Role"}
    assert roles == {"hub", "binderbox"}


def test_rbac_is_namespaced_and_least_privilege(rendered: dict[tuple[str, str], str]) -> None:
    docs = ours(documents(rendered["store", KUBE_VERSIONS[-1]]))
    (role,) = [d for d in docs if d["kind"] == "Role"]
    allowed = {
        ("batch", "jobs"): {"create", "get", "list", "watch", "delete"},
        ("", "pods"): {"get", "list", "watch"},
        ("", "pods/log"): {"get"},
        ("", "secrets"): {"create", "delete"},  # a private repository's build Secret
    }
    granted: dict[tuple[str, str], set[str]] = {}
    for rule in role["rules"]:
        assert "resourceNames" not in rule and "nonResourceURLs" not in rule
        for group in rule["apiGroups"]:
            for resource in rule["resources"]:
                granted.setdefault((group, resource), set()).update(rule["verbs"])
    assert set(granted) == set(allowed)
    for key, verbs in granted.items():
        assert verbs <= allowed[key], key
    assert granted["batch", "jobs"] >= {"create", "get", "watch", "delete"}
    assert granted["", "secrets"] == {"create", "delete"}  # never read, listed or watched
    binding = find(docs, "RoleBinding", "binderbox")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "binderbox",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "binderbox", "namespace": NAMESPACE}
    ]


@pytest.mark.parametrize("name", VALUE_SETS)
def test_sessions_and_builds_cannot_reach_metadata_or_private_ranges(
    name: str, rendered: dict[tuple[str, str], str]
) -> None:
    docs = documents(rendered[name, KUBE_VERSIONS[-1]])
    sessions = find(docs, "NetworkPolicy", "singleuser")
    builds = find(docs, "NetworkPolicy", "binderbox-build")
    for policy in (sessions, builds):
        for address in FORBIDDEN:
            for port in (80, 443, 8080, 22):
                assert not egress_allows(policy, Packet(address, port)), (address, port)
        # pip install, git clone, DNS still work
        assert egress_allows(policy, Packet("151.101.0.223", 443))
        assert egress_allows(policy, Packet("10.96.0.10", 53, "UDP"))
    # builds may not even ask the metadata server's DNS
    assert not egress_allows(builds, Packet("169.254.169.254", 53, "UDP"))
    # nothing reaches a build
    assert builds["spec"]["ingress"] == [] and "Ingress" in builds["spec"]["policyTypes"]


#: proxy.https with Let's Encrypt: zero-to-jupyterhub's autohttps pod and its policy
AUTOHTTPS = (
    "jupyterhub.proxy.https.enabled=true",
    "jupyterhub.proxy.https.type=letsencrypt",
    "jupyterhub.proxy.https.hosts={binder.example.org}",
    "jupyterhub.proxy.https.letsencrypt.contactEmail=admin@example.org",
)


@pytest.mark.parametrize("name", [*VALUE_SETS, "store-autohttps"])
def test_no_network_policy_lets_a_pod_reach_the_metadata_server(
    name: str, rendered: dict[tuple[str, str], str]
) -> None:
    if name == "store-autohttps":
        text = render(VALUE_SETS["store"], KUBE_VERSIONS[-1], AUTOHTTPS)
    else:
        text = rendered[name, KUBE_VERSIONS[-1]]
    policies = [d for d in documents(text) if d["kind"] == "NetworkPolicy"]
    names = {p["metadata"]["name"] for p in policies}
    assert {"hub", "proxy", "singleuser", "binderbox", "binderbox-build"} <= names
    assert ("autohttps" in names) is (name == "store-autohttps")
    dns_at_metadata = set()
    for policy in policies:
        label = policy["metadata"]["name"]
        assert "Egress" in policy["spec"]["policyTypes"], label
        for port in (80, 443, 8080, 8775, 22):
            for protocol in ("TCP", "UDP"):
                packet = Packet("169.254.169.254", port, protocol)
                assert not egress_allows(policy, packet), (label, port, protocol)
        if egress_allows(policy, Packet("169.254.169.254", 53, "UDP")):
            dns_at_metadata.add(label)
        # the cluster's DNS still answers everyone
        assert egress_allows(policy, Packet("10.96.0.10", 53, "UDP")), label
    # DNS (port 53 only) at that address stays as zero-to-jupyterhub has it, for GKE's Cloud
    # DNS; binderbox's own pods and builds do not get even that (README, "Kubernetes")
    assert dns_at_metadata == names - {"binderbox", "binderbox-build"}


@pytest.mark.parametrize("name", VALUE_SETS)
def test_binderbox_is_the_hubs_service(name: str, rendered: dict[tuple[str, str], str]) -> None:
    docs = documents(rendered[name, KUBE_VERSIONS[-1]])
    values = hub_values(docs)["hub"]
    assert SERVICE_NAME in values["services"]
    assert values["loadRoles"][SERVICE_NAME]["scopes"] == list(SERVICE_SCOPES)
    assert values["loadRoles"][SERVICE_NAME]["services"] == [SERVICE_NAME]
    assert values["config"]["JupyterHub"]["hub_routespec"] == "/hub/"
    # binderbox's pod reads its tokens from keys the hub's Secret has
    secret = find(docs, "Secret", "hub")
    container = find(docs, "Deployment", "binderbox")["spec"]["template"]["spec"]["containers"][0]
    sources = [e["valueFrom"] for e in container["env"] if "valueFrom" in e]
    refs = [s["secretKeyRef"] for s in sources if s.get("secretKeyRef", {}).get("name") == "hub"]
    assert {r["key"] for r in refs} == {
        f"hub.services.{SERVICE_NAME}.apiToken",
        "hub.config.ConfigurableHTTPProxy.auth_token",
    }
    assert all(r["key"] in secret["data"] for r in refs)


def _load_config(docs: list[dict[str, Any]], tmp: Path) -> Any:
    data = find(docs, "Secret", "binderbox-config")["stringData"]
    for key in ("values.yaml", "binderbox_config.py"):
        (tmp / key).write_text(data[key])
    return PyFileConfigLoader("binderbox_config.py", path=str(tmp)).load_config()


def test_config_file_sets_cluster_mode(
    rendered: dict[tuple[str, str], str], tmp_path: Path
) -> None:
    store = _load_config(documents(rendered["store", KUBE_VERSIONS[-1]]), tmp_path)
    assert store.ServeCommand.hub == "external"
    assert store.BinderboxApp.builder_class == "binderbox.builders.kube.KubernetesBuilds"
    assert store.ExternalHub.api_url == "http://hub:8081/hub/api/"
    assert store.ExternalHub.proxy_api_url == "http://proxy-api:8001"
    assert store.ExternalHub.route_target == f"http://binderbox.{NAMESPACE}.svc:80"
    assert store.Store.concurrent_builds == 4  # examples/store.yaml
    assert store.Store.budget == 400 * 2**30  # its store.budget
    assert store.SessionLauncher.per_repo_quota == 20  # the operator's own config
    assert "url" not in store.ImageRegistry
    (tmp_path / "image").mkdir()
    image = _load_config(documents(rendered["image", KUBE_VERSIONS[-1]]), tmp_path / "image")
    assert image.ImageRegistry.url == "registry.example.org"
    assert image.ImageRegistry.auth_file == "/etc/binderbox/registry/.dockerconfigjson"
    # the chart's image names are binderbox's: <url>/<prefix>:<environment key>
    named = ImageRegistry(config=image).image_name("0123abcd")
    assert named == "registry.example.org/binder/envs:0123abcd"
    assert image.KubernetesBuilds.mode == "image"
    assert image.KubernetesSessions.mode == "image"  # the pipeline launches the images
    hub = hub_values(documents(rendered["image", KUBE_VERSIONS[-1]]))["hub"]["config"]
    assert hub["KubernetesSessions"] == {  # and the hub's spawner runs them, no other
        "store_claim": "binderbox-store",
        "datasets_claim": "binderbox-datasets",
        "mode": "image",
        "image_prefix": named.rsplit(":", 1)[0],
    }
    # no store.budget: 80% of the volume, never binderbox's unlimited default
    assert image.Store.budget == int(0.8 * 100 * 2**30)  # examples/image.yaml: 100Gi


@pytest.mark.parametrize(
    ("size", "budget"),
    [("200Gi", 171798691840), ("500G", 400 * 10**9), ("1.5Ti", int(0.8 * 1.5 * 2**40))],
)
def test_store_budget_follows_the_volume_size(size: str, budget: int, tmp_path: Path) -> None:
    text = render(None, KUBE_VERSIONS[-1], (f"store.size={size}",))
    assert _load_config(documents(text), tmp_path).Store.budget == budget


def test_ingress_and_gateway_route_to_the_proxy(rendered: dict[tuple[str, str], str]) -> None:
    ingress = find(documents(rendered["store", KUBE_VERSIONS[-1]]), "Ingress", "jupyterhub")
    assert ingress["metadata"]["annotations"]["cert-manager.io/cluster-issuer"] == "letsencrypt"
    assert ingress["spec"]["tls"] == [
        {"hosts": ["binder.example.org"], "secretName": "binder-example-org-tls"}
    ]
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "binder.example.org"
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend["name"] == "proxy-public"
    route = find(documents(rendered["image", KUBE_VERSIONS[-1]]), "HTTPRoute", "jupyterhub")
    assert route["spec"]["hostnames"] == ["binder.example.org"]
    assert route["spec"]["parentRefs"][0]["name"] == "public"
    assert route["spec"]["rules"][0]["backendRefs"][0]["name"] == "proxy-public"


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (("mode=image",), "/registry/url"),
        (
            ("mode=image", "registry.url=registry.example.org", "registry.prefix=binder/envs"),
            "KubernetesSessions.mode to image and its image_prefix to registry.example.org/b",
        ),
        (("registry.prefix=Binder/Envs",), "/registry/prefix"),
        (("containerSecurityContext.privileged=true",), "privileged"),
        (("podSecurityContext.runAsNonRoot=false",), "runAsNonRoot"),
        (("containerSecurityContext.capabilities.add={NET_ADMIN}",), "capabilities/add"),
        (("store.accessModes={ReadWriteOnce}",), "ReadWriteMany"),
        (("logins.mode=required",), "oauthCallbackUrl"),
        (
            ("logins.mode=optional", "logins.oauthCallbackUrl=https://binder.example.org/x"),
            "must equal jupyterhub.hub.services.binderbox.oauth_redirect_uri",
        ),
        (("no_such_value=1",), "no_such_value"),
        (("store.size=lots",), "/store/size"),
        # zero-to-jupyterhub's own schema, shipped with the vendored chart
        (("jupyterhub.hub.no_such_value=1",), "no_such_value"),
    ],
)
def test_bad_values_are_refused_plainly(sets: tuple[str, ...], message: str) -> None:
    done = helm(*template_args(None, KUBE_VERSIONS[-1], sets))
    assert done.returncode != 0
    assert message in done.stderr
    assert "panic" not in done.stderr and not done.stdout.strip()


def _leaves(values: dict[str, Any], schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths of values.yaml's values the schema does not describe."""
    missing = []
    for key, value in values.items():
        node = (schema.get("properties") or {}).get(key)
        if node is None or not node.get("description"):
            missing.append(path + key)
        elif isinstance(value, dict) and "properties" in node:
            missing += _leaves(value, node, f"{path}{key}.")
    return missing


def _undescribed(schema: dict[str, Any], path: str = "") -> list[str]:
    """Paths of the schema's properties (values.yaml sets them or not) with no description."""
    missing = []
    for key, node in (schema.get("properties") or {}).items():
        if not node.get("description"):
            missing.append(path + key)
        missing += _undescribed(node, f"{path}{key}.")
        if isinstance(node.get("items"), dict):
            missing += _undescribed(node["items"], f"{path}{key}[].")
    return missing


def test_every_value_is_documented() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    schema = yaml.safe_load((CHART / "values.schema.json").read_text())
    assert _leaves({k: v for k, v in values.items() if k != "jupyterhub"}, schema) == []
    # optional values too (those values.yaml leaves unset)
    assert _undescribed(schema) == []
    # and each of binderbox's top-level values has its comment in values.yaml
    lines = (CHART / "values.yaml").read_text().splitlines()
    for index, line in enumerate(lines):
        if line and line[0].isalpha() and index:
            assert lines[index - 1].startswith("#"), line
