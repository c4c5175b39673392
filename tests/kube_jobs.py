"""Build Jobs over the emulated Kubernetes API (tests/kube_emulator.py): what a cluster adds.

:class:`JobCluster` is kube's :class:`~kube_emulator.EmulatedCluster` plus three things a
real cluster has and kmock has not:

* **a stand-in Job controller**: a new Job gets one pod made from its template (named
  ``<job>-<random>``, labelled ``job-name`` and ``batch.kubernetes.io/job-name`` as the
  real controller does); when the pod ends the Job's status says so (``succeeded`` /
  ``failed`` with a ``Complete`` / ``Failed`` condition); a pod running past the Job's
  ``activeDeadlineSeconds`` is deleted and the Job failed with ``DeadlineExceeded``; a
  deleted Job's pods, and the Secrets whose owner reference names its uid, are deleted
  (the garbage collector's part);
* **pod logs** (``GET .../pods/<name>/log``, ``follow=true`` honoured): the kubelet's
  log file of the pod (of the ``container`` asked for, for build pods), followed until
  that container's run ended;
* **build pods run unprivileged without bubblewrap** (tests/podrun.py: a mount
  namespace, the pod's uid, no capabilities), their volumes mapped as the kubelet maps
  them (a claim's folder and ``subPath``; emptyDirs owned by the pod's uid, its
  ``fsGroup``), except ``/tmp`` (the host's: the test's repositories are there) and
  with a uv cache kept between runs at ``/srv/binderbox/uv-cache`` (a warm node's); their
  init containers first, each to its end (``initContainerStatuses`` reported); a
  ``secret`` volume waits for its Secret, as a kubelet does, and is its keys as files
  owned by root, group the pod's gid, with the volume's ``defaultMode``.  Other pods
  run as kube's kubelet runs them.

:func:`render_build_job` renders the chart's own ``templates/build-job.yaml`` with
helm, with the rest of the chart (zero-to-jupyterhub vendored in it).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp.web
from helm_helpers import VALUE_SETS, documents, find, render
from kube_emulator import (
    EmulatedCluster,
    Json,
    _Compatible,
    _container_status,
    _finished,
    _pod_path,
    run_in_bubblewrap,
)
from podrun import BINDERBOX, POD_UID, POD_UV_CACHE, StandInPods, owned

_LOG_PATH = re.compile(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log$")
#: at most this many seconds of a followed log (a bound on the loop)
LOG_LIMIT = 1800


def render_build_job(tmp: Path, values: str = "store", sets: tuple[str, ...] = ()) -> Path:
    """The chart's build Job template rendered by helm (examples/<values>.yaml, and
    ``sets``), as the chart's ConfigMap gives it to binderbox: ``job.yaml`` under ``tmp``."""
    docs = documents(render(VALUE_SETS[values], "1.30.0", sets))
    config_map = find(docs, "ConfigMap", "binderbox-build-job")
    path = tmp / "job.yaml"
    path.write_text(config_map["data"]["job.yaml"])
    return path


class _WithLogs(_Compatible):
    """kube's API emulator, with pod logs served from the kubelet's files."""

    cluster: JobCluster

    async def __call__(self, raw: Any) -> Any:
        found = _LOG_PATH.match(raw.path)
        if raw.method == "GET" and found:
            return await self._log(raw, found.group(1), found.group(2))
        return await super().__call__(raw)

    async def _log(self, raw: Any, namespace: str, name: str) -> Any:
        follow = raw.query.get("follow", "").lower() in ("true", "1")
        container = raw.query.get("container", "")
        path, offset = self.cluster.root / "pods" / f"{name}.{container}.log", 0
        if not path.exists():  # not a build pod: one log for all its containers
            path = self.cluster.root / "pods" / f"{name}.log"
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(raw)
        for _ in range(int(LOG_LIMIT / 0.05)):
            ended = (
                self.cluster.pod_ended(namespace, name)
                or container in self.cluster.ended[(namespace, name)]
            )
            data = path.read_bytes()[offset:] if path.exists() else b""
            offset += len(data)
            if data:
                await response.write(data)
            if not follow or ended:
                break
            await asyncio.sleep(0.05)
        await response.write_eof()
        return response


