"""What a session pod is made of on Kubernetes (store mode): volumes, the home's init
container, the network policy.  Plain functions of the launch, used by
:class:`~binderbox.sessions.spawners.kube.BinderKubeSpawner`.

Where things come from (:class:`KubernetesSessions`, ``c.KubernetesSessions`` in the
hub's config):

* the launch options name paths where binderbox's pod mounts the shared volumes
  (``store_root``: the store claim, ``datasets_root``: the dataset claim,
  ``content_root``: the content cache, a folder of the store claim by default);
  :meth:`KubernetesSessions.locate` turns a path into (volume, subPath);
* the environment is mounted read-only at ``/srv/env`` (where it was built) from the
  store claim at its subPath; each dataset read-only at ``~/data/<name>``;
* the repository content reaches the home through an **init container**: it mounts the
  content's folder read-only and the home, copies the content in (``cp -a``: the home is
  writable, the content is not) and replays postBuild's home changes
  (``/srv/env/.binderbox/home-overlay`` and ``home-deleted.json``), as the local
  sandbox's home policy does on the host.  A persistent home (a PVC per user) gets the
  content in ``~/<folder>`` the first time, a new version once in
  ``~/<folder>-<version[:7]>`` (recorded in ``~/.binderbox/placed``), never over the
  user's files.  It runs as uid 1000 in the pod, so a link in the home can only reach
  what the session could reach anyway;
* the launch's **use locks** (``hold_files``: the environment's ``locks/<key>.use`` on
  the store claim, each dataset's on the dataset claim) are held by a native sidecar,
  ``binderbox-hold`` (:func:`hold_container`: an init container with ``restartPolicy:
  Always``, started before the others, stopped with the pod): shared flock locks, taken
  by util-linux's ``flock`` on each file (opened read-only, from the lock folders
  mounted read-only in that container only), then ``sleep infinity``.  While the pod
  runs, the store's and the dataset cache's eviction (``Store.gc``, wherever it runs)
  find the use lock held and leave the environment and datasets alone, exactly as for
  a local session; a pod that ends (or whose node dies: the file server's lock lease
  ends) lets them go.  The session's own container sees no lock file, so its code can
  neither release a lock nor take one that would stop a build or a launch.
"""

from __future__ import annotations

import hashlib
import posixpath
from dataclasses import dataclass
from typing import Any

from traitlets import Bool, CaselessStrEnum, Dict, Unicode
from traitlets.config import Configurable

from ...environments.spec import HOME

Json = dict[str, Any]
#: where the init container sees the content
CONTENT_INSIDE = "/srv/content"
#: where the hold sidecar sees the folders of the launch's use locks (one a number)
HOLDS_INSIDE = "/srv/binderbox-holds"
#: the label selecting one session's pod (its network policy's podSelector)
SESSION_LABEL = "binderbox.org/session"
#: the private ranges and the cloud metadata server (zero-to-jupyterhub's defaults)
PRIVATE_RANGES = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.169.254/32")


class OutsideVolumes(ValueError):
    """A launch path on none of the shared volumes."""


@dataclass(frozen=True)
class SharedVolume:
    """A claim mounted in binderbox's pod at ``root`` (``prefix``: the claim's folder
    shown there); ``volume`` names it in session pods."""

    volume: str
    claim: str
    root: str
    prefix: str = ""

    def spec(self) -> Json:
        return {"name": self.volume, "persistentVolumeClaim": {"claimName": self.claim}}


