"""Builds as Kubernetes Jobs (store mode) against an emulated API (``..._emulated_api``).

No Kubernetes API server can be had here: the API is kmock behind kube's compatibility
layer (tests/kube_emulator.py), with a stand-in Job controller, pod logs and build pods
run unprivileged without bubblewrap (tests/kube_jobs.py).  What is real: binderbox's
pipeline and store, its KubernetesBuilds talking to the API with kubernetes_asyncio, the
chart's own Job template (rendered by helm), ``binderbox build --in-pod`` in the pod,
the environment published and then run in a session's sandbox; the Job objects sent
are checked with kubernetes-validate --strict against Kubernetes 1.30 and 1.37.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import kubernetes_validate
import pytest
import yaml
from kube_jobs import JobCluster, render_build_job
from podrun import POD_UID, StandInPods
from repos import make_repo

from binderbox.app import BinderboxApp
from binderbox.builders import run_in_env
from binderbox.builders.kube import KubernetesBuilds
from binderbox.events import Building, Built, Event, Failed
from binderbox.pipeline import LaunchPipeline, LaunchRequest
from binderbox.sessions.identity import Visitor
from binderbox.store import Store
from tests.fixtures_git import GitHttpServer, git

pytestmark = pytest.mark.slow
#: Kubernetes 1.30 and the newest version kubernetes-validate has schemas for
KUBE_VERSIONS = ("1.30.0", kubernetes_validate.utils.latest_version())


@pytest.fixture
def job_template(tmp_path: Path) -> Path:
    (tmp_path / "render").mkdir()
    return render_build_job(tmp_path / "render")


@pytest.fixture
def cluster(tmp_path: Path, job_template: Path) -> Iterator[JobCluster]:
    job = yaml.safe_load(job_template.read_text())
    (claim,) = [
        v["persistentVolumeClaim"]["claimName"]
        for v in job["spec"]["template"]["spec"]["volumes"]
        if "persistentVolumeClaim" in v
    ]
    store = tmp_path / "data" / "store"
    store.mkdir(parents=True)
    pods = StandInPods(tmp_path / "pods")
    with JobCluster(tmp_path / "cluster", pods, claims={claim: store}) as found:
        yield found


def kube_app(tmp_path: Path, cluster: JobCluster, job_template: Path) -> BinderboxApp:
    """The service, its builds Jobs from ``job_template`` in ``cluster``."""
    app = BinderboxApp(data_dir=str(tmp_path / "data"))
    app.builder_class = KubernetesBuilds
    app.config.KubernetesBuilds.update(
        job_template=str(job_template),
        namespace=cluster.namespace,
        kube_config=str(cluster.kubeconfig),
        poll_interval=0.2,
    )
    return app


@pytest.fixture
async def pipeline(
    tmp_path: Path, cluster: JobCluster, job_template: Path
) -> AsyncIterator[LaunchPipeline]:
    made = kube_app(tmp_path, cluster, job_template).make_pipeline(allow_local=True)
    yield made
    await made.finisher.aclose()


async def build(pipeline: LaunchPipeline, repo: Path) -> list[Event]:
    request = LaunchRequest(provider="", spec=f"file://{repo}", build_only=True)
    return [event async for event in pipeline.launch(request)]


async def gone(cluster: JobCluster, plural: str) -> list[dict[str, Any]]:
    """What is left of ``plural`` after a few seconds (deletions are asynchronous)."""
    for _ in range(100):
        left = cluster.objects(plural)
        if not left:
            break
        await asyncio.sleep(0.1)
    return left


def check_unprivileged_job(job: dict[str, Any]) -> None:
    spec = job["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert not spec["hostNetwork"] and not spec["hostPID"] and not spec["hostIPC"]
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == 1000
    assert not [v for v in spec["volumes"] if "hostPath" in v]
    (container,) = spec["containers"]
    context = container["securityContext"]
    assert context["privileged"] is False and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"] and not context["capabilities"].get("add")
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(job, version, strict=True)


async def test_build_runs_as_an_unprivileged_job_emulated_api(
    pipeline: LaunchPipeline, cluster: JobCluster, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", {"requirements.txt": "six==1.16.0\n"})
    events = await build(pipeline, repo)
    last = events[-1]
    assert isinstance(last, Built), [e.to_wire() for e in events[-5:]]
    # the pod's own output reached the launch as building events
    lines = [e.message for e in events if isinstance(e, Building)]
    assert any("six==1.16.0" in line for line in lines), lines[-20:]
    # the environment, published into the store, works in a session's sandbox
    env = pipeline.store.get(last.image_name)
    assert env is not None and env.path.stat().st_uid == POD_UID
    result = run_in_env(env.path, ["python", "-c", "import six; print(six.__version__)"])
    assert result.returncode == 0 and result.stdout.strip() == "1.16.0", result.stderr
    # one Job, as sent: the chart's template, unprivileged, strictly valid
    (job,) = cluster.sent("Job")
    check_unprivileged_job(job)
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["binderbox", "build"]
    assert container["args"][1:] == ["--json", "--in-pod", "--output=/srv/env"]
    assert container["args"][0].startswith("git/") and len(container["args"]) == 4
    (output,) = [m for m in container["volumeMounts"] if m["mountPath"] == "/srv/env"]
    assert output["subPath"].startswith(f"tmp/{last.image_name}.")
    # finished Jobs are deleted, with their pods
    assert await gone(cluster, "jobs") == []
    assert await gone(cluster, "pods") == []


async def test_failing_build_job_is_a_plain_failed_event_emulated_api(
    pipeline: LaunchPipeline, cluster: JobCluster, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "bad", {"requirements.txt": "binderbox-no-such-package==1.0\n"})
    events = await build(pipeline, repo)
    last = events[-1]
    assert isinstance(last, Failed), last.to_wire()
    assert "binderbox-no-such-package" in last.message, last.message
    assert "Traceback" not in last.message and last.reason != "internal"
    assert pipeline.store.list() == []
    assert not list((Path(pipeline.store.root) / "tmp").iterdir())
    assert await gone(cluster, "jobs") == []


async def test_apt_txt_is_refused_before_any_job_emulated_api(
    pipeline: LaunchPipeline, cluster: JobCluster, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "apt", {"requirements.txt": "six\n", "apt.txt": "graphviz\n"})
    last = (await build(pipeline, repo))[-1]
    assert isinstance(last, Failed), last.to_wire()
    assert "system packages from apt.txt (graphviz)" in last.message, last.message
    assert "unprivileged Kubernetes pods" in last.message  # the reason
    assert "environment.yml" in last.message and "one machine" in last.message  # the ways out
    assert last.reason == "unsupported" and "Traceback" not in last.message
    assert cluster.sent("Job") == [] and pipeline.store.list() == []


async def test_eviction_spares_what_a_job_builds_emulated_api(
    pipeline: LaunchPipeline, cluster: JobCluster, tmp_path: Path
) -> None:
    repo = make_repo(
        tmp_path / "slow",
        {"requirements.txt": "six\n", "postBuild": "#!/bin/sh\necho slow-build\nsleep 3\n"},
        executable=("postBuild",),
    )
    # the store as another process sees it (`binderbox envs gc`), over budget, no grace
    evicting = Store(root=pipeline.store.root, budget=1, min_idle=0)
    request = LaunchRequest(provider="", spec=f"file://{repo}", build_only=True)
    events: list[Event] = []
    folders: list[Path] = []
    async for event in pipeline.launch(request):
        events.append(event)
        if isinstance(event, Building) and "slow-build" in event.message:
            (job,) = cluster.objects("jobs")
            mounts = job["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
            (output,) = [m for m in mounts if m["mountPath"] == "/srv/env"]
            folders.append(Path(pipeline.store.root) / output["subPath"])
            assert await asyncio.to_thread(evicting.gc) == []
            assert folders[0].is_dir()  # the Job's folder, while it writes it
    last = events[-1]
    assert isinstance(last, Built), last.to_wire()
    assert folders and pipeline.store.get(last.image_name) is not None


async def test_deleted_build_job_says_so_emulated_api(
    pipeline: LaunchPipeline, cluster: JobCluster, tmp_path: Path
) -> None:
    repo = make_repo(
        tmp_path / "slow",
        {"requirements.txt": "six\n", "postBuild": "#!/bin/sh\necho slow-build\nsleep 600\n"},
        executable=("postBuild",),
    )
    request = LaunchRequest(provider="", spec=f"file://{repo}", build_only=True)
    events: list[Event] = []
    async for event in pipeline.launch(request):
        events.append(event)
        if isinstance(event, Building) and "slow-build" in event.message:
            (job,) = cluster.objects("jobs")  # someone deletes the Job mid-build
            cluster.delete_job(job["metadata"]["namespace"], job["metadata"]["name"])
    last = events[-1]
    assert isinstance(last, Failed), last.to_wire()
    assert last.message == "The build's Job was deleted before the build finished.", last
    assert pipeline.store.list() == []
    assert await gone(cluster, "pods") == []


async def test_build_past_its_time_limit_stops_its_job_emulated_api(
    pipeline: LaunchPipeline, cluster: JobCluster, tmp_path: Path
) -> None:
    pipeline.build_timeout = 30
    repo = make_repo(
        tmp_path / "slow",
        {"requirements.txt": "six\n", "postBuild": "#!/bin/sh\nsleep 600\n"},
        executable=("postBuild",),
    )
    last = (await build(pipeline, repo))[-1]
    assert isinstance(last, Failed), last.to_wire()
    assert last.message.startswith("The build took longer than 30 seconds"), last.message
    assert await gone(cluster, "jobs") == []
    assert await gone(cluster, "pods") == []
    assert cluster.running() == []  # the pod's processes were stopped


async def test_builds_at_once_are_capped_emulated_api(
    pipeline: LaunchPipeline, cluster: JobCluster, tmp_path: Path
) -> None:
    pipeline.store.concurrent_builds = 1
    repos = [
        make_repo(tmp_path / name, {"requirements.txt": f"{name}\n"}) for name in ("six", "idna")
    ]
    most = 0

    async def sample() -> None:
        nonlocal most
        while True:
            most = max(most, len(cluster.objects("jobs")))
            await asyncio.sleep(0.2)

    sampler = asyncio.ensure_future(sample())
    try:
        both = await asyncio.gather(*(build(pipeline, repo) for repo in repos))
    finally:
        sampler.cancel()
    assert all(isinstance(events[-1], Built) for events in both), [e[-1] for e in both]
    waited = [e for events in both for e in events if e.message.startswith("Waiting for a build")]
    assert waited, "the second build did not wait for the first"
    assert most == 1  # one Job at a time


# -- a private repository ---------------------------------------------------------------

TOKEN = "tok-alice-kube-0123456789"
#: what the build's postBuild finds where the fetch container sees the token
PEEK = "#!/bin/sh\ncat /etc/binderbox/git-tokens/tokens.json 2>/dev/null || echo no-token-here\n"


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[GitHttpServer]:
    """A loopback git server that demands a token, serving o/priv.git."""
    work = make_repo(
        tmp_path / "work",
        {"requirements.txt": "six==1.16.0\n", "postBuild": PEEK},
        executable=("postBuild",),
    )
    git("clone", "-q", "--bare", str(work), str(tmp_path / "served" / "o" / "priv.git"))
    served = GitHttpServer(tmp_path / "served", tokens={TOKEN})
    yield served
    served.close()


@pytest.fixture
async def private_pipeline(
    tmp_path: Path, cluster: JobCluster, job_template: Path
) -> AsyncIterator[LaunchPipeline]:
    """The service and its build pods fetching from a loopback git host."""
    job = yaml.safe_load(job_template.read_text())
    job["spec"]["template"]["spec"]["containers"][0]["command"] += [
        "--GitProvider.allow_private_hosts=True"  # the test's server is on loopback
    ]
    (tmp_path / "private-job.yaml").write_text(yaml.safe_dump(job))
    app = kube_app(tmp_path, cluster, tmp_path / "private-job.yaml")
    app.config.GitProvider.allow_private_hosts = True
    made = app.make_pipeline(allow_local=False)
    yield made
    await made.finisher.aclose()


def launch_private(server: GitHttpServer, token: str) -> LaunchRequest:
    spec = f"{quote(server.url + '/o/priv.git', safe='')}/main"
    alice = Visitor(name="alice", tokens={server.url.split("://")[1]: token})
    return LaunchRequest(provider="git", spec=spec, visitor=alice, build_only=True)


async def test_private_repository_builds_in_a_job_with_a_secret_only_the_fetch_sees_emulated_api(
    private_pipeline: LaunchPipeline, cluster: JobCluster, private_server: GitHttpServer
) -> None:
    events: list[Event] = []
    uids: set[str] = set()
    async for event in private_pipeline.launch(launch_private(private_server, TOKEN)):
        events.append(event)
        if isinstance(event, Building) and not uids:  # the Job as the API holds it
            uids = {job["metadata"]["uid"] for job in cluster.objects("jobs")}
    last = events[-1]
    assert isinstance(last, Built), [e.to_wire() for e in events[-8:]]
    lines = [e.message for e in events if isinstance(e, Building)]
    assert "no-token-here" in lines, lines[-20:]  # the repository's code never saw it
    (job,) = cluster.sent("Job")
    (secret,) = cluster.sent("Secret")
    # the token is in the Secret only: not in the Job (its args, env), nor in any event
    b64 = base64.b64encode(TOKEN.encode()).decode()
    sent = json.dumps([job, cluster.sent("Pod")]) + json.dumps([e.to_wire() for e in events])
    assert TOKEN not in sent and b64 not in sent
    data = json.loads(base64.b64decode(secret["data"]["tokens.json"]))
    assert data == {private_server.url.split("://")[1]: TOKEN}
    name = job["metadata"]["name"]
    assert secret["metadata"]["name"] == name and secret["immutable"] is True
    (owner,) = secret["metadata"]["ownerReferences"]
    assert owner["kind"] == "Job" and owner["name"] == name and {owner["uid"]} == uids
    # mounted read-only in the fetch init container only; the build container has none
    pod = job["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == name
    (fetch,) = pod["initContainers"]
    assert fetch["name"] == "fetch" and "--fetch-only" in fetch["args"]
    assert next(m for m in fetch["volumeMounts"] if m["name"] == volume["name"])["readOnly"]
    assert all(m["name"] != volume["name"] for m in pod["containers"][0]["volumeMounts"])
    check_unprivileged_job(job)
    for version in KUBE_VERSIONS:
        kubernetes_validate.validate(secret, version, strict=True)
    # the environment works; the Job and the Secret are gone
    env = private_pipeline.store.get(last.image_name)
    assert env is not None
    result = run_in_env(env.path, ["python", "-c", "import six; print(six.__version__)"])
    assert result.stdout.strip() == "1.16.0", result.stderr
    assert await gone(cluster, "jobs") == [] and await gone(cluster, "secrets") == []


async def test_private_repository_refused_in_its_job_is_a_plain_failed_event_emulated_api(
    private_pipeline: LaunchPipeline, cluster: JobCluster, private_server: GitHttpServer
) -> None:
    async def revoke() -> None:  # once the service fetched, before its Job's pod does
        for _ in range(60_000):  # at most 10 minutes
            if cluster.sent("Job"):
                private_server.tokens = {"another-token"}
                return
            await asyncio.sleep(0.01)

    revoking = asyncio.ensure_future(revoke())
    try:
        request = launch_private(private_server, TOKEN)
        events = [event async for event in private_pipeline.launch(request)]
    finally:
        revoking.cancel()
    assert private_server.tokens == {"another-token"}
    last = events[-1]
    assert isinstance(last, Failed), last.to_wire()
    assert "your account may read the repository" in last.message, last.message
    assert "Traceback" not in last.message and TOKEN not in last.message
    assert private_pipeline.store.list() == []
    assert await gone(cluster, "jobs") == [] and await gone(cluster, "secrets") == []


async def test_build_jobs_an_earlier_run_left_are_removed_at_start_emulated_api(
    tmp_path: Path, cluster: JobCluster, job_template: Path
) -> None:
    """A service stopped mid-build leaves its Job; the next start deletes it (and its
    Secret), not another release's Jobs nor one it made itself."""
    earlier = kube_app(tmp_path, cluster, job_template).make_pipeline(allow_local=True)
    assert isinstance(earlier.builder, KubernetesBuilds)
    path = f"/apis/batch/v1/namespaces/{cluster.namespace}/jobs"
    left = earlier.builder.job_for(["--version"], tmp_path / "tmp" / "k.1", "a" * 64)
    other = earlier.builder.job_for(["--version"], tmp_path / "tmp" / "k.2", "b" * 64)
    other["metadata"]["labels"]["app.kubernetes.io/instance"] = "another-release"
    for job in (left, other):
        cluster.post(path, job)
    secret = {"metadata": {"name": left["metadata"]["name"]}, "stringData": {"t": "x"}}
    cluster.post(f"/api/v1/namespaces/{cluster.namespace}/secrets", secret)
    await asyncio.sleep(1.1)  # the API's timestamps are to the second
    upgraded = yaml.safe_load(job_template.read_text())  # a chart upgrade: a new version
    upgraded["metadata"]["labels"]["app.kubernetes.io/version"] = "9.9.9"
    (tmp_path / "upgraded.yaml").write_text(yaml.safe_dump(upgraded))
    app = kube_app(tmp_path, cluster, tmp_path / "upgraded.yaml")
    restarted = app.make_pipeline(allow_local=True).builder
    assert isinstance(restarted, KubernetesBuilds)
    mine = restarted.job_for(["--version"], tmp_path / "tmp" / "k.3", "c" * 64)
    restarted._made.add(mine["metadata"]["name"])  # as run_pod records it
    cluster.post(path, mine)
    assert await restarted.recover() == [left["metadata"]["name"]]
    for _ in range(100):
        names = {job["metadata"]["name"] for job in cluster.objects("jobs")}
        if left["metadata"]["name"] not in names:
            break
        await asyncio.sleep(0.1)
    assert names == {other["metadata"]["name"], mine["metadata"]["name"]}
    assert cluster.objects("secrets") == []
    assert await restarted.recover() == []  # nothing left the second time
    await earlier.finisher.aclose()


