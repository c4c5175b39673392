"""binderbox's configuration in a cluster: the Helm chart's contract with binderbox.

``binderbox serve --config=/etc/binderbox/config/binderbox_config.py`` loads this file
(mounted from the ``binderbox-config`` Secret, beside ``values.yaml``: the chart's values
with names and URLs resolved by the templates).  It turns them into binderbox's settings;
the operator's own (``config``, then ``extraConfig``) come last and win.

Settings marked "cluster mode" below are what binderbox implements for Kubernetes (see
the README, "Kubernetes"); the others exist on one machine already.
"""

import re
from pathlib import Path

import yaml

c = get_config()  # type: ignore[name-defined]  # noqa: F821
values = yaml.safe_load((Path(__file__).parent / "values.yaml").read_text())
cluster = values["cluster"]

# All state under one folder: <data>/store and <data>/datasets are the shared volumes
# (mounted there by the chart), the rest (content, work files) an emptyDir.
c.BinderboxApp.data_dir = cluster["dataDir"]

# cluster mode: serve with zero-to-jupyterhub's hub and proxy instead of starting them.
# binderbox's web app listens on ip:port; its hub token is $BINDERBOX_HUB_API_TOKEN, the
# proxy's $CONFIGPROXY_AUTH_TOKEN; it adds the proxy route / -> route_target (the hub owns
# /hub/, JupyterHub.hub_routespec) and adds it again when the proxy restarts.
c.ServeCommand.hub = "external"
c.ExternalHub.api_url = cluster["hubApiUrl"]
c.ExternalHub.proxy_api_url = cluster["proxyApiUrl"]
c.ExternalHub.route_target = cluster["routeTarget"]
c.ExternalHub.ip = "0.0.0.0"
c.ExternalHub.port = cluster["webPort"]
if cluster["publicUrl"]:
    c.WebApp.public_url = cluster["publicUrl"]

#: a Kubernetes quantity's suffixes (the chart's schema admits only these)
UNITS = {"": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15, "E": 10**18}
UNITS.update({f"{p}i": 2 ** (10 * n) for n, p in enumerate("KMGTPE", start=1)})


def quantity_bytes(quantity: str) -> int:
    """Bytes of a Kubernetes quantity such as 200Gi, 500G or 1000000."""
    number, unit = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)([a-zA-Z]*)", quantity).groups()
    return int(float(number) * UNITS[unit])


# Builds: one slot each, the build time limit (both exist on one machine).
c.Store.concurrent_builds = cluster["buildConcurrency"]
c.LaunchPipeline.build_timeout = cluster["buildTimeout"]
# The store's budget: as set, else 80% of the volume (binderbox's own default, no budget,
# would fill it); the rest is room for builds under way.
c.Store.budget = cluster["storeBudget"] or int(0.8 * quantity_bytes(cluster["storeSize"]))

# cluster mode: each build a Job made from the chart's template, in this namespace, with
# the launch's events from the Job's pod and its log (`binderbox build --json`).
c.BinderboxApp.builder_class = "binderbox.builders.kube.KubernetesBuilds"
c.KubernetesBuilds.namespace = cluster["namespace"]
c.KubernetesBuilds.job_template = cluster["buildJobTemplate"]
c.KubernetesBuilds.mode = cluster["mode"]

# cluster mode: where sessions find environments and datasets (the launch options name
# paths under the roots; session pods mount the claims read-only at subPaths).  Read by
# the hub's BinderKubeSpawner: the chart sets them for zero-to-jupyterhub's hub in
# jupyterhub.hub.config.KubernetesSessions; here they matter to a hub binderbox manages
# itself (c.ManagedHub.backend = "kubernetes").
c.KubernetesSessions.mode = cluster["mode"]
c.KubernetesSessions.store_claim = cluster["storeClaim"]
if cluster["datasetsEnabled"]:
    c.KubernetesSessions.datasets_claim = cluster["datasetsClaim"]

# cluster mode (image mode): the registry environments are pushed to and looked up in.
if cluster["mode"] == "image":
    c.ImageRegistry.url = cluster["registryUrl"]
    c.ImageRegistry.prefix = cluster["registryPrefix"]
    c.ImageRegistry.insecure = cluster["registryInsecure"]
    if cluster["registryAuthFile"]:
        c.ImageRegistry.auth_file = cluster["registryAuthFile"]

# Logins (issue 11's c.Logins.mode); the hub's authenticator is zero-to-jupyterhub's.
c.Logins.mode = cluster["loginsMode"]

# The operator's settings, then their snippets.
for section, traits in (values.get("config") or {}).items():
    c[section].update(traits)
for name in sorted(values.get("extraConfig") or {}):
    exec(values["extraConfig"][name])
