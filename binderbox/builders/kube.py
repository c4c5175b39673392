"""Builds as Kubernetes Jobs: ``c.BinderboxApp.builder_class = KubernetesBuilds``.

Each build the pipeline starts (:class:`~binderbox.builders.pods.PodBuilds`: one per
environment key, at most ``Store.concurrent_builds`` at once -- the store's queue
holds the others, their visitors told how many are ahead) becomes one Job, made from
the Helm chart's template (``helm/binderbox/templates/build-job.yaml``, mounted at
:attr:`KubernetesBuilds.job_template`):

* its name is ``binderbox-build-<key prefix>-<random>``; labels name the key;
* its container gets ``binderbox build <spec pinned to the commit> --json --in-pod
  --output=/srv/env`` as ``args``; the ``{build_id}`` in a volume's ``subPath`` (the
  store volume's, mounted at ``/srv/env``) becomes the build's own folder, the store's
  ``tmp/<key>.<random>``, which the store publishes by rename once the build ended
  well;
* the pod is what the template says: unprivileged (runAsNonRoot, uid 1000, no
  privilege escalation, every capability dropped, no host namespace or path, no
  service account token).  binderbox refuses a template that asks for less
  (:func:`check_unprivileged`), so an edited template cannot make builds privileged.

Then binderbox waits for the Job's pod (label ``job-name``), follows its log (the
``--json`` lines become the launch's ``building`` events, its ``failed`` event the
launch's: :func:`~binderbox.builders.pods.pod_lines`) and deletes the Job, with its
pod, whatever happened: a finished build, a failure, a timeout
(``LaunchPipeline.build_timeout``; the Job's ``activeDeadlineSeconds`` is the
cluster's own limit), a visitor's build given up.  A pod that ends without a verdict
gets a plain reason: the Job was deleted, the cluster's deadline passed, the pod ran
out of memory, or its exit code.

A private repository (the visitor's own git token: :meth:`RepoProvider.credentials
<binderbox.providers.base.RepoProvider.credentials>`) is fetched in the pod by an init
container, ``fetch`` (:func:`add_fetch`: the build container's image, user and
security context, running ``binderbox build <spec> --json --fetch-only --in-pod
--git-tokens=...``), into the pod's own content cache (the scratch emptyDir); the
build container then builds from that cache and has no token.  The token is in a
Secret of the build's own (:func:`tokens_secret`, named as the Job, made right after it
with an owner reference to it, so that Kubernetes deletes it with the Job), mounted
read-only in the ``fetch`` container only: never in the Job's arguments or
environment, never where the repository's code (setup.py, postBuild) runs.  binderbox
deletes the Secret as soon as the fetch ended, and again with the Job.  The fetch's
events are the build's first lines, its ``failed`` event (a token the server refuses)
the launch's.

The API is reached with the pod's service account (the chart's Role: Jobs, pods,
pods/log in its namespace; Secrets: create and delete only, never read), or a
kubeconfig (:attr:`KubernetesBuilds.kube_config`, ``$KUBECONFIG``).  A service that
stopped while its builds ran leaves their Jobs: at its next start,
:meth:`KubernetesBuilds.recover` deletes this release's build Jobs made before it
started (with their pods and Secrets), whose output nobody would publish.

Image mode (``mode = "image"``, the chart's ``mode: image``): the template's ``/srv/env``
is an emptyDir, and the build container also gets ``--push=<registry>/<prefix>`` (and
``--insecure`` when ``c.ImageRegistry.insecure``): the pod writes the environment's image
and pushes it itself, with the registry's credentials the template mounts
(``REGISTRY_AUTH_FILE``).  The store queues and shares the build as any other and keeps
nothing of it (:attr:`pushes_images`); a pod whose log ends without its ``Pushed`` line
fails the build.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import datetime
import json
import os
import secrets
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from pathlib import Path
from typing import Any

import yaml
from traitlets import CaselessStrEnum, Float, Unicode, default

from ..environments import ENV_PREFIX
from ..errors import BuildError
from .pods import PodBuilds, pod_lines

Json = dict[str, Any]
#: the label the Job controller puts on a Job's pods
JOB_LABEL = "job-name"
#: the label naming a build Job's environment key
KEY_LABEL = "binderbox.org/build-key"
#: template labels an upgrade of the chart changes (not used to find a release's Jobs)
UPGRADE_LABELS = ("app.kubernetes.io/version", "helm.sh/chart")
#: where the fetch init container sees the build's Secret, and its one key
TOKENS_DIR = "/etc/binderbox/git-tokens"
TOKENS_KEY = "tokens.json"


def check_unprivileged(pod: Json) -> None:
    """Refuse (``BuildError``) a build pod spec that is not unprivileged (see the module
    docstring): the operator's template, checked before anything is created."""
    problems = []
    spec_ctx = pod.get("securityContext") or {}
    if pod.get("automountServiceAccountToken") is not False:
        problems.append("it mounts a service account token")
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if pod.get(flag):
            problems.append(f"{flag} is set")
    volumes = pod.get("volumes") or []
    if any("hostPath" in volume for volume in volumes):
        problems.append("it mounts a host path")
    if any("secret" in volume or "projected" in volume for volume in volumes):
        problems.append("it mounts a Secret")  # the build runs the repository's code
    for container in [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]:
        ctx = {**spec_ctx, **(container.get("securityContext") or {})}
        if _reads_secrets(container):
            problems.append(f"{container.get('name')} reads a Secret into its environment")
        if ctx.get("privileged") or ctx.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{container.get('name')} may gain privileges")
        if not ctx.get("runAsNonRoot") or not ctx.get("runAsUser"):
            problems.append(f"{container.get('name')} may run as root")
        if "ALL" not in ((ctx.get("capabilities") or {}).get("drop") or []):
            problems.append(f"{container.get('name')} keeps capabilities")
    if problems:
        raise BuildError(
            "The build Job template is not unprivileged: " + "; ".join(problems) + ".",
            hint="Ask the operator to fix helm/binderbox/templates/build-job.yaml.",
            reason="build_config",
        )