class JobCluster(EmulatedCluster):
    """The emulated API with Jobs, pod logs and unprivileged build pods (module docstring)."""

    def __init__(self, root: Path, pods: StandInPods, **kwargs: Any) -> None:
        root.mkdir(parents=True, exist_ok=True)
        super().__init__(root, run_pod=_run_pod, **kwargs)
        self.pods = pods
        self._api = _WithLogs()
        self._api.setup()
        self._api.cluster = self
        self._jobs: dict[tuple[str, str], float] = {}  # a Job seen -> when its pod was made
        self._uids: dict[tuple[str, str], str] = {}  # a Job seen -> its uid
        #: (namespace, pod) -> the names of its containers whose run ended
        self.ended: defaultdict[tuple[str, str], set[str]] = defaultdict(set)

    def delete_job(self, namespace: str, name: str) -> None:
        """Delete a Job as someone with kubectl would (its pods follow)."""
        self._call(self._delete(f"/apis/batch/v1/namespaces/{namespace}/jobs/{name}"))

    def pod_ended(self, namespace: str, name: str) -> bool:
        """Whether the kubelet's run of the pod ended (or never started and the pod is
        gone)."""
        task = self._pods.get((namespace, name))
        return task is None or task.done()

    async def _start(self) -> None:
        await super()._start()
        self._controller = asyncio.ensure_future(self._job_loop())

    async def _stop(self) -> None:
        self._controller.cancel()
        await asyncio.gather(self._controller, return_exceptions=True)
        await super()._stop()

    async def _job_loop(self) -> None:
        while True:
            try:
                await self._reconcile()
            except aiohttp.ClientError as err:  # the API stopping: the next round tells
                self.errors.append(err)
            await asyncio.sleep(0.1)

    async def _reconcile(self) -> None:
        jobs = {
            (j["metadata"]["namespace"], j["metadata"]["name"]): j
            for j in await self._objects("jobs")
        }
        pods = await self._objects("pods")
        for key, job in jobs.items():
            mine = [p for p in pods if p["metadata"].get("labels", {}).get("job-name") == key[1]]
            if key not in self._jobs:
                self._jobs[key] = time.monotonic()
                self._uids[key] = job["metadata"]["uid"]
                await self._make_pod(job)
            elif mine:
                await self._follow(job, mine[0], self._jobs[key])
        for key in [key for key in self._jobs if key not in jobs]:  # deleted: its pods go
            del self._jobs[key]
            for pod in pods:
                if pod["metadata"].get("labels", {}).get("job-name") == key[1]:
                    await self._delete(
                        f"/api/v1/namespaces/{key[0]}/pods/{pod['metadata']['name']}"
                    )
            await self._collect(key[0], self._uids.pop(key))

    async def _collect(self, namespace: str, uid: str) -> None:
        """Delete the Secrets a deleted Job owned (the garbage collector's part)."""
        for secret in await self._objects("secrets"):
            meta = secret["metadata"]
            if any(ref.get("uid") == uid for ref in meta.get("ownerReferences") or []):
                await self._delete(f"/api/v1/namespaces/{namespace}/secrets/{meta['name']}")

    async def secret(self, namespace: str, name: str) -> Json:
        """The Secret ``name``, once it exists (as a kubelet waits for it; bounded)."""
        for _ in range(600):
            for secret in await self._objects("secrets"):
                meta = secret["metadata"]
                if (meta.get("namespace"), meta["name"]) == (namespace, name):
                    return secret
            await asyncio.sleep(0.1)
        raise TimeoutError(f"no Secret {namespace}/{name}")

    async def _make_pod(self, job: Json) -> None:
        namespace, name = job["metadata"]["namespace"], job["metadata"]["name"]
        template = job["spec"]["template"]
        labels = {**(template.get("metadata") or {}).get("labels", {})}
        labels.update({"job-name": name, "batch.kubernetes.io/job-name": name})
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"{name}-{secrets.token_hex(3)}", "labels": labels},
            "spec": template["spec"],
        }
        await self.create(f"/api/v1/namespaces/{namespace}/pods", pod)

    async def _follow(self, job: Json, pod: Json, since: float) -> None:
        """The Job's status from its pod's; its deadline enforced."""
        if (job.get("status") or {}).get("conditions"):
            return  # decided
        phase = (pod.get("status") or {}).get("phase")
        meta = job["metadata"]
        path = f"/apis/batch/v1/namespaces/{meta['namespace']}/jobs/{meta['name']}/status"
        deadline = job["spec"].get("activeDeadlineSeconds")
        if phase in ("Succeeded", "Failed"):
            done = phase == "Succeeded"
            condition = {"type": "Complete" if done else "Failed", "status": "True"}
            if not done:
                condition["reason"] = "BackoffLimitExceeded"
            counts = {"succeeded": 1} if done else {"failed": 1}
            await self.patch(path, {"status": {**counts, "conditions": [condition]}})
        elif deadline and time.monotonic() - since > deadline:
            reason = {"type": "Failed", "status": "True", "reason": "DeadlineExceeded"}
            await self.patch(path, {"status": {"failed": 1, "conditions": [reason]}})
            await self._delete(
                f"/api/v1/namespaces/{meta['namespace']}/pods/{pod['metadata']['name']}"
            )

    async def _delete(self, path: str) -> None:
        async with self._session.delete(f"{self.url}{path}") as response:
            if response.status != 404:
                response.raise_for_status()


