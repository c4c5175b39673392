"""The session pod a real KubeSpawner makes from a rendered chart's hub configuration.

``python tests/kubespawner_pod.py RENDERED.yaml NAMESPACE`` prints the pod (JSON, as the hub would
send it to the API server) that KubeSpawner's ``get_pod_manifest`` builds after loading
zero-to-jupyterhub's own ``jupyterhub_config.py`` and ``z2jh.py`` from the rendered hub
ConfigMap, with the rendered hub Secret's files where the hub pod mounts them.  The only
change to those files is their folder (``/usr/local/etc/jupyterhub/`` -> a temporary one).
Nothing talks to a Kubernetes API: the kubeconfig names an address nothing is asked of.
A separate process: the hub config configures process-wide state (tornado's HTTP client).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

HUB_FILES = ("jupyterhub_config.py", "z2jh.py")


def lay_out(docs: list[dict[str, Any]], root: Path) -> None:
    """The hub pod's /usr/local/etc/jupyterhub, under ``root``."""
    secret = _named(docs, "Secret", "hub")
    config_map = _named(docs, "ConfigMap", "hub")
    (root / "secret").mkdir()
    (root / "config").mkdir()
    for key, value in secret["data"].items():
        (root / "secret" / key).write_bytes(base64.b64decode(value))
    for key, value in config_map["data"].items():
        if key in HUB_FILES:
            (root / key).write_text(value.replace("/usr/local/etc/jupyterhub/", f"{root}/"))
        else:
            (root / "config" / key).write_text(value)
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "none",
        "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:9"}}],
        "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
        "users": [{"name": "none", "user": {}}],
    }
    (root / "kubeconfig").write_text(yaml.safe_dump(kubeconfig))


def _named(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    return next(d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name)


async def pod_manifest(root: Path) -> dict[str, Any]:
    from kubernetes_asyncio.client import ApiClient
    from kubespawner import KubeSpawner
    from traitlets.config.loader import PyFileConfigLoader

    config = PyFileConfigLoader("jupyterhub_config.py", path=str(root)).load_config()
    spawner = KubeSpawner(config=config, _mock=True)
    pod = await spawner.get_pod_manifest()
    async with ApiClient() as client:
        return dict(client.sanitize_for_serialization(pod))


def main() -> None:
    docs = [d for d in yaml.safe_load_all(Path(sys.argv[1]).read_text()) if d]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        lay_out(docs, root)
        os.environ.update(
            KUBECONFIG=str(root / "kubeconfig"),
            # what Kubernetes sets in the hub pod for the Services the config names
            PROXY_API_SERVICE_PORT="8001",
            HUB_SERVICE_PORT="8081",
            POD_NAMESPACE=sys.argv[2],
        )
        sys.stdout, real = sys.stderr, sys.stdout  # the hub config prints what it loads
        pod = asyncio.run(pod_manifest(root))
        sys.stdout = real
    print(json.dumps(pod))


if __name__ == "__main__":
    main()
