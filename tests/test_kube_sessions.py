"""Sessions on Kubernetes (store mode) through BinderKubeSpawner.

Two levels:

* the objects the spawner makes from a launch's options (pod, PVC, NetworkPolicy), built
  by the real KubeSpawner 7.1 without an API server (``_mock``), checked strictly
  against the schemas of Kubernetes 1.30 and the newest kubernetes-validate has, and for
  what a session relies on: the environment mounted read-only from the store claim,
  uid 1000 non-root, the size's resources, the policy;
* end to end **against an emulated API** (tests/kube_emulator.py: kmock and a stand-in
  kubelet running pods under bubblewrap; there is no real cluster here): a real
  ``binderbox serve`` with ``c.ManagedHub.backend = 'kubernetes'``, its real hub and
  proxy; a launch through ``/build`` reaches ``ready`` and code runs in the session's
  kernel; the objects sent to the API pass the same checks.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from kernels import run_code
from kube_emulator import EmulatedCluster, dump, pod_log
from repos import make_repo
from serve_helpers import build_events, end_session, git_spec, running_serve

from binderbox.sessions.spawners.kube import BinderKubeSpawner
from binderbox.store import Store

KUBE_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())
SIZES = [{"name": "small", "mem_limit": "1G", "cpu_limit": 0.5}]
STORE, DATA, CONTENT = "/srv/binderbox/store", "/srv/binderbox/datasets", "/srv/binderbox/content"


def valid(doc: dict[str, Any]) -> None:
    """``doc`` passes strict validation for every version of :data:`KUBE_VERSIONS`."""
    for version in KUBE_VERSIONS:
        try:
            kubernetes_validate.validate(doc, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            path = ".".join(str(p) for p in err.path)
            pytest.fail(f"{doc['kind']} ({version}): {path}: {err.message}")


def session_checks(pod: dict[str, Any], env_sub_path: str) -> None:
    """What every session pod must carry (store mode)."""
    spec = pod["spec"]
    main = spec["containers"][0]
    env_mount = next(m for m in main["volumeMounts"] if m["mountPath"] == "/srv/env")
    assert env_mount["readOnly"] is True
    assert env_mount["subPath"] == env_sub_path
    volume = next(v for v in spec["volumes"] if v["name"] == env_mount["name"])
    assert volume["persistentVolumeClaim"]["claimName"] == "binderbox-store"
    security = main["securityContext"]
    assert security["runAsUser"] == 1000 and security["runAsNonRoot"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    for init in spec["initContainers"]:
        assert init["securityContext"]["runAsNonRoot"] is True
        assert init["securityContext"]["allowPrivilegeEscalation"] is False
        content = [m for m in init["volumeMounts"] if m["mountPath"] == "/srv/content"]
        assert all(m["readOnly"] for m in content)
    resources = {kind: {k: str(v) for k, v in r.items()} for kind, r in main["resources"].items()}
    assert resources["limits"] == {"memory": "1073741824", "cpu": "0.5"}, resources
    assert resources["requests"] == resources["limits"]  # no guarantee configured: the limits


def policy_checks(policy: dict[str, Any], pod: dict[str, Any]) -> None:
    """zero-to-jupyterhub's singleuser defaults, selecting this pod only."""
    spec = policy["spec"]
    labels = pod["metadata"]["labels"]
    assert all(labels.get(k) == v for k, v in spec["podSelector"]["matchLabels"].items())
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    (ingress,) = spec["ingress"]
    assert ingress["from"] == [
        {"podSelector": {"matchLabels": {"hub.jupyter.org/network-access-singleuser": "true"}}}
    ]
    public = [
        peer["ipBlock"]
        for rule in spec["egress"]
        for peer in rule.get("to", [])
        if "ipBlock" in peer
    ]
    everywhere = next(block for block in public if block["cidr"] == "0.0.0.0/0")
    assert {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.169.254/32"} <= set(
        everywhere["except"]
    )


# -- the objects, from launch options ---------------------------------------------------


