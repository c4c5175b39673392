"""An emulated Kubernetes API with a stand-in kubelet, for tests of the Kubernetes backend.

No real Kubernetes API server can be had on this machine, so tests that need one run
against this module, and say so in their names (``test_..._emulated_api``).  What it is:

* **the API**: PyPI ``kmock`` (pinned in pyproject), an in-memory emulator of the
  Kubernetes REST API, on a loopback port, behind a small compatibility layer
  (:class:`_Compatible`) that fixes what real clients trip on: it serves
  ``?watch=True`` (what kubernetes_asyncio sends) as a watch, filters lists and watches
  by ``labelSelector`` (``k=v`` and ``k`` terms), and gives every object a
  ``resourceVersion``, a ``uid`` and a ``creationTimestamp`` (pods a ``Pending``
  status, claims a ``Bound`` one).  It does **not** validate objects (tests check what
  was sent with kubernetes-validate), schedule, or enforce NetworkPolicies or security
  contexts;
* **the stand-in kubelet**: each new pod is run by :attr:`EmulatedCluster.run_pod`
  (default :func:`run_in_bubblewrap`): its init containers in order (a native sidecar,
  ``restartPolicy: Always``, started and left running beside the rest until the pod
  ends, as a kubelet does, but never restarted), then its first container,
  each with the container's command, args, env and workingDir under
  bubblewrap as uid 1000, the pod's volumes mapped to host folders (a
  PersistentVolumeClaim to :meth:`EmulatedCluster.claim_dir`, an emptyDir to a fresh
  folder; ``subPath`` and ``readOnly`` honoured).  The pod gets an address of its own on
  loopback (127.x.y.z), which is what ``0.0.0.0`` in ``JUPYTERHUB_SERVICE_URL`` and
  ``--ip`` is turned into (the host network is shared).  The "image" is the host's
  system folders plus the interpreter folders of an environment mounted at
  ``/srv/env`` (what store mode's base image provides) -- unless the container's image
  is in :attr:`EmulatedCluster.registry` (a real loopback registry: image mode): that
  image is pulled (``skopeo copy``) and unpacked (``umoci unpack``) once, as a kubelet
  pulls it, and the container runs with its root filesystem as ``/`` (read-only: a
  real runtime adds a writable layer of the container's own), the mount points made
  in it as a runtime makes them, the image's variables under the container's own.
  Status is PATCHed back through the API (``Running`` with ``podIP`` and ready
  container statuses, then ``Succeeded``/``Failed`` with the exit code); a deleted
  pod's processes are killed.

Use (any thread; the emulator runs its own event loop in a thread)::

    with EmulatedCluster(tmp_path) as cluster:
        env = {"KUBECONFIG": str(cluster.kubeconfig)}
        ...
        pods = cluster.sent("Pod")          # objects as clients POSTed them
        live = cluster.objects("Pod")       # what the API holds now

``run_pod`` is a hook: ``async def run_pod(cluster, pod) -> None`` (see
:func:`run_in_bubblewrap`); a Job test can create a pod from a Job's template with
:meth:`EmulatedCluster.create` and let the kubelet run it.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import itertools
import json
import os
import random
import shutil
import signal
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import kmock
import yaml

from binderbox.environments.spec import ENV_PREFIX
from binderbox.runtime.layout import base_sandbox, env_interpreter_mounts, env_layers
from binderbox.runtime.sandbox import Sandbox, bwrap_path

Json = dict[str, Any]
PodRunner = Callable[["EmulatedCluster", Json], Awaitable[None]]


def _matches(obj: Json, selector: str) -> bool:
    labels = (obj.get("metadata") or {}).get("labels") or {}
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if key not in labels or ("=" in term and labels[key] != value):
            return False
    return True


class _Compatible(kmock.KubernetesEmulator):
    """kmock's emulator with the fixes real clients need (see the module docstring);
    records every object created, as sent, in :attr:`created`."""

    created: dict[str, list[Json]]
    _versions: itertools.count[int]

    def setup(self) -> None:
        self.resources.load_bundled()  # the built-in kinds (a k3s cluster's)
        self.created = defaultdict(list)
        self._versions = itertools.count(1)

    async def __call__(self, raw: Any) -> Any:
        if raw.query.get("watch") == "True":
            raw = raw.clone(rel_url=raw.rel_url.update_query(watch="true"))
        return await super().__call__(raw)

    async def _handle(self, request: Any) -> Any:
        data = request.data
        if request.resource is not None and isinstance(data, dict):
            if request.action == kmock.action.CREATE:
                self.created[data.get("kind") or request.resource.plural].append(
                    copy.deepcopy(data)
                )
                self._stamp_new(data, request.namespace)
            if request.action in (kmock.action.CREATE, kmock.action.UPDATE):
                data.setdefault("metadata", {})["resourceVersion"] = str(next(self._versions))
        return await super()._handle(request)

    @staticmethod
    def _stamp_new(data: Json, namespace: str | None) -> None:
        meta = data.setdefault("metadata", {})
        if namespace:
            meta.setdefault("namespace", namespace)
        meta.setdefault("uid", str(uuid.uuid4()))
        now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        meta.setdefault("creationTimestamp", now)
        status = {"Pod": {"phase": "Pending"}, "PersistentVolumeClaim": {"phase": "Bound"}}
        if data.get("kind") in status:
            data["status"] = status[data["kind"]]

    async def _serve_list(self, request: Any) -> Any:
        listing = await super()._serve_list(request)
        selector = request.params.get("labelSelector", "")
        listing["items"] = [item for item in listing["items"] if _matches(item, selector)]
        return listing

    async def _serve_watch(self, request: Any) -> AsyncIterator[Any]:
        selector = request.params.get("labelSelector", "")
        async for event in super()._serve_watch(request):
            if not isinstance(event, dict) or _matches(event.get("object") or {}, selector):
                yield event


class EmulatedCluster:
    """kmock on loopback plus the stand-in kubelet.  See the module docstring.

    ``root``: a folder for claims, emptyDirs and the kubeconfig; ``claims``: PVC name ->
    host folder (others get ``root/claims/<name>``); ``namespace``: the kubeconfig's."""

    def __init__(
        self,
        root: Path,
        claims: dict[str, Path] | None = None,
        namespace: str = "binder",
        run_pod: PodRunner | None = None,
    ) -> None:
        self.root = root
        self.claims = dict(claims or {})
        self.namespace = namespace
        self.run_pod: PodRunner = run_pod or run_in_bubblewrap
        self.kubeconfig = root / "kubeconfig"
        self._api = _Compatible()
        self._api.setup()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._stack = contextlib.AsyncExitStack()
        self._pods: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._addresses = (f"127.{random.randint(64, 250)}.0.{n}" for n in range(2, 250))
        self.url = ""
        #: exceptions of pod runs (a test's failure message shows them)
        self.errors: list[BaseException] = []
        #: image mode: a plain-HTTP loopback registry (host:port) whose images are pulled
        self.registry = ""
        self._images: dict[str, asyncio.Future[Path]] = {}
        #: seconds each image's (last) pull and unpack took; every pull's, in order
        self.pull_seconds: dict[str, float] = {}
        self.pulls: list[float] = []

    # -- lifecycle (from any thread) ----------------------------------------------

    def start(self) -> EmulatedCluster:
        """Serve the API on a loopback port, write :attr:`kubeconfig`, start the kubelet."""
        self._thread.start()
        self._call(self._start())
        return self

    def stop(self) -> None:
        """Kill the pods' processes, stop the API."""
        self._call(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def __enter__(self) -> EmulatedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _call(self, coro: Awaitable[Any]) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=60)  # type: ignore[arg-type]

    # -- what tests look at ---------------------------------------------------------

    def sent(self, kind: str) -> list[Json]:
        """Objects of ``kind`` (``Pod``, ``PersistentVolumeClaim``...) as clients created
        them, in order (before the emulator stamped anything on them)."""
        return copy.deepcopy(self._api.created.get(kind, []))

    def objects(self, plural: str) -> list[Json]:
        """What the API holds now of ``plural`` (``pods``, ``networkpolicies``...)."""
        return self._call(self._objects(plural))  # type: ignore[no-any-return]

    async def _objects(self, plural: str) -> list[Json]:
        return [
            copy.deepcopy(obj.raw)
            for (resource, _, _), obj in list(self._api.objects.items())
            if resource.plural == plural and not obj.deleted
        ]

    def running(self) -> list[str]:
        """Names of the pods the kubelet is running now."""
        return self._call(self._running())  # type: ignore[no-any-return]

    async def _running(self) -> list[str]:
        return sorted(name for (_, name), task in self._pods.items() if not task.done())

    def claim_dir(self, name: str) -> Path:
        """The host folder of the PersistentVolumeClaim ``name`` (made on first use)."""
        path = self.claims.setdefault(name, self.root / "claims" / name)
        path.mkdir(parents=True, exist_ok=True)
        return path

    async def patch(self, path: str, body: Json) -> None:
        """PATCH ``body`` (a merge patch) to the API path ``path``, as a controller would."""
        async with self._session.patch(f"{self.url}{path}", json=body) as response:
            response.raise_for_status()

    async def create(self, path: str, body: Json) -> None:
        """POST ``body`` to the API path ``path`` (e.g. a Job's pod)."""
        async with self._session.post(f"{self.url}{path}", json=body) as response:
            response.raise_for_status()

    def post(self, path: str, body: Json) -> None:
        """:meth:`create`, from any thread (as a test or another client would)."""
        self._call(self.create(path, body))

    def pod_address(self) -> str:
        """A fresh loopback address for a pod."""
        return next(self._addresses)

    async def image_bundle(self, image: str) -> Path | None:
        """The unpacked bundle (``rootfs/``, ``config.json``) of ``image`` when it is in
        :attr:`registry`, pulled once; None for any other image (the host's folders)."""
        if not self.registry or not image.startswith(f"{self.registry}/"):
            return None
        if image not in self._images:
            self._images[image] = asyncio.ensure_future(self._pull(image))
        return await asyncio.shield(self._images[image])

    async def _pull(self, image: str) -> Path:
        folder = Path(tempfile.mkdtemp(prefix="image-", dir=self.root))
        started = time.monotonic()
        steps = [
            ["skopeo", "copy", "-q", "--src-tls-verify=false", f"docker://{image}",
             f"oci:{folder / 'oci'}:pulled"],
            ["umoci", "unpack", "--image", f"{folder / 'oci'}:pulled", str(folder / "bundle")],
        ]  # fmt: skip
        for argv in steps:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
            )
            try:
                out, _ = await asyncio.wait_for(proc.communicate(), timeout=300)
            finally:  # timed out or cancelled: the pull we started stops with it
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            if proc.returncode != 0:
                raise RuntimeError(f"{argv[0]} of {image}: {out.decode(errors='replace')}")
        self.pull_seconds[image] = seconds = time.monotonic() - started
        self.pulls.append(seconds)
        return folder / "bundle"

    def forget_images(self) -> None:
        """Drop the unpacked images (the next pod pulls again, as on a fresh node); call
        it while no pod runs."""
        self._call(self._forget_images())

    async def _forget_images(self) -> None:
        for pulled in self._images.values():
            with contextlib.suppress(Exception):
                shutil.rmtree((await pulled).parent, ignore_errors=True)
        self._images.clear()

    # -- inside the loop --------------------------------------------------------------

    async def _start(self) -> None:
        await self._stack.enter_async_context(self._api)
        server = await self._stack.enter_async_context(kmock.Server(self._api))
        self.url = f"http://{server.host}:{server.port}"
        self._session = await self._stack.enter_async_context(aiohttp.ClientSession())
        self._write_kubeconfig()
        self._kubelet = asyncio.ensure_future(self._kubelet_loop())

    async def _stop(self) -> None:
        self._kubelet.cancel()
        for task in self._pods.values():
            task.cancel()
        await asyncio.gather(self._kubelet, *self._pods.values(), return_exceptions=True)
        await self._stack.aclose()

    def _write_kubeconfig(self) -> None:
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "current-context": "emulated",
            "clusters": [{"name": "emulated", "cluster": {"server": self.url}}],
            "contexts": [
                {
                    "name": "emulated",
                    "context": {
                        "cluster": "emulated",
                        "user": "emulated",
                        "namespace": self.namespace,
                    },
                }
            ],
            "users": [{"name": "emulated", "user": {"token": "emulated"}}],
        }
        self.kubeconfig.write_text(yaml.safe_dump(config))

    def _record_failure(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            self.errors.append(task.exception())  # type: ignore[arg-type]

    async def _kubelet_loop(self) -> None:
        """Run new pods, cancel the runs of pods that are gone (every 50 ms)."""
        while True:
            live = {
                (pod["metadata"].get("namespace", ""), pod["metadata"]["name"]): pod
                for pod in await self._objects("pods")
                if not pod["metadata"].get("deletionTimestamp")
            }
            for key, pod in live.items():
                if key not in self._pods:
                    self._pods[key] = task = asyncio.ensure_future(self.run_pod(self, pod))
                    task.add_done_callback(self._record_failure)
            for key, task in list(self._pods.items()):  # a finished run stays while its pod does
                if key not in live:
                    task.cancel()
                    if task.done():
                        del self._pods[key]
            await asyncio.sleep(0.05)


# -- the default pod runner ------------------------------------------------------------


def _pod_path(pod: Json) -> str:
    meta = pod["metadata"]
    return f"/api/v1/namespaces/{meta.get('namespace', 'default')}/pods/{meta['name']}/status"


def _volume_dirs(cluster: EmulatedCluster, pod: Json, scratch: Path) -> dict[str, Path]:
    """The pod's volumes as host folders (a claim's folder, a fresh emptyDir)."""
    dirs: dict[str, Path] = {}
    for volume in pod["spec"].get("volumes") or []:
        if "persistentVolumeClaim" in volume:
            dirs[volume["name"]] = cluster.claim_dir(volume["persistentVolumeClaim"]["claimName"])
        elif "emptyDir" in volume:
            dirs[volume["name"]] = Path(tempfile.mkdtemp(dir=scratch))
        else:
            raise ValueError(f"the stand-in kubelet has no volume like {volume}")
    return dirs


def _mounted(container: Json, volumes: dict[str, Path]) -> list[tuple[Json, Path]]:
    """The container's volumeMounts (outermost first), each with its host folder (made)."""
    mounts = sorted(container.get("volumeMounts") or [], key=lambda m: m["mountPath"])
    found = [(m, volumes[m["name"]] / m.get("subPath", "")) for m in mounts]
    for _, host in found:
        host.mkdir(parents=True, exist_ok=True)
    return found


def _container_env(container: Json, address: str, image_env: dict[str, str]) -> dict[str, str]:
    """The container's variables over ``image_env``, its service URL on the pod address."""
    env = dict(image_env)
    env.update({item["name"]: item.get("value", "") for item in container.get("env") or []})
    if "JUPYTERHUB_SERVICE_URL" in env:
        env["JUPYTERHUB_SERVICE_URL"] = env["JUPYTERHUB_SERVICE_URL"].replace("0.0.0.0", address)
    return env


def _container_box(container: Json, volumes: dict[str, Path], address: str) -> Sandbox:
    """The container as a bubblewrap sandbox: its mounts, env and working folder."""
    mounted = _mounted(container, volumes)
    env_host = next((host for m, host in mounted if m["mountPath"] == ENV_PREFIX), None)
    image = env_interpreter_mounts(env_host) if env_host else []
    box = base_sandbox(image, None, env_layers(env_host) if env_host else [])
    box.env.clear()
    for mount, host in mounted:
        (box.ro_bind if mount.get("readOnly") else box.bind)(host, mount["mountPath"])
    box.setenv(_container_env(container, address, {}))
    box.cwd = container.get("workingDir") or "/"
    return box


def _image_argv(container: Json, volumes: dict[str, Path], address: str, bundle: Path) -> list[str]:
    """bubblewrap's command line of ``container`` in an unpacked image: its root
    filesystem read-only as ``/``, the pod's volumes over it, uid 1000, the image's
    variables (umoci's runtime config) under the container's."""
    runtime = json.loads((bundle / "config.json").read_text())["process"]
    env = _container_env(container, address, dict(v.split("=", 1) for v in runtime["env"]))
    argv = [
        bwrap_path(), "--ro-bind", str(bundle / "rootfs"), "/", "--proc", "/proc",
        "--dev", "/dev", "--tmpfs", "/tmp", "--unshare-user", "--uid", "1000", "--gid", "1000",
        "--unshare-pid", "--unshare-ipc", "--die-with-parent", "--new-session",
    ]  # fmt: skip
    for mount, host in _mounted(container, volumes):
        # the mount point, made in the unpacked image as a container runtime makes it
        (bundle / "rootfs" / mount["mountPath"].lstrip("/")).mkdir(parents=True, exist_ok=True)
        argv += ["--ro-bind" if mount.get("readOnly") else "--bind", str(host), mount["mountPath"]]
    argv += ["--chdir", container.get("workingDir") or runtime.get("cwd") or "/", "--clearenv"]
    for name, value in sorted(env.items()):
        argv += ["--setenv", name, value]
    return [*argv, "--", *_argv(container, address)]


def _argv(container: Json, address: str) -> list[str]:
    argv = [*(container.get("command") or []), *(container.get("args") or [])]
    return [arg.replace("=0.0.0.0", f"={address}") for arg in argv]


async def _run_container(
    cluster: EmulatedCluster,
    container: Json,
    volumes: dict[str, Path],
    address: str,
    log: Path,
    started: Callable[[], Any],
) -> int:
    bundle = await cluster.image_bundle(container.get("image", ""))
    if bundle is not None:
        argv = _image_argv(container, volumes, address, bundle)
    else:
        argv = _container_box(container, volumes, address).argv(_argv(container, address))
    with log.open("ab") as out:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
        )
    try:
        await started()
        return await proc.wait()
    finally:
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def run_in_bubblewrap(cluster: EmulatedCluster, pod: Json) -> None:
    """The stand-in kubelet's pod run (see the module docstring); output in
    ``<root>/pods/<name>.log``."""
    address = cluster.pod_address()
    scratch = Path(tempfile.mkdtemp(dir=cluster.root))
    log = cluster.root / "pods" / f"{pod['metadata']['name']}.log"
    log.parent.mkdir(exist_ok=True)
    path = _pod_path(pod)

    async def nothing() -> None:
        return None

    async def running() -> None:
        ready = [_container_status(pod, True, {"running": {}})]
        status = {"phase": "Running", "podIP": address, "containerStatuses": ready}
        await cluster.patch(path, {"status": status})

    sidecars: list[asyncio.Future[int]] = []
    try:
        volumes = _volume_dirs(cluster, pod, scratch)
        for init in pod["spec"].get("initContainers") or []:
            if init.get("restartPolicy") == "Always":  # a sidecar: runs beside the rest
                sidecar = _run_container(cluster, init, volumes, address, log, nothing)
                sidecars.append(asyncio.ensure_future(sidecar))
                continue
            code = await _run_container(cluster, init, volumes, address, log, nothing)
            if code != 0:
                await _finished(cluster, path, pod, code)
                return
        main = pod["spec"]["containers"][0]
        code = await _run_container(cluster, main, volumes, address, log, running)
        await _finished(cluster, path, pod, code)
    finally:
        for sidecar in sidecars:  # their processes are killed
            sidecar.cancel()
        await asyncio.gather(*sidecars, return_exceptions=True)
        shutil.rmtree(scratch, ignore_errors=True)


def _container_status(pod: Json, ready: bool, state: Json) -> Json:
    main = pod["spec"]["containers"][0]
    return {
        "name": main["name"],
        "image": main.get("image", ""),
        "imageID": "",
        "restartCount": 0,
        "ready": ready,
        "state": state,
    }


async def _finished(cluster: EmulatedCluster, path: str, pod: Json, code: int) -> None:
    state = {"terminated": {"exitCode": code, "reason": "Completed" if code == 0 else "Error"}}
    status = {
        "phase": "Succeeded" if code == 0 else "Failed",
        "containerStatuses": [_container_status(pod, False, state)],
    }
    with contextlib.suppress(aiohttp.ClientError):
        await cluster.patch(path, {"status": status})


def pod_log(cluster: EmulatedCluster, name: str) -> str:
    """What the pod ``name``'s containers printed (for failure messages)."""
    log = cluster.root / "pods" / f"{name}.log"
    return log.read_text(errors="replace") if log.exists() else ""


def dump(objects: list[Json]) -> str:
    """Objects as JSON lines (for failure messages)."""
    return "\n".join(json.dumps(obj, sort_keys=True) for obj in objects)
