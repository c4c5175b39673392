"""The emulated Kubernetes API and its stand-in kubelet (tests/kube_emulator.py) behave as
the tests of the Kubernetes backend rely on: a real client (kubernetes_asyncio, what
KubeSpawner uses) creates, lists by label, watches and deletes; a pod runs as uid 1000
with its claim mounted at its subPath, and is killed when deleted."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from kube_emulator import EmulatedCluster, pod_log

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "p1", "labels": {"app": "one"}},
    "spec": {
        "volumes": [{"name": "data", "persistentVolumeClaim": {"claimName": "shared"}}],
        "containers": [
            {
                "name": "main",
                "image": "base",
                "command": [
                    "/bin/sh",
                    "-c",
                    "id -u > /data/uid; echo $GREETING > /data/env; sleep 60",
                ],
                "env": [{"name": "GREETING", "value": "hello"}],
                "volumeMounts": [{"name": "data", "mountPath": "/data", "subPath": "sub"}],
            }
        ],
    },
}


async def _exercise(cluster: EmulatedCluster) -> dict[str, Any]:
    from kubernetes_asyncio import client, config, watch

    await config.load_kube_config(str(cluster.kubeconfig))
    seen: dict[str, Any] = {}
    async with client.ApiClient() as api:
        v1 = client.CoreV1Api(api)
        await v1.create_namespaced_pod("binder", POD)
        for _ in range(200):
            pod = await v1.read_namespaced_pod("p1", "binder")
            if pod.status.phase == "Running" or cluster.errors:
                break
            await asyncio.sleep(0.05)
        seen["pod"] = pod
        seen["other"] = await v1.list_namespaced_pod("binder", label_selector="app=two")
        seen["mine"] = await v1.list_namespaced_pod("binder", label_selector="app=one")
        async with watch.Watch().stream(
            v1.list_namespaced_pod, namespace="binder", label_selector="app=one", timeout_seconds=5
        ) as events:
            async for event in events:
                seen["event"] = event
                break
        for _ in range(100):  # the container writes its files as it starts
            if (cluster.claim_dir("shared") / "sub" / "env").exists():
                break
            await asyncio.sleep(0.05)
        await v1.delete_namespaced_pod("p1", "binder")
    return seen


def test_pod_runs_under_bubblewrap_emulated_api(tmp_path: Path) -> None:
    with EmulatedCluster(tmp_path) as cluster:
        seen = asyncio.run(_exercise(cluster))
        assert not cluster.errors, cluster.errors
        pod = seen["pod"]
        assert pod.status.phase == "Running", pod_log(cluster, "p1")
        assert pod.status.pod_ip.startswith("127.")
        assert pod.metadata.resource_version and pod.metadata.uid
        assert [p.metadata.name for p in seen["mine"].items] == ["p1"]
        assert seen["other"].items == []
        assert seen["event"]["type"] == "ADDED"
        data = cluster.claim_dir("shared") / "sub"
        assert (data / "uid").read_text().strip() == "1000"
        assert (data / "env").read_text().strip() == "hello"
        assert cluster.sent("Pod")[0]["metadata"]["name"] == "p1"
        assert "resourceVersion" not in cluster.sent("Pod")[0]["metadata"]  # as sent
        for _ in range(100):
            if not cluster.objects("pods") and not cluster.running():
                break
            asyncio.run(asyncio.sleep(0.05))
        assert cluster.objects("pods") == []
        assert cluster.running() == []  # the deleted pod's process was killed