@pytest.fixture(autouse=True)
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A kubeconfig naming an address nothing is asked of (KubeSpawner loads one)."""
    with EmulatedCluster(tmp_path) as cluster:  # writes a kubeconfig; stopped at once
        pass
    from kubernetes_asyncio.config import kube_config

    # read from $KUBECONFIG when the module was imported
    monkeypatch.setattr(kube_config, "KUBE_CONFIG_DEFAULT_LOCATION", str(cluster.kubeconfig))


IMAGES = "registry.example.org/binder/envs"


def _spawner(home: str = "ephemeral", image: bool = False) -> BinderKubeSpawner:
    from traitlets.config import Config

    config = Config()
    if image:
        config.KubernetesSessions.mode = "image"
        config.KubernetesSessions.image_prefix = IMAGES
    config.KubernetesSessions.datasets_claim = "binderbox-datasets"
    config.BinderKubeSpawner.sizes = SIZES
    config.KubeSpawner.image = "binderbox-session:0.1.0"
    spawner = BinderKubeSpawner(config=config, _mock=True)
    spawner.namespace = "binder"
    spawner.user_options = {
        "env_key": "abc",
        "env_path": f"{STORE}/envs/abc",
        "content_path": f"{CONTENT}/trees/0123",
        "data_mounts": {"atlas": f"{DATA}/ds/atlas"},
        "home": home,
        "content_folder": "analysis" if home == "persistent" else None,
        "content_version": "a" * 40,
        "hold_files": [f"{STORE}/locks/abc.use", f"{DATA}/locks/atlas.use"],
    }
    if image:  # the environment is the image: no folder of the store, no lock on it
        spawner.user_options.pop("env_path")
        spawner.user_options["image"] = f"{IMAGES}:abc"
        spawner.user_options["hold_files"] = [f"{DATA}/locks/atlas.use"]
    return spawner


async def _objects(
    home: str = "ephemeral", image: bool = False
) -> tuple[BinderKubeSpawner, dict[str, Any]]:
    from kubernetes_asyncio.client import ApiClient

    spawner = _spawner(home, image)
    options = spawner.launch_options
    spawner.apply_size(options)
    spawner.configure_pod(options)
    async with ApiClient() as client:
        pod = client.sanitize_for_serialization(await spawner.get_pod_manifest())
        pvc = client.sanitize_for_serialization(spawner.get_pvc_manifest())
    return spawner, {"pod": pod, "pvc": pvc, "policy": spawner._policy()}


def test_session_objects_are_valid_and_confined() -> None:
    _, made = asyncio.run(_objects())
    pod, policy = made["pod"], made["policy"]
    valid(pod)
    valid(policy)
    session_checks(pod, "envs/abc")
    policy_checks(policy, pod)
    mounts = {m["mountPath"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    atlas = mounts["/home/jovyan/data/atlas"]
    assert atlas["readOnly"] is True and atlas["subPath"] == "ds/atlas"
    home = next(v for v in pod["spec"]["volumes"] if v["name"] == "home")
    assert "emptyDir" in home
    hold, init = pod["spec"]["initContainers"]
    content = next(m for m in init["volumeMounts"] if m["mountPath"] == "/srv/content")
    assert content["subPath"] == "content/trees/0123"  # the content cache on the store claim
    # the use locks: held by a sidecar started first, from lock folders only it mounts
    assert hold["name"] == "binderbox-hold" and hold["restartPolicy"] == "Always"
    holds = {m["mountPath"]: m for m in hold["volumeMounts"]}
    assert {(m["subPath"], m["readOnly"]) for m in holds.values()} == {
        ("locks", True),  # the store claim's and the dataset claim's
    }
    assert {m["name"] for m in holds.values()} == {"binderbox-store", "binderbox-datasets"}
    locks = [arg for arg in hold["command"] if arg.endswith(".use")]
    assert sorted(Path(lock).name for lock in locks) == ["abc.use", "atlas.use"]
    assert all(str(Path(lock).parent) in holds for lock in locks)
    assert hold["command"][-2:] == ["sleep", "infinity"]
    assert {c["image"] for c in [hold, init, *pod["spec"]["containers"]]} == {
        "binderbox-session:0.1.0"  # store mode: the operator's session image
    }
    for container in [init, *pod["spec"]["containers"]]:  # nobody else sees a lock file
        assert all(m.get("subPath") != "locks" for m in container["volumeMounts"])


def test_image_mode_pod_runs_the_launchs_image_and_mounts_no_store() -> None:
    _, made = asyncio.run(_objects(image=True))
    pod = made["pod"]
    valid(pod)
    spec = pod["spec"]
    hold, init = spec["initContainers"]
    main = spec["containers"][0]
    assert {c["image"] for c in [hold, init, main]} == {f"{IMAGES}:abc"}
    for container in [hold, init, main]:
        assert all(m["mountPath"] != "/srv/env" for m in container["volumeMounts"])
        assert container["securityContext"]["runAsNonRoot"] is True
    # the session sees no claim but the datasets' (the content, on the store claim by
    # default, reaches the home through the init container, read-only there)
    assert {m["name"] for m in main["volumeMounts"]} == {"binderbox-datasets", "home"}
    mounts = {m["mountPath"]: m for m in main["volumeMounts"]}
    assert mounts["/home/jovyan/data/atlas"]["readOnly"] is True
    content = next(m for m in init["volumeMounts"] if m["mountPath"] == "/srv/content")
    assert content["readOnly"] is True
    # the image has Python, not util-linux: its interpreter takes the dataset's lock
    assert hold["command"][:3] == ["/srv/env/bin/python", "-I", "-c"]
    assert [Path(arg).name for arg in hold["command"][4:]] == ["atlas.use"]
    policy_checks(made["policy"], pod)


@pytest.mark.parametrize(
    ("image", "options", "status"),
    [
        (True, {"image": "evil.example.org/miner:latest"}, 403),  # not this binder's
        (True, {"image": f"{IMAGES}-other:abc"}, 403),
        (True, {"image": "not an image"}, 400),
        (True, {"image": None}, 400),  # a store launch to a hub that runs images
        (False, {"image": f"{IMAGES}:abc", "env_path": None}, 400),  # and the reverse
        (True, {"env_path": f"{STORE}/envs/abc"}, 400),  # both at once
    ],
)
async def test_image_launch_options_are_checked(
    image: bool, options: dict[str, Any], status: int
) -> None:
    from tornado import web

    spawner = _spawner(image=image)
    spawner.user_options = {**spawner.user_options, **options}
    with pytest.raises(web.HTTPError) as refused:
        spawner.configure_pod(spawner.launch_options)
    assert refused.value.status_code == status


def test_persistent_home_gets_the_users_claim() -> None:
    spawner, made = asyncio.run(_objects("persistent"))
    pod, pvc = made["pod"], made["pvc"]
    valid(pod)
    valid(pvc)
    assert spawner.storage_pvc_ensure is True
    home = next(v for v in pod["spec"]["volumes"] if v["name"] == "home")
    assert home["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    # one claim per user (its name from the user's alone, escaped), for all their servers
    assert pvc["metadata"]["name"] == spawner._expand_user_properties("claim-{username}")
    assert pvc["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert spawner.default_url == "/lab/tree/analysis"


async def test_paths_outside_the_shared_volumes_are_refused() -> None:
    from tornado import web

    spawner = _spawner()
    spawner.user_options = {**spawner.user_options, "env_path": "/etc"}
    with pytest.raises(web.HTTPError) as refused:
        spawner.launch_options  # noqa: B018
    assert refused.value.status_code == 403
    spawner.user_options = {**spawner.user_options, "env_path": f"{STORE}/../../etc"}
    with pytest.raises(web.HTTPError):
        spawner.launch_options  # noqa: B018


# -- end to end, against the emulated API -----------------------------------------------

PROBE = """
import json, os, six
home = os.path.expanduser("~")
try:
    open("/srv/env/intruder", "w")
    env_write = "ok"