class KubernetesSessions(Configurable):
    """Sessions on Kubernetes: the shared volumes and the pods' network policy."""

    mode = CaselessStrEnum(
        ["store", "image"],
        "store",
        help="""store: environments mounted read-only from the store claim into the
        session image (c.KubeSpawner.image); image: each session runs its environment's
        own image from the registry (c.ImageRegistry; image_prefix), as BinderHub's do.""",
    ).tag(config=True)
    image_prefix = Unicode(
        help="""Image mode: the registry repository session images come from
        (``<registry>/<prefix>``, c.ImageRegistry's; binderbox serve passes it on).  A
        launch naming any other image is refused.""",
    ).tag(config=True)
    store_claim = Unicode("binderbox-store", help="The store's PersistentVolumeClaim.").tag(
        config=True
    )
    store_root = Unicode(
        "/srv/binderbox/store", help="Where binderbox's pod mounts the store claim."
    ).tag(config=True)
    datasets_claim = Unicode(
        "", help="The dataset cache's claim ('' = no datasets in sessions)."
    ).tag(config=True)
    datasets_root = Unicode(
        "/srv/binderbox/datasets", help="Where binderbox's pod mounts the dataset claim."
    ).tag(config=True)
    content_claim = Unicode("", help="The content cache's claim ('' = the store claim).").tag(
        config=True
    )
    content_root = Unicode(
        "/srv/binderbox/content", help="Where binderbox's pod mounts the content cache."
    ).tag(config=True)
    content_prefix = Unicode(
        "content", help="The content cache's folder in its claim ('' = the claim's root)."
    ).tag(config=True)
    home_size = Unicode("2Gi", help="sizeLimit of a temporary home (an emptyDir).").tag(config=True)
    persistent_home_size = Unicode("10Gi", help="Size of a user's home claim.").tag(config=True)
    network_policy = Bool(
        True, help="Give each session pod its own NetworkPolicy (see network_policy())."
    ).tag(config=True)
    hub_pod_labels = Dict(
        {"app": "jupyterhub", "component": "hub"},
        help="Labels of the hub's pod (sessions may reach its API port).",
    ).tag(config=True)
    ingress_pod_labels = Dict(
        {"hub.jupyter.org/network-access-singleuser": "true"},
        help="Labels of the pods that may reach a session (zero-to-jupyterhub's proxy and "
        "hub carry this one).",
    ).tag(config=True)

    def shared_volumes(self) -> list[SharedVolume]:
        """The claims a session may mount, most specific root first."""
        store = SharedVolume("binderbox-store", self.store_claim, self.store_root)
        content_claim = self.content_claim or self.store_claim
        name = store.volume if content_claim == self.store_claim else "binderbox-content"
        volumes = [store, SharedVolume(name, content_claim, self.content_root, self.content_prefix)]
        if self.datasets_claim:
            volumes.append(
                SharedVolume("binderbox-datasets", self.datasets_claim, self.datasets_root)
            )
        return sorted(volumes, key=lambda v: -len(v.root))

    def locate(self, path: str) -> tuple[SharedVolume, str]:
        """(the volume, the subPath) of a launch path; :class:`OutsideVolumes` if none."""
        for volume in self.shared_volumes():
            if path == volume.root or path.startswith(volume.root.rstrip("/") + "/"):
                rel = posixpath.relpath(path, volume.root)
                return volume, posixpath.normpath(posixpath.join(volume.prefix, rel))
        raise OutsideVolumes(f"{path} is on none of the sessions' shared volumes")


def session_label(pod_name: str) -> str:
    """The value of :data:`SESSION_LABEL` for a pod (a label value: at most 63 chars)."""
    return hashlib.sha256(pod_name.encode()).hexdigest()[:20]


def mount(volume: str, inside: str, sub_path: str = "", read_only: bool = False) -> Json:
    """A volumeMount."""
    spec: Json = {"name": volume, "mountPath": inside}
    if sub_path and sub_path != ".":
        spec["subPath"] = sub_path
    if read_only:
        spec["readOnly"] = True
    return spec


#: the init container's script (see the module docstring); its arguments come as
#: variables: KIND (ephemeral|persistent), FOLDER, VERSION, START, CONTENT (1 if any)
HOME_SCRIPT = r"""set -eu
meta=/srv/env/.binderbox
target="$HOME"
if [ "$KIND" = persistent ]; then
  record="$HOME/.binderbox/placed/$FOLDER"
  mkdir -p "$HOME/.binderbox/placed"
  if [ -n "$VERSION" ] && [ -f "$record" ] && grep -qxF "$VERSION" "$record"; then exit 0; fi
  target="$HOME/$FOLDER"
  short=$(printf %.7s "$VERSION")
  if [ -e "$target" ] || [ -L "$target" ]; then target="$HOME/$FOLDER-$short"; fi
  if [ -e "$target" ] || [ -L "$target" ]; then exit 0; fi
  mkdir "$target"
  printf '%s\n' "$VERSION" >> "$record"
fi
if [ "$CONTENT" = 1 ]; then cp -a /srv/content/. "$target/"; fi
if [ -f "$meta/home-deleted.json" ] && [ -x /srv/env/bin/python ]; then
  /srv/env/bin/python -I -c '
import json, os, shutil, sys
home = os.path.realpath(sys.argv[1])
for rel in json.load(open(sys.argv[2])):
    path = os.path.join(home, str(rel))
    if os.path.isabs(str(rel)) or ".." in str(rel).split("/"):
        continue
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        os.unlink(path)
' "$target" "$meta/home-deleted.json"
fi
if [ -d "$meta/home-overlay" ] && [ ! -L "$meta/home-overlay" ]; then
  cp -a "$meta/home-overlay/." "$target/"
fi
if [ -n "$START" ] && [ -f "$target/start" ] && [ ! -L "$target/start" ]; then
  chmod +x "$target/start"
fi
"""