def _reads_secrets(container: Json) -> bool:
    """Whether ``container`` has a Secret in its environment (env or envFrom)."""
    refs = [(var.get("valueFrom") or {}).get("secretKeyRef") for var in container.get("env") or []]
    refs += [source.get("secretRef") for source in container.get("envFrom") or []]
    return any(refs)


def add_fetch(job: Json) -> None:
    """Give ``job`` the ``fetch`` init container of a private repository (see the module
    docstring), which alone mounts the Secret named as the Job."""
    pod = job["spec"]["template"]["spec"]
    build = pod["containers"][0]
    fetch = copy.deepcopy(build)
    fetch["name"] = "fetch"
    fetch["args"] = [
        build["args"][0],
        "--json",
        "--fetch-only",
        "--in-pod",
        f"--git-tokens={TOKENS_DIR}/{TOKENS_KEY}",
    ]
    mounts = [m for m in build.get("volumeMounts") or [] if m["mountPath"] != ENV_PREFIX]
    fetch["volumeMounts"] = [
        *mounts,
        {"name": "binderbox-git-tokens", "mountPath": TOKENS_DIR, "readOnly": True},
    ]
    pod["initContainers"] = [*(pod.get("initContainers") or []), fetch]
    secret = {"secretName": job["metadata"]["name"], "defaultMode": 0o440}
    pod.setdefault("volumes", []).append({"name": "binderbox-git-tokens", "secret": secret})


def tokens_secret(job: Json, uid: str, tokens: Mapping[str, str]) -> Json:
    """The Secret of ``job`` (made, with the ``uid`` the API gave it): the visitor's
    ``tokens`` as ``tokens.json``, owned by the Job (deleted with it), immutable."""
    meta = job["metadata"]
    data = base64.b64encode(json.dumps(dict(tokens)).encode()).decode()
    owner = {"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"], "uid": uid}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "immutable": True,
        "metadata": {
            "name": meta["name"],
            "namespace": meta["namespace"],
            "labels": dict(meta.get("labels") or {}),
            "ownerReferences": [owner],
        },
        "data": {TOKENS_KEY: data},
    }