except OSError as e:
    env_write = type(e).__name__
print(json.dumps({"uid": os.getuid(), "hello": open(os.path.join(home, "hello.txt")).read(),
                  "six": six.__version__, "env_write": env_write,
                  "start": os.environ.get("FROM_START")}))
"""


def serve_config(data: Path) -> str:
    sessions = {
        "store_root": str(data / "store"),
        "content_root": str(data / "content"),
        "content_claim": "binderbox-content",
        "content_prefix": "",
        "datasets_root": str(data / "datasets"),
        "datasets_claim": "binderbox-datasets",
    }
    kube = {"namespace": "binder", "image": "binderbox-session:test", "events_enabled": False}
    return (
        "c.ManagedHub.backend = 'kubernetes'\n"
        f"c.SessionSizes.sizes = {SIZES!r}\n"
        f"c.KubernetesSessions.update({sessions!r})\n"
        f"c.KubeSpawner.update({kube!r})\n"
    )


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmulatedCluster]:
    data = tmp_path / "serve" / "data"
    claims = {
        "binderbox-store": data / "store",
        "binderbox-content": data / "content",
        "binderbox-datasets": data / "datasets",
    }
    (tmp_path / "cluster").mkdir()
    with EmulatedCluster(tmp_path / "cluster", claims) as emulated:
        yield emulated


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_store_mode_launch_runs_code_emulated_api(
    tmp_path: Path, cluster: EmulatedCluster
) -> None:
    repo = make_repo(
        tmp_path / "repos" / "analysis",
        {
            "requirements.txt": "six==1.16.0\n",
            "hello.txt": "from the repository\n",
            "start": '#!/bin/sh\nexport FROM_START=yes\nexec "$@"\n',  # not executable
        },
    )
    data = tmp_path / "serve" / "data"
    env = {"KUBECONFIG": str(cluster.kubeconfig)}
    with running_serve(tmp_path / "serve", data, serve_config(data), env=env) as serve:
        stream = await build_events(serve.url, "git", git_spec(repo))
        pods = cluster.sent("Pod")
        name = pods[0]["metadata"]["name"] if pods else ""
        assert stream.last.get("phase") == "ready", (
            f"{stream.events[-4:]}\n{pod_log(cluster, name)}\n{cluster.errors}\n"
            f"{serve.logs().get('hub', '')[-3000:]}"
        )
        ready = stream.last
        spawn = stream.time_of("ready") - stream.time_of("launching")
        print(f"store mode, emulated API: launching -> ready {spawn:.1f} s")
        out = json.loads(await run_code(ready["url"], ready["token"], PROBE))
        assert out["uid"] == 1000
        assert out["hello"] == "from the repository\n"  # the init container's copy
        assert out["six"] == "1.16.0"
        assert out["env_write"] == "OSError"  # the store is mounted read-only
        assert out["start"] == "yes"  # the repository's start script ran the server
        (pod,) = pods
        (policy,) = cluster.sent("NetworkPolicy")
        valid(pod)
        valid(policy)
        env_mount = next(
            m for m in pod["spec"]["containers"][0]["volumeMounts"] if m["mountPath"] == "/srv/env"
        )
        assert env_mount["subPath"].startswith("envs/"), dump(pods)
        session_checks(pod, env_mount["subPath"])
        policy_checks(policy, pod)
        # the pod holds the environment's use lock: the store's eviction (as another pod
        # would run it, over budget, no grace) leaves it alone while the session runs
        key = env_mount["subPath"].removeprefix("envs/")
        evicting = Store(root=str(data / "store"), budget=1, min_idle=0)
        assert evicting.gc() == [] and evicting.get(key, touch=False) is not None
        await end_session(serve, ready)
        for _ in range(200):  # the hub deletes the pod, the spawner its policy
            if not cluster.objects("pods") and not cluster.objects("networkpolicies"):
                break
            await asyncio.sleep(0.05)
        assert cluster.objects("pods") == []
        assert cluster.objects("networkpolicies") == []
        for _ in range(100):  # the pod's processes are gone: its lock with them
            if evicting.gc() == [key]:
                break
            await asyncio.sleep(0.1)
        assert evicting.get(key, touch=False) is None


IMAGE_PROBE = """
import json, os, sys
open(os.path.expanduser("~/hello.txt")).read()
print(json.dumps({"uid": os.getuid(), "prefix": sys.prefix, "six": __import__("six").__version__,
                  "store": os.path.exists("/srv/binderbox")}))
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
async def test_image_mode_launch_runs_the_registrys_image_emulated_api(
    tmp_path: Path, cluster: EmulatedCluster
) -> None:
    """Image mode with a real registry: the first service builds, pushes and launches the
    image; a second one, its store empty, finds the image in the registry, builds nothing
    and launches it too."""
    from registry_helpers import REPOSITORY, LocalRegistry

    repo = make_repo(
        tmp_path / "repos" / "analysis",
        {"requirements.txt": "six==1.16.0\n", "hello.txt": "from the repository\n"},
    )
    registry = LocalRegistry(tmp_path / "registry")
    cluster.registry = registry.host
    images = (
        "c.KubernetesSessions.mode = 'image'\n"
        f"c.ImageRegistry.url = {registry.host!r}\n"
        f"c.ImageRegistry.prefix = {REPOSITORY!r}\n"
        "c.ImageRegistry.insecure = True\n"
    )
    env = {"KUBECONFIG": str(cluster.kubeconfig)}
    try:
        for run in ("built", "from the registry"):
            data = tmp_path / f"serve-{len(cluster.sent('Pod'))}" / "data"
            cluster.claims.update(
                {"binderbox-store": data / "store", "binderbox-content": data / "content"}
            )
            config = serve_config(data) + images
            with running_serve(data.parent, data, config, env=env) as serve:
                stream = await build_events(serve.url, "git", git_spec(repo))
                pods = cluster.sent("Pod")
                assert stream.last.get("phase") == "ready", (
                    f"{stream.events[-4:]}\n{pod_log(cluster, pods[-1]['metadata']['name'])}"
                    f"\n{cluster.errors}\n{serve.logs().get('hub', '')[-3000:]}"
                    if pods
                    else f"{stream.events[-4:]}"
                )
                messages = [e.get("message", "") for e in stream.events]
                if run == "built":
                    assert "building" in stream.phases
                    assert any(m.startswith("Pushed ") for m in messages), messages
                else:  # BinderHub's check: the registry has the image, nothing is built
                    assert "building" not in stream.phases
                    assert any(m.startswith("Found image ") for m in messages), messages
                    assert not (data / "store" / "envs").exists() or not any(
                        (data / "store" / "envs").iterdir()
                    )
                ready = stream.last
                spawn = stream.time_of("ready") - stream.time_of("launching")
                image = pods[-1]["spec"]["containers"][0]["image"]
                pull = cluster.pull_seconds.get(image, 0.0)
                print(f"image mode ({run}), emulated API: launching -> ready {spawn:.1f} s")
                out = json.loads(await run_code(ready["url"], ready["token"], IMAGE_PROBE))
                assert out == {"uid": 1000, "prefix": "/srv/env", "six": "1.16.0", "store": False}
                await end_session(serve, ready)
        print(f"image pull and unpack by the stand-in kubelet: {pull:.1f} s (first launch)")
        first, second = cluster.sent("Pod")
        for pod in (first, second):
            valid(pod)
            main = pod["spec"]["containers"][0]
            assert main["image"].startswith(f"{registry.host}/{REPOSITORY}:")
            assert all(m["mountPath"] != "/srv/env" for m in main["volumeMounts"])
            assert main["securityContext"]["runAsNonRoot"] is True
        assert first["spec"]["containers"][0]["image"] == second["spec"]["containers"][0]["image"]
        for policy in cluster.sent("NetworkPolicy"):
            valid(policy)
    finally:
        registry.close()