#: runs the repository's ``start`` (given first) when it is an executable file, then the
#: server: ``start`` must ``exec "$@"``, as in repo2docker
START_WRAPPER = [
    "/bin/sh",
    "-c",
    'start="$1"; shift; if [ -f "$start" ] && [ -x "$start" ]; then exec "$start" "$@"; fi; '
    'exec "$@"',
    "binderbox-start",
]


def home_init_container(
    image: str,
    security: Json,
    mounts: list[Json],
    variables: dict[str, str],
) -> Json:
    """The init container that fills the home (``mounts``: env, content, home)."""
    env = [{"name": name, "value": value} for name, value in sorted(variables.items())]
    return {
        "name": "binderbox-home",
        "image": image,
        "command": ["/bin/sh", "-c", HOME_SCRIPT],
        "env": [{"name": "HOME", "value": HOME}, *env],
        "securityContext": security,
        "volumeMounts": mounts,
        "resources": {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"cpu": "1", "memory": "256Mi"},
        },
    }


#: the hold sidecar's program in an environment's image, which has Python but not
#: util-linux: the same shared flock(2) locks as ``flock --shared``, then a wait
HOLD_SCRIPT = """import fcntl, signal, sys
held = [open(path, "rb") for path in sys.argv[1:]]
for lock in held:
    fcntl.flock(lock, fcntl.LOCK_SH)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
while True:
    signal.pause()
"""


def hold_container(
    image: str, security: Json, mounts: list[Json], locks: list[str], python: str = ""
) -> Json:
    """The sidecar holding shared flocks on ``locks`` (paths in it) while the pod runs;
    ``mounts``: their folders, read-only (see the module docstring).  ``python``: the
    image's interpreter to take them with (an environment's image), else util-linux's
    ``flock`` in the session image."""
    if python:
        command = [python, "-I", "-c", HOLD_SCRIPT, *locks]
    else:
        command = []
        for path in locks:  # each flock holds its lock and runs the rest
            command += ["flock", "--shared", path]
        command += ["sleep", "infinity"]
    return {
        "name": "binderbox-hold",
        "image": image,
        "restartPolicy": "Always",
        "command": command,
        "securityContext": security,
        "volumeMounts": mounts,
        "resources": {
            "requests": {"cpu": "10m", "memory": "16Mi"},
            "limits": {"cpu": "100m", "memory": "32Mi"},
        },
    }


def network_policy(
    name: str,
    namespace: str,
    session: str,
    sessions: KubernetesSessions,
    hub_port: int,
    port: int,
) -> Json:
    """One session's NetworkPolicy, zero-to-jupyterhub's singleuser defaults: in, only
    from the proxy and the hub (:attr:`~KubernetesSessions.ingress_pod_labels`) to the
    server's port; out, the hub's API, DNS, and public addresses (not the private
    ranges, not the cloud metadata server)."""
    dns = [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}]
    private = [{"ipBlock": {"cidr": cidr}} for cidr in PRIVATE_RANGES[:3]]
    kube_system = {
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace, "labels": {SESSION_LABEL: session}},
        "spec": {
            "podSelector": {"matchLabels": {SESSION_LABEL: session}},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [
                {
                    "from": [{"podSelector": {"matchLabels": dict(sessions.ingress_pod_labels)}}],
                    "ports": [{"port": port, "protocol": "TCP"}],
                }
            ],
            "egress": [
                {
                    "to": [{"podSelector": {"matchLabels": dict(sessions.hub_pod_labels)}}],
                    "ports": [{"port": hub_port, "protocol": "TCP"}],
                },
                {"to": [kube_system, *private], "ports": dns},
                {"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": list(PRIVATE_RANGES)}}]},
            ],
        },
    }