class KubernetesBuilds(PodBuilds):
    """Builds as Kubernetes Jobs.  See the module docstring."""

    namespace = Unicode(
        help="The namespace of the build Jobs (default: $BINDERBOX_NAMESPACE, else 'default')."
    ).tag(config=True)
    job_template = Unicode(
        "/etc/binderbox/build-job/job.yaml",
        help="The build Job's template (the Helm chart's build-job ConfigMap).",
    ).tag(config=True)
    mode = CaselessStrEnum(
        ["store", "image"],
        "store",
        help="""'store': builds write the shared store volume; 'image': each build pushes its
        environment's image to c.ImageRegistry (binderbox build --push) and the store
        keeps nothing of it.""",
    ).tag(config=True)
    kube_config = Unicode(
        "",
        help="A kubeconfig file for the API ('' = $KUBECONFIG, else the pod's service account).",
    ).tag(config=True)
    poll_interval = Float(1.0, help="Seconds between looks at a build pod that starts.").tag(
        config=True
    )
    pod_start_timeout = Float(
        600.0,
        help="Seconds a build pod may wait to start (scheduling, its image) before the "
        "build fails.",
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._started = datetime.datetime.now(datetime.UTC)
        self._made: set[str] = set()  # the Jobs of this run

    @default("namespace")
    def _default_namespace(self) -> str:
        return os.environ.get("BINDERBOX_NAMESPACE") or "default"

    def _template(self) -> Json:
        try:
            job = yaml.safe_load(Path(self.job_template).read_text())
        except (OSError, yaml.YAMLError) as err:
            raise BuildError(
                "This service cannot start builds: its build Job template is unreadable.",
                log_message=f"{self.job_template}: {err}",
            ) from None
        if not isinstance(job, dict) or not isinstance(job.get("spec"), dict):
            raise BuildError(
                "This service cannot start builds: its build Job template is not a Job.",
                log_message=f"{self.job_template}: not a Job object",
            )
        return job

    @property
    def pushes_images(self) -> bool:
        return bool(self.mode == "image")

    def _push_args(self) -> list[str]:
        """Image mode: ``--push`` to the service's registry (``--insecure`` with it)."""
        if self.mode != "image":
            return []
        from ..images import ImageRegistry  # the registry's settings, as the service's

        registry = ImageRegistry(config=self.config)
        if not registry.enabled:
            raise BuildError(
                "This service cannot start builds: image-mode builds need a registry.",
                log_message="c.KubernetesBuilds.mode = 'image' without c.ImageRegistry.url",
            )
        target = f"--push={registry.repository}"
        return [target, "--insecure"] if registry.insecure else [target]

    def job_for(self, args: list[str], prefix: Path, key: str) -> Json:
        """The Job of one build, from the template (see the module docstring)."""
        job = self._template()
        pod = job["spec"]["template"]["spec"]
        check_unprivileged(pod)
        meta = job["metadata"]
        meta.pop("generateName", None)
        meta["name"] = f"binderbox-build-{key[:12].lower()}-{secrets.token_hex(3)}"
        meta["namespace"] = self.namespace
        meta.setdefault("labels", {})[KEY_LABEL] = key[:63]
        container = pod["containers"][0]
        container["args"] = [*args, *self._push_args()]
        for mount in container.get("volumeMounts") or []:
            if "subPath" in mount:
                mount["subPath"] = mount["subPath"].replace("{build_id}", prefix.name)
        return job

    async def recover(self) -> list[str]:
        """Build Jobs an earlier run of this service left running (it stopped while they
        built: nobody follows them, their output is never published), deleted with
        their pods and Secrets.  Only this release's (the template's labels but those
        an upgrade changes) made before this service started, never one of its own."""
        labels = self._template()["metadata"].get("labels") or {}
        terms = [f"{k}={v}" for k, v in sorted(labels.items()) if k not in UPGRADE_LABELS]
        async with self._api() as api:
            jobs = JobApi(api, self.namespace)
            found = await jobs.batch.list_namespaced_job(
                self.namespace, label_selector=",".join([KEY_LABEL, *terms])
            )
            left = [
                str(job.metadata.name)
                for job in found.items
                if job.metadata.name not in self._made
                and (job.metadata.creation_timestamp or self._started) < self._started
            ]
            for name in left:
                await jobs.delete(name, secret=True)
        return left

    @contextlib.asynccontextmanager
    async def _api(self) -> AsyncIterator[Any]:
        from kubernetes_asyncio import client, config  # only where builds are Jobs

        configuration = client.Configuration()
        path = self.kube_config or os.environ.get("KUBECONFIG", "")
        if path:
            await config.load_kube_config(config_file=path, client_configuration=configuration)
        else:
            config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        async with client.ApiClient(configuration) as api:
            yield api

    async def run_pod(
        self,
        args: list[str],
        prefix: Path,
        *,
        key: str,
        tokens: Mapping[str, str] | None = None,
    ) -> AsyncIterator[str]:
        job = self.job_for(args, prefix, key)
        name = job["metadata"]["name"]
        if tokens:
            add_fetch(job)
        async with self._api() as api:
            jobs = JobApi(api, self.namespace)
            self._made.add(name)
            uid = await jobs.create(job)
            self.log.info("build of %s: Job %s", key, name)
            try:
                if tokens:
                    await jobs.create_secret(tokens_secret(job, uid, tokens))
                lines = self._lines(jobs, name, ["fetch", "build"] if tokens else ["build"])
                async with contextlib.aclosing(lines):
                    try:
                        pushed = False
                        async for line in pod_lines(lines, key, f"build Job {name}"):
                            pushed = pushed or line.startswith("Pushed ")
                            yield line
                        if self.pushes_images and not pushed:
                            raise BuildError(
                                "The build pod ended before its image was pushed.",
                                log_message=f"build Job {name}: no 'Pushed' line",
                            )
                    except BuildError as err:
                        why = await jobs.why_ended(name)
                        if why and "without a result" in err.message:
                            raise BuildError(why, log_message=err.log_message) from None
                        raise
            finally:
                await asyncio.shield(jobs.delete(name, secret=bool(tokens)))

    async def _lines(
        self, jobs: JobApi, name: str, containers: list[str]
    ) -> AsyncGenerator[str, None]:
        """The log of each of the Job pod's ``containers`` in turn, once it started; the
        Secret deleted once the fetch ended."""
        for container in containers:
            pod = await jobs.started_pod(
                name, self.pod_start_timeout, self.poll_interval, container
            )
            lines = jobs.log(pod, container)
            async with contextlib.aclosing(lines):
                async for line in lines:
                    yield line
            if container == "fetch":
                await jobs.delete_secret(name)


class JobApi:
    """The few Kubernetes API calls of one build (``api``: a kubernetes_asyncio client);
    the API's refusals become plain :class:`BuildError`\\ s."""

    def __init__(self, api: Any, namespace: str) -> None:
        from kubernetes_asyncio import client

        self.batch = client.BatchV1Api(api)
        self.core = client.CoreV1Api(api)
        self.namespace = namespace

    async def create(self, job: Json) -> str:
        """Create the Job; its uid."""
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            body: Any = copy.deepcopy(job)  # a plain object is sent as it is
            made = await self.batch.create_namespaced_job(self.namespace, body)
        except ApiException as err:
            raise BuildError(
                "The cluster refused the build's Job.",
                hint="Ask the operator to look at the service's log.",
                log_message=f"creating Job {job['metadata']['name']}: {err.status} {err.body!r}",
            ) from None
        return str(made.metadata.uid)

    async def create_secret(self, secret: Json) -> None:
        """Create a build's Secret (the API's answer is never logged: it may echo it)."""
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            body: Any = secret
            await self.core.create_namespaced_secret(self.namespace, body)
        except ApiException as err:
            raise BuildError(
                "The cluster refused the build's Secret (for the repository's token).",
                hint="Ask the operator to look at the service's log.",
                log_message=f"creating Secret {secret['metadata']['name']}: {err.status}"
                f" {err.reason}",
            ) from None

    async def delete_secret(self, name: str) -> None:
        """Delete a build's Secret (one already gone is fine)."""
        from kubernetes_asyncio.client.exceptions import ApiException

        with contextlib.suppress(ApiException):
            await self.core.delete_namespaced_secret(name, self.namespace)

    async def _pods(self, name: str) -> list[Any]:
        found = await self.core.list_namespaced_pod(
            self.namespace, label_selector=f"{JOB_LABEL}={name}"
        )
        return list(found.items)

    async def _job(self, name: str) -> Any | None:
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            return await self.batch.read_namespaced_job(name, self.namespace)
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    async def started_pod(
        self, name: str, limit: float, interval: float, container: str = "build"
    ) -> str:
        """The name of the Job's pod once its ``container`` runs (an init container: or
        ended; the pod: or ended); plain failures when the Job vanishes or its pod does
        not start within ``limit`` seconds."""
        for _ in range(max(1, int(limit / interval))):
            for pod in await self._pods(name):
                if (pod.status and pod.status.phase) in ("Running", "Succeeded", "Failed"):
                    return str(pod.metadata.name)
                for status in (pod.status and pod.status.init_container_statuses) or []:
                    state = status.state
                    if status.name == container and state and (state.running or state.terminated):
                        return str(pod.metadata.name)
            if await self._job(name) is None:
                raise BuildError("The build's Job was deleted before its pod started.")
            await asyncio.sleep(interval)
        raise BuildError(
            f"The build pod did not start within {limit:g} seconds.",
            hint="The cluster may be out of room for builds; try again later.",
        )

    async def log(self, pod: str, container: str = "build") -> AsyncGenerator[str, None]:
        """A container's log, followed to its end (none: a container that never ran)."""
        from kubernetes_asyncio.client.exceptions import ApiException

        try:
            response: Any = await self.core.read_namespaced_pod_log(
                pod, self.namespace, container=container, follow=True, _preload_content=False
            )
        except ApiException:
            return
        try:
            async for raw in response.content:
                yield raw.decode(errors="replace").rstrip("\n")
        finally:
            response.release()

    async def why_ended(self, name: str) -> str:
        """Why a build pod ended without a verdict, in plain words ('' = unknown)."""
        job = await self._job(name)
        if job is None:
            return "The build's Job was deleted before the build finished."
        for condition in (job.status and job.status.conditions) or []:
            if condition.type == "Failed" and condition.reason == "DeadlineExceeded":
                return "The build took longer than the cluster allows a build and was stopped."
        for found in await self._pods(name):
            statuses = [
                *((found.status and found.status.init_container_statuses) or []),
                *((found.status and found.status.container_statuses) or []),
            ]
            for status in statuses:
                ended = status.state and status.state.terminated
                if ended and ended.reason == "OOMKilled":
                    return "The build ran out of memory (the build pod's limit)."
                if ended and ended.exit_code:
                    return f"The build pod stopped with exit code {ended.exit_code}."
        return ""

    async def delete(self, name: str, *, secret: bool = False) -> None:
        """Delete the Job and its pod, and its Secret if it has one (what is already gone
        is fine)."""
        from kubernetes_asyncio.client.exceptions import ApiException

        with contextlib.suppress(ApiException):
            await self.batch.delete_namespaced_job(
                name, self.namespace, propagation_policy="Background"
            )
        if secret:
            await self.delete_secret(name)