async def _volume_sources(cluster: JobCluster, pod: Json, scratch: Path) -> dict[str, Path]:
    """{volume name: host folder} of a build pod (see the module docstring)."""
    namespace = pod["metadata"].get("namespace", "default")
    sources: dict[str, Path] = {}
    for volume in pod["spec"].get("volumes") or []:
        if "persistentVolumeClaim" in volume:
            sources[volume["name"]] = cluster.claim_dir(
                volume["persistentVolumeClaim"]["claimName"]
            )
        elif "emptyDir" in volume:
            sources[volume["name"]] = owned(Path(tempfile.mkdtemp(dir=scratch)))
        elif "secret" in volume:
            secret = await cluster.secret(namespace, volume["secret"]["secretName"])
            folder = Path(tempfile.mkdtemp(dir=scratch))
            folder.chmod(0o755)
            for key, value in (secret.get("data") or {}).items():
                (folder / key).write_bytes(base64.b64decode(value))
                os.chown(folder / key, 0, POD_UID)  # fsGroup's group, the volume's mode
                (folder / key).chmod(volume["secret"].get("defaultMode", 0o644))
            sources[volume["name"]] = folder
        else:
            raise ValueError(f"the stand-in kubelet has no volume like {volume}")
    return sources


def _mounts(pod: Json, container: Json, sources: dict[str, Path]) -> dict[str, Path]:
    """{mount path: host folder} of one of a build pod's containers."""
    secrets_ = {v["name"] for v in pod["spec"].get("volumes") or [] if "secret" in v}
    mounts: dict[str, Path] = {}
    for mount in container.get("volumeMounts") or []:
        if mount["mountPath"] != "/tmp":
            host = sources[mount["name"]] / mount.get("subPath", "")
            # the service's uid is the pod's; a Secret's files stay root's
            mounts[mount["mountPath"]] = host if mount["name"] in secrets_ else owned(host)
    mounts["/srv/binderbox/uv-cache"] = owned(POD_UV_CACHE)
    return dict(sorted(mounts.items()))


async def _run_container(
    cluster: JobCluster, pod: Json, container: Json, sources: dict[str, Path]
) -> int:
    """Run one container of a build pod to its end (killed when the run is cancelled);
    its output in ``<root>/pods/<pod>.<container>.log``; its exit code."""
    log = cluster.root / "pods" / f"{pod['metadata']['name']}.{container['name']}.log"
    command = [*container["command"], *container.get("args", [])]
    command[0] = BINDERBOX if command[0] == "binderbox" else command[0]  # the image's
    env = cluster.pods.env({e["name"]: e.get("value", "") for e in container.get("env") or []})
    argv = cluster.pods.argv(command, _mounts(pod, container, sources), env)
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL, start_new_session=True
        )
    try:
        return await proc.wait()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


def _init_status(container: Json, state: Json) -> Json:
    return {
        "name": container["name"],
        "image": container.get("image", ""),
        "imageID": "",
        "restartCount": 0,
        "ready": False,
        "state": state,
    }


async def _run_pod(cluster: EmulatedCluster, pod: Json) -> None:
    """Build pods unprivileged without bubblewrap; others as kube's kubelet runs them."""
    labels = pod["metadata"].get("labels") or {}
    if labels.get("app.kubernetes.io/component") != "build":
        await run_in_bubblewrap(cluster, pod)
        return
    assert isinstance(cluster, JobCluster)
    meta, path = pod["metadata"], _pod_path(pod)
    ended = cluster.ended[(meta.get("namespace", "default"), meta["name"])]
    inits, main = pod["spec"].get("initContainers") or [], pod["spec"]["containers"][0]
    (cluster.root / "pods").mkdir(exist_ok=True)
    for container in [*inits, main]:
        (cluster.root / "pods" / f"{meta['name']}.{container['name']}.log").touch()
    scratch = Path(tempfile.mkdtemp(dir=cluster.root))
    scratch.chmod(0o755)
    try:
        sources = await _volume_sources(cluster, pod, scratch)
        statuses: list[Json] = []
        for init in inits:
            statuses.append(_init_status(init, {"running": {}}))
            await cluster.patch(path, {"status": {"initContainerStatuses": statuses}})
            code = await _run_container(cluster, pod, init, sources)
            ended.add(init["name"])
            done = {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}
            statuses[-1] = _init_status(init, {"terminated": done})
            await cluster.patch(path, {"status": {"initContainerStatuses": statuses}})
            if code != 0:
                await _finished(cluster, path, pod, code)
                return
        running = [_container_status(pod, True, {"running": {}})]
        await cluster.patch(path, {"status": {"phase": "Running", "containerStatuses": running}})
        code = await _run_container(cluster, pod, main, sources)
        ended.add(main["name"])
        await _finished(cluster, path, pod, code)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


__all__ = ["POD_UID", "JobCluster", "render_build_job"]