HOME_PROBE = """
import json, os, pathlib
home = pathlib.Path.home()
out = {"files": sorted(os.listdir(home)), "repo_dir": os.environ.get("REPO_DIR"),
       "readme": (home / "alpha" / "README.md").read_text()}
(home / "notes.txt").write_text("kept")
print(json.dumps(out))
"""


@pytest.mark.slow
@pytest.mark.timeout(600)
async def test_persistent_home_gets_a_claim_per_user_emulated_api(
    tmp_path: Path, cluster: EmulatedCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    from session_helpers import CACHE, launch, launcher_for, make_hub, resolved, session_env

    from binderbox.hub.children import free_port
    from binderbox.sessions import SessionRequest
    from binderbox.sessions.hubclient import HubClient
    from binderbox.sessions.identity import Visitor

    content = tmp_path / "content" / "alpha"
    content.mkdir(parents=True)
    (content / "README.md").write_text("# from the repository\n")
    cluster.claims["binderbox-store"] = CACHE
    cluster.claims["binderbox-content"] = content.parent
    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    ports = {"public": free_port(), "hub": free_port(), "api": free_port(), "web": 0}
    managed = make_hub(tmp_path / "data", ports, backend="kubernetes")
    managed.spawner_config = {**managed.spawner_config, "allowed_roots": [str(CACHE)]}
    managed.sandbox_config = {
        "KubernetesSessions": {
            "store_root": str(CACHE),
            "content_root": str(content.parent),
            "content_claim": "binderbox-content",
            "content_prefix": "",
        },
        "KubeSpawner": {"namespace": "binder", "image": "binderbox-session:test"},
    }
    await managed.start()
    try:
        client = HubClient(managed.hub_api_url, managed.api_token)
        await client.create_user("alice")  # as a login makes her
        request = SessionRequest(
            "env-test",
            session_env(),
            content,
            resolved("alpha"),
            launch_host=managed.public_url,
            visitor=Visitor(name="alice"),
        )
        outs = []
        for _ in range(2):  # the second session finds the first one's files
            _, ready = await launch(launcher_for(managed), request)
            outs.append(json.loads(await run_code(ready.url, ready.token, HOME_PROBE)))
            await client.request("DELETE", f"users/alice/servers/{ready.url.split('/')[-2]}")
            for _ in range(200):
                if not cluster.objects("pods"):
                    break
                await asyncio.sleep(0.05)
    finally:
        for user in await client.request("GET", "users"):
            await client.delete_user(user["name"])
        await managed.stop()
    assert outs[0]["readme"] == "# from the repository\n"
    assert outs[0]["repo_dir"] == "/home/jovyan/alpha"
    assert "alpha" in outs[0]["files"] and "notes.txt" not in outs[0]["files"]
    assert "notes.txt" in outs[1]["files"]  # the first session's file, kept
    # the same version again places nothing (no alpha-<version> beside it)
    assert [f for f in outs[1]["files"] if f.startswith("alpha")] == ["alpha"]
    claims = cluster.sent("PersistentVolumeClaim")  # KubeSpawner asks at each start
    assert {pvc["metadata"]["name"] for pvc in claims} == {"claim-alice"}
    for pvc in claims:
        valid(pvc)
    assert len(cluster.objects("persistentvolumeclaims")) == 1  # the second was a conflict
    assert (cluster.claim_dir("claim-alice") / "notes.txt").read_text() == "kept"
    pods = cluster.sent("Pod")
    assert len(pods) == 2
    for pod in pods:
        valid(pod)
        home = next(v for v in pod["spec"]["volumes"] if v["name"] == "home")
        assert home["persistentVolumeClaim"]["claimName"] == "claim-alice"


@pytest.mark.parametrize(
    ("settings", "refused"),
    [
        ({"ManagedHub": {"backend": "local"}}, "run as pods"),
        ({"ManagedHub": {"backend": "kubernetes"}}, "need a registry"),
        ({"ManagedHub": {"backend": "kubernetes"}, "ImageRegistry": {"url": "r.example.org"}}, ""),
    ],
)
def test_image_sessions_need_pods_and_a_registry(
    settings: dict[str, dict[str, str]], refused: str, tmp_path: Path
) -> None:
    from traitlets.config import Config

    from binderbox.app import BinderboxApp
    from binderbox.errors import BinderboxError
    from binderbox.hub import ManagedHub
    from binderbox.serve import _image_sessions

    config = Config({"KubernetesSessions": {"mode": "image"}, **settings})
    config.ImageRegistry.prefix = "binder/envs"
    app = BinderboxApp(config=config, data_dir=str(tmp_path / "data"))
    pipeline = app.make_pipeline(allow_local=False)
    hub = ManagedHub(parent=app, data_dir=str(tmp_path / "data"))
    if refused:
        with pytest.raises(BinderboxError, match=refused):
            _image_sessions(app, pipeline, hub)
        assert pipeline.image_sessions is False
    else:  # the hub's spawner accepts this registry repository's images only
        _image_sessions(app, pipeline, hub)
        assert pipeline.image_sessions is True
        assert hub.sandbox_config["KubernetesSessions"]["image_prefix"] == (
            "r.example.org/binder/envs"
        )
