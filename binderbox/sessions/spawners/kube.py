"""BinderKubeSpawner: binder sessions as Kubernetes pods, through KubeSpawner.

The hub loads it with ``c.JupyterHub.spawner_class =
'binderbox.sessions.spawners.kube.BinderKubeSpawner'`` (the Helm chart does;
``binderbox serve`` does with ``c.ManagedHub.backend = 'kubernetes'``).  The web app
and the launch pipeline are the same as with the local sandbox: they send the same
:class:`~binderbox.runtime.options.LaunchOptions`, read here by
:class:`~binderbox.sessions.spawners.mixin.BinderSpawnerMixin` (sizes, the
``BINDER_*`` and login variables, kernels on Unix sockets, progress).

A launch's pod (:mod:`.kubespec` has the parts and ``c.KubernetesSessions`` the
settings):

* the environment, in one of two modes (``c.KubernetesSessions.mode``):

  - **store**: the store claim mounted read-only at ``/srv/env`` at the subPath of the
    launch's ``env_path``, into the session image (``c.KubeSpawner.image``: a small image
    with the interpreters environments link to, the same for every launch: nothing is
    pulled per environment);
  - **image**: the launch's ``image``, the environment's own image in the registry
    (:mod:`binderbox.images`: the environment at ``/srv/env`` over a base, as
    ``binderbox build --push`` writes it), which must lie under ``image_prefix``; its
    init container and hold sidecar run the same image (its Python takes the locks);
* datasets: the dataset claim read-only at ``~/data/<name>`` (NeuroLibre's layout);
* the home: an emptyDir (``home_size``) for temporary users; a PersistentVolumeClaim
  per user (``claim-{username}``, made when missing, never deleted by binderbox) when
  the launch's home policy is persistent; the content put there by an init container;
* uid 1000 (gid 1000, fsGroup 1000), ``runAsNonRoot``, no privilege escalation, every
  capability dropped, the runtime's seccomp profile;
* resources: limits from the launch's size (``c.BinderKubeSpawner.sizes``, the same as
  the local backend's), requests ``mem_guarantee``/``cpu_guarantee`` capped at them
  (the limits when no guarantee is configured);
* a NetworkPolicy of its own (made before the pod, deleted when it stops):
  zero-to-jupyterhub's singleuser defaults (:func:`.kubespec.network_policy`).

* the launch's use locks (``hold_files``) held by a sidecar for the pod's lifetime
  (:func:`.kubespec.hold_container`): an environment or dataset a session pod uses is
  never evicted.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kubernetes_asyncio.client import NetworkingV1Api
from kubernetes_asyncio.client.rest import ApiException
from kubespawner import KubeSpawner
from tornado import web
from traitlets import Instance, default

from ...environments.spec import ENV_PREFIX, HOME
from ...runtime.options import LaunchOptions
from ...runtime.sandbox import GID, UID
from ..homes import home_policy
from .kubespec import (
    CONTENT_INSIDE,
    HOLDS_INSIDE,
    SESSION_LABEL,
    START_WRAPPER,
    KubernetesSessions,
    OutsideVolumes,
    hold_container,
    home_init_container,
    mount,
    network_policy,
    session_label,
)
from .mixin import BinderSpawnerMixin

#: container settings every session container (and its init container) gets
SECURITY = {
    "runAsUser": UID,
    "runAsGroup": GID,
    "runAsNonRoot": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}


class BinderKubeSpawner(BinderSpawnerMixin, KubeSpawner):  # type: ignore[misc]
    """Binder sessions as pods.  See the module docstring."""

    sessions = Instance(KubernetesSessions, help="The shared volumes and network policy.")

    @default("sessions")
    def _default_sessions(self) -> KubernetesSessions:
        return KubernetesSessions(parent=self)

    options_on_this_host = False  # the paths are on the shared volumes, not the hub's

    @property
    def runs_images(self) -> bool:
        return bool(self.sessions.mode == "image")

    @default("uid")
    def _default_uid(self) -> int:
        return UID

    @default("gid")
    def _default_gid(self) -> int:
        return GID

    @default("fs_gid")
    def _default_fs_gid(self) -> int:
        return GID

    @default("allow_privilege_escalation")
    def _default_allow_privilege_escalation(self) -> bool:
        return False

    @default("container_security_context")
    def _default_container_security_context(self) -> dict[str, Any]:
        return {k: v for k, v in SECURITY.items() if k not in ("runAsUser", "runAsGroup")}

    @default("pvc_name_template")
    def _default_pvc_name_template(self) -> str:
        return "claim-{username}"

    @default("delete_pvc")
    def _default_delete_pvc(self) -> bool:
        return False  # a persistent home outlives its user's servers (only the admin removes it)

    @default("storage_access_modes")
    def _default_storage_access_modes(self) -> list[str]:
        return ["ReadWriteOnce"]

    def option_roots(self) -> list[Path]:
        """The shared volumes' roots (where binderbox's pod mounts them)."""
        roots = [Path(volume.root) for volume in self.sessions.shared_volumes()]
        return [*roots, *super().option_roots()]

    # -- the launch's pod --------------------------------------------------------------

    def _configured(self) -> dict[str, Any]:
        """The operator's settings this spawner changes per launch, as first seen."""
        if not hasattr(self, "_operator"):
            self._operator = {
                name: copy.deepcopy(getattr(self, name))
                for name in (
                    "volumes",
                    "volume_mounts",
                    "init_containers",
                    "extra_labels",
                    "cmd",
                    "image",
                    "mem_guarantee",
                    "cpu_guarantee",
                    "default_url",
                    "storage_capacity",
                )
            }
        return self._operator

    def _locate(self, path: Any) -> tuple[str, str]:
        try:
            volume, sub_path = self.sessions.locate(str(path))
        except OutsideVolumes as err:
            raise web.HTTPError(400, str(err)) from None
        self._volumes[volume.volume] = volume.spec()
        return volume.volume, sub_path

    def _env_mounts(self, options: LaunchOptions) -> list[dict[str, Any]]:
        """The environment's mount: none in image mode (the image holds it)."""
        if options.env_path is None:
            return []
        volume, sub_path = self._locate(options.env_path)
        return [mount(volume, ENV_PREFIX, sub_path, read_only=True)]

    def _data_mounts(self, options: LaunchOptions) -> list[dict[str, Any]]:
        mounts = []
        for name, host in sorted(options.data_mounts.items()):
            volume, sub_path = self._locate(host)
            mounts.append(mount(volume, f"{HOME}/data/{name}", sub_path, read_only=True))
        return mounts

    def _image(self, options: LaunchOptions, operator: dict[str, Any]) -> str:
        """The pod's image: the launch's own in image mode (under ``image_prefix``),
        else the operator's session image."""
        if not options.image:
            return str(operator["image"])
        prefix = self.sessions.image_prefix.rstrip("/")
        if not prefix or not options.image.startswith((f"{prefix}:", f"{prefix}@")):
            raise web.HTTPError(403, f"the image {options.image} is not one of this binder's")
        return options.image

    def _holds(self, options: LaunchOptions, security: dict[str, Any]) -> list[dict[str, Any]]:
        """The sidecar holding the launch's use locks (none without any)."""
        folders = sorted({str(path.parent) for path in options.hold_files})
        if not folders:
            return []
        mounts, locks = [], []
        for number, folder in enumerate(folders):
            volume, sub_path = self._locate(folder)
            mounts.append(mount(volume, f"{HOLDS_INSIDE}/{number}", sub_path, read_only=True))
            locks += [
                f"{HOLDS_INSIDE}/{number}/{path.name}"
                for path in sorted(options.hold_files)
                if str(path.parent) == folder
            ]
        python = f"{ENV_PREFIX}/bin/python" if options.image else ""
        return [hold_container(self.image, security, mounts, locks, python)]

    def _home_volume(self, persistent: bool) -> dict[str, Any]:
        if persistent:
            return {"name": "home", "persistentVolumeClaim": {"claimName": self.pvc_name}}
        return {"name": "home", "emptyDir": {"sizeLimit": self.sessions.home_size}}

    def configure_pod(self, options: LaunchOptions) -> None:
        """Set this start's volumes, mounts, init container, labels, command and
        resources from ``options`` (the operator's own settings kept, added to)."""
        operator = self._configured()
        policy = home_policy(options.home)
        persistent = policy.kind == "persistent"
        self._volumes: dict[str, Any] = {"home": self._home_volume(persistent)}
        self.image = self._image(options, operator)
        env_mounts, home = self._env_mounts(options), mount("home", HOME)
        mounts = [*env_mounts, *self._data_mounts(options), home]
        init_mounts = [*env_mounts, home]
        if options.content_path is not None:
            volume, sub_path = self._locate(options.content_path)
            init_mounts.insert(-1, mount(volume, CONTENT_INSIDE, sub_path, read_only=True))
        folder = policy.repo_dir(options.content_folder or "") if persistent else ""
        variables = {
            "KIND": policy.kind,
            "FOLDER": folder,
            "VERSION": options.content_version,
            "START": options.start_script or "",
            "CONTENT": "1" if options.content_path is not None else "",
        }
        security = {**SECURITY, "runAsUser": self.uid, "runAsGroup": self.gid}
        init = home_init_container(self.image, security, init_mounts, variables)
        holds = self._holds(options, security)  # first: started before the others
        self.volumes = _merged(operator["volumes"], list(self._volumes.values()), "name")
        self.volume_mounts = _merged(operator["volume_mounts"], mounts, "mountPath")
        self.init_containers = [*holds, *(operator["init_containers"] or []), init]
        label = {SESSION_LABEL: session_label(self.pod_name)}
        self.extra_labels = {**operator["extra_labels"], **label}
        self.storage_pvc_ensure = persistent
        self.storage_capacity = operator["storage_capacity"] or self.sessions.persistent_home_size
        repo = f"{HOME}/{folder}" if folder else HOME
        server = operator["cmd"] or [f"{ENV_PREFIX}/bin/jupyterhub-singleuser"]  # cmd: null
        self.cmd = [*START_WRAPPER, f"{repo}/start", *server]
        self.default_url = f"/lab/tree/{folder}" if folder else operator["default_url"]
        self._repo_dir = repo
        self._requests(operator)

    def _requests(self, operator: dict[str, Any]) -> None:
        """Requests: the configured guarantees, at most the size's limits (the limits
        when none is configured)."""
        for kind in ("mem", "cpu"):
            limit, wanted = getattr(self, f"{kind}_limit"), operator[f"{kind}_guarantee"]
            if limit:
                setattr(self, f"{kind}_guarantee", min(wanted, limit) if wanted else limit)

    def get_env(self) -> dict[str, str]:
        """The mixin's variables, with REPO_DIR where the content is."""
        env = super().get_env()
        env["REPO_DIR"] = getattr(self, "_repo_dir", HOME)
        return env

    # -- lifecycle ---------------------------------------------------------------------

    async def _start(self) -> Any:
        """Configure the pod from the launch options, make its network policy, then
        KubeSpawner's start (PVC, pod, wait for it to run)."""
        self._messages = []
        options = self.launch_options
        self.apply_size(options)
        self.configure_pod(options)
        if self.sessions.network_policy:
            self.report(10, "Making the session's network policy")
            await self._ensure_network_policy()
        self.report(30, "Starting the session's pod")
        result = await super()._start()
        self.report(90, "The session's pod is running")
        return result

    def _policy(self) -> dict[str, Any]:
        hub_port = int(urlsplit(self.hub.api_url).port or 8081)
        label = session_label(self.pod_name)
        return network_policy(
            self.pod_name, self.namespace, label, self.sessions, hub_port, self.port
        )

    async def _ensure_network_policy(self) -> None:
        api = NetworkingV1Api(self.api.api_client)
        body: Any = self._policy()  # the client takes the JSON as is
        try:
            await api.create_namespaced_network_policy(self.namespace, body)
        except ApiException as err:
            if err.status != 409:
                raise
            await api.replace_namespaced_network_policy(self.pod_name, self.namespace, body)

    async def stop(self, now: bool = False) -> None:
        """KubeSpawner's stop, then the session's network policy goes."""
        await super().stop(now=now)
        if self.sessions.network_policy:
            api = NetworkingV1Api(self.api.api_client)
            try:
                await api.delete_namespaced_network_policy(self.pod_name, self.namespace)
            except ApiException as err:
                if err.status != 404:
                    raise


def _merged(configured: Any, mine: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The operator's volumes or mounts (KubeSpawner takes a list or a dict) with ``mine``
    added, replacing theirs of the same ``key`` (a volume's name, a mount's path)."""
    theirs = configured.items() if isinstance(configured, dict) else enumerate(configured or [])
    taken = {spec[key] for spec in mine}
    merged = {str(k): v for k, v in theirs if v and v.get(key) not in taken}
    merged.update({f"binderbox-{i:02d}": spec for i, spec in enumerate(mine)})
    return merged