async def test_image_mode_build_job_pushes_the_image_emulated_api(tmp_path: Path) -> None:
    """mode: image: the Job builds into an emptyDir and pushes to a real registry (Debian's
    docker-registry on loopback); the store keeps nothing; the next launch finds the image
    and starts no Job."""
    from registry_helpers import REPOSITORY, LocalRegistry, skopeo

    (tmp_path / "render").mkdir()
    template = render_build_job(tmp_path / "render", "image", ("registry.username=",))
    registry = LocalRegistry(tmp_path / "registry")
    repo = make_repo(tmp_path / "repo", {"requirements.txt": "six==1.16.0\n"})
    try:
        with JobCluster(tmp_path / "cluster", StandInPods(tmp_path / "pods")) as cluster:
            app = kube_app(tmp_path, cluster, template)
            app.config.KubernetesBuilds.mode = "image"
            app.config.ImageRegistry.update(url=registry.host, prefix=REPOSITORY, insecure=True)
            pipeline = app.make_pipeline(allow_local=True)
            events = await build(pipeline, repo)
            last = events[-1]
            assert isinstance(last, Built), [e.message for e in events]
            assert not last.cached and last.path == ""
            pushed = [e.message for e in events if e.message.startswith("Pushed ")]
            assert len(pushed) == 1, [e.message for e in events]
            assert pipeline.store.list() == []
            assert not any((tmp_path / "data" / "store" / "tmp").glob("*"))
            (job,) = cluster.sent("Job")
            check_unprivileged_job(job)
            spec = job["spec"]["template"]["spec"]
            output = next(v for v in spec["volumes"] if v["name"] == "output")
            assert "emptyDir" in output  # nothing of the store in the build pod
            args = spec["containers"][0]["args"]
            assert f"--push={registry.host}/{REPOSITORY}" in args and "--insecure" in args
            image = f"{registry.host}/{REPOSITORY}:{last.image_name}"
            inspected = skopeo(registry, "inspect", f"docker://{image}")
            assert inspected.returncode == 0, inspected.stderr
            digest = json.loads(inspected.stdout)["Digest"]
            assert pushed[0].startswith(f"Pushed {image}@{digest} ")
            again = await build(pipeline, repo)
            assert [e.message for e in again if isinstance(e, Built)] == [
                f"Found image {image} in the registry."
            ]
            assert len(cluster.sent("Job")) == 1
            await pipeline.finisher.aclose()
    finally:
        registry.close()
