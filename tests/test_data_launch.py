"""Datasets end to end: data_requirement.json -> cached folders -> read-only in a session.

Everything is real: git repositories in tmp dirs, the pipeline of
``binderbox build`` (real uv builds), a local HTTP server for the datasets
(tests/data_helpers.py, it counts requests), a real JupyterHub + Node proxy
started in-process (:class:`ManagedHub`, as tests/test_sessions.py does) and
sandboxed single-user servers, whose kernels run the checks over the kernel
websocket.  One hub, one data directory and one environment (every repository
here has the same environment files) serve most of the module; each test ends
the sessions it starts.  The in-process eviction test runs after the others
that use that hub: it evicts that environment.  The last test runs the real
``binderbox serve`` command (tests/serve_helpers.py) on its own data
directory, filled beforehand by ``binderbox data fetch``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from data_helpers import FileServer, Route, tar_bytes, zip_bytes
from kernels import run_code
from repos import commit, make_repo, notebook
from serve_helpers import build_events, end_session, git_spec, running_serve
from session_helpers import started_hub
from testcache import CACHE as TEST_CACHE
from tornado.httpserver import HTTPServer
from tornado.web import Application, RequestHandler

from binderbox.app import BinderboxApp
from binderbox.data import DataCache, DataEntry
from binderbox.errors import LaunchError
from binderbox.events import Built, Event, Failed, Fetching, Ready
from binderbox.hub import ManagedHub
from binderbox.hub.children import free_port
from binderbox.pipeline import LaunchPipeline, LaunchRequest
from binderbox.providers.base import Resolved
from binderbox.sessions import SessionLauncher, SessionRequest
from binderbox.sessions.hubclient import HubClient
from binderbox.store import Store

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]
module_loop = pytest.mark.asyncio(loop_scope="module")

UV_CACHE = TEST_CACHE / "uv"
ENV_FILES = {"binder/runtime.txt": "python-3.11\n"}
TAR = tar_bytes({"a.txt": b"alpha\n", "sub/b.txt": b"beta\n"})
ZIP = zip_bytes({"z.txt": b"zeta\n"})
CSV = b"subject,score\n1,42\n"
MADE = "import os; open(os.path.join(_dst, 'made.txt'), 'w').write('hi')"

#: the files each dataset folder must hold (relative to data/<projectName>)
EXPECTED = {
    "atlas": {"a.txt": "alpha\n", "sub/b.txt": "beta\n", "z.txt": "zeta\n"},
    "scores": {"scores.csv": CSV.decode()},
    "made": {"made.txt": "hi"},
}

PROBE = """
import json, os
def read_all(root):
    found = {}
    for name in sorted(os.listdir(root)):
        top = os.path.join(root, name)
        files = {}
        for folder, _dirs, names in os.walk(top):
            for n in names:
                path = os.path.join(folder, n)
                files[os.path.relpath(path, top)] = open(path).read()
        found[name] = files
    return found
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as e:
        return type(e).__name__
out = {"home": read_all("data")}
os.chdir("content")
out["content"] = read_all("../data")
out["write"] = {n: attempt(lambda: open(f"../data/{n}/new.txt", "w")) for n in out["home"]}
out["delete"] = attempt(lambda: os.remove("../data/atlas/a.txt"))
print(json.dumps(out))
"""


def requirement(server: FileServer, **changes: dict[str, Any]) -> dict[str, Any]:
    """The several-entries data_requirement.json (``changes`` update single entries)."""
    entries: dict[str, dict[str, Any]] = {
        "archive": {
            "src": server.url("/atlas.tar.gz"),
            "dst": "../../data",
            "projectName": "atlas",
        },
        "extra": {"src": server.url("/extra.zip"), "dst": "./data", "projectName": "atlas"},
        "scores": {"src": server.url("/scores.csv"), "dst": "/data", "projectName": "scores"},
        "made": {"src": MADE, "dst": "./../data/made", "projectName": "made"},
    }
    for label, update in changes.items():
        entries[label] = {**entries.get(label, {}), **update}
    return entries


def repo_files(req: dict[str, Any]) -> dict[str, str]:
    return {
        **ENV_FILES,
        "binder/data_requirement.json": json.dumps(req, indent=1),
        "content/index.ipynb": notebook("print('hello')"),
        "README.md": "# data test\n",
    }


class WebHandler(RequestHandler):
    def get(self, path: str) -> None:
        self.write(f"binderbox web: {path}")


@pytest.fixture(scope="module")
def server() -> Iterator[FileServer]:
    files = FileServer()
    files.add("/atlas.tar.gz", TAR)
    files.add("/extra.zip", ZIP)
    files.add("/scores.csv", CSV)
    yield files
    files.close()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("bbx-data")


@pytest.fixture(scope="module")
def app(data_dir: Path) -> BinderboxApp:
    UV_CACHE.mkdir(parents=True, exist_ok=True)
    application = BinderboxApp(data_dir=str(data_dir))
    application.config.PythonBuilder.cache_dir = str(UV_CACHE)
    # the datasets come from a server on 127.0.0.1 (the policy: tests/test_fetch_policy.py)
    application.config.DataCache.allow_private_hosts = True
    return application


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(data_dir: Path) -> AsyncIterator[ManagedHub]:
    web = HTTPServer(Application([(r"/(.*)", WebHandler)]))
    web_port = free_port()
    web.listen(web_port, "127.0.0.1")
    managed = ManagedHub(
        data_dir=str(data_dir),
        public_ip="127.0.0.1",
        public_port=free_port(),
        hub_port=free_port(),
        proxy_api_port=free_port(),
        web_port=web_port,
        spawner_config={"allowed_roots": [str(data_dir)]},
    )
    try:
        async with started_hub(managed):
            yield managed
    finally:
        web.stop()


@pytest.fixture(scope="module")
def pipeline(app: BinderboxApp, hub: ManagedHub, data_dir: Path) -> LaunchPipeline:
    made = app.make_pipeline(allow_local=True)
    made.launcher = SessionLauncher(hub_api_url=hub.hub_api_url, api_token=hub.api_token)
    made.data = DataCache(parent=app, root=str(data_dir / "datasets"))
    return made


async def launch(pipeline: LaunchPipeline, hub: ManagedHub, repo: Path) -> list[Event]:
    request = LaunchRequest(provider="", spec=str(repo), launch_host=hub.public_url)
    return [event async for event in pipeline.launch(request)]


def ready(events: list[Event]) -> Ready:
    last = events[-1]
    assert isinstance(last, Ready), f"expected ready, got {last.to_wire()}"
    return last


def failed(events: list[Event]) -> Failed:
    last = events[-1]
    assert isinstance(last, Failed), f"expected failed, got {last.to_wire()}"
    assert not any(isinstance(e, Ready) for e in events)
    return last


async def stop(hub: ManagedHub, session: Ready) -> None:
    """End the session (its server, its supervisor, its use-locks)."""
    name = session.url.rstrip("/").rsplit("/", 1)[-1]
    await HubClient(hub.hub_api_url, hub.api_token).delete_user(name)


async def launched(pipeline: LaunchPipeline, hub: ManagedHub, repo: Path) -> list[Event]:
    """Launch, check it is ready, end the session; the events."""
    events = await launch(pipeline, hub, repo)
    await stop(hub, ready(events))
    return events


def cached_names(pipeline: LaunchPipeline) -> list[str]:
    assert pipeline.data is not None
    return sorted(item.project_name for item in pipeline.data.list())


def downloads(server: FileServer) -> dict[str, int]:
    return {path: count for path, count in server.hits.items() if count}


@module_loop
async def test_datasets_readable_in_session_and_cached_across_commits(
    pipeline: LaunchPipeline, hub: ManagedHub, server: FileServer, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", repo_files(requirement(server)))
    events = await launch(pipeline, hub, repo)
    session = ready(events)
    fetching = [e.message for e in events if isinstance(e, Fetching)]
    assert any("Dataset 'atlas' is ready." in m for m in fetching), fetching
    try:
        out = json.loads(await run_code(session.url, session.token, PROBE))
    finally:
        await stop(hub, session)
    assert out["home"] == EXPECTED  # every entry, two archives merged into one folder
    assert out["content"] == EXPECTED  # ../data/<projectName> from content/
    assert set(out["write"].values()) <= {"OSError", "PermissionError"}, out["write"]
    assert out["delete"] in ("OSError", "PermissionError")
    assert downloads(server) == {"/atlas.tar.gz": 1, "/extra.zip": 1, "/scores.csv": 1}
    assert cached_names(pipeline) == ["atlas", "made", "scores"]

    # a second launch, then a new commit with the same entries: nothing downloaded
    await launched(pipeline, hub, repo)
    commit(repo, {"content/index.ipynb": notebook("print('changed')")})
    events = await launched(pipeline, hub, repo)
    assert any("is ready (cached)" in e.message for e in events if isinstance(e, Fetching))
    assert downloads(server) == {"/atlas.tar.gz": 1, "/extra.zip": 1, "/scores.csv": 1}

    # a new version of one entry downloads its folder again, and only that folder
    commit(
        repo,
        {"binder/data_requirement.json": json.dumps(requirement(server, extra={"version": "2"}))},
    )
    await launched(pipeline, hub, repo)
    assert downloads(server) == {"/atlas.tar.gz": 2, "/extra.zip": 2, "/scores.csv": 1}
    assert cached_names(pipeline) == ["atlas", "atlas", "made", "scores"]


@module_loop
async def test_failing_code_source_fails_the_launch(
    pipeline: LaunchPipeline, hub: ManagedHub, server: FileServer, tmp_path: Path
) -> None:
    code = "import sys; print('mirror unreachable: giving up', file=sys.stderr); sys.exit(3)"
    req = {"broken": {"src": f"import os; {code}", "dst": "../data", "projectName": "broken"}}
    repo = make_repo(tmp_path / "repo", repo_files(req))
    event = failed(await launch(pipeline, hub, repo))
    assert "'broken'" in event.message
    assert "mirror unreachable: giving up" in event.message
    assert "broken" not in cached_names(pipeline)


def broken_cases(server: FileServer) -> dict[str, tuple[dict[str, Any], str]]:
    """name -> (requirement, a cause the failure message must state)."""
    slip = server.add("/slip.zip", zip_bytes({"ok.txt": b"fine", "../../evil.txt": b"x"}))
    return {
        "404": ({"src": server.url("/missing.csv"), "projectName": "gone"}, "404"),
        "checksum": (
            {"src": server.url("/scores.csv"), "projectName": "summed", "sha256": "0" * 64},
            "checksum mismatch",
        ),
        "zip-slip": ({"src": slip, "projectName": "slipped"}, "evil.txt"),
        "projectName": (
            {"src": server.url("/scores.csv"), "projectName": "../../etc"},
            "unsafe projectName",
        ),
        "limit": ({"src": server.url("/big.bin"), "projectName": "big"}, "larger than the limit"),
    }


@module_loop
async def test_broken_datasets_fail_the_launch_and_leave_nothing(
    pipeline: LaunchPipeline, hub: ManagedHub, server: FileServer, tmp_path: Path
) -> None:
    assert pipeline.data is not None
    server.add("/big.bin", b"x" * 50_000)
    pipeline.data.max_dataset_bytes = 10_000
    before = cached_names(pipeline)
    try:
        for case, (entry, cause) in broken_cases(server).items():
            req = {"label-" + case: {**entry, "dst": "../../data"}}
            repo = make_repo(tmp_path / case, repo_files(req))
            event = failed(await launch(pipeline, hub, repo))
            assert f"'label-{case}'" in event.message, (case, event.message)
            assert cause in event.message, (case, event.message)
            assert cached_names(pipeline) == before, case
            assert not list((Path(pipeline.data.root) / "tmp").iterdir()), case
    finally:
        pipeline.data.max_dataset_bytes = 5 * 10**9

    # fixing the source (here: the server now has the file) makes the next launch work
    server.add("/missing.csv", b"back\n")
    repo = tmp_path / "404"
    events = await launched(pipeline, hub, repo)
    assert any("Dataset 'gone' is ready." in e.message for e in events)
    assert "gone" in cached_names(pipeline)


def hubless(app: BinderboxApp, pipeline: LaunchPipeline) -> LaunchPipeline:
    """A new pipeline on the module's store, content and dataset caches, with no hub:
    its launches end with "does not launch" right after their data step."""
    return LaunchPipeline(
        parent=app,
        store=pipeline.store,
        builder=pipeline.builder,
        content=pipeline.content,
        data=pipeline.data,
        allow_local=True,
        work_dir=pipeline.work_dir,
    )


async def run_events(pipeline: LaunchPipeline, request: LaunchRequest) -> list[Event]:
    return [event async for event in pipeline.launch(request)]


@module_loop
async def test_data_requirement_is_read_once_per_content(
    pipeline: LaunchPipeline, app: BinderboxApp, server: FileServer, tmp_path: Path
) -> None:
    server.add("/once.csv", CSV)
    req = {"once": {"src": server.url("/once.csv"), "projectName": "once"}}
    repo = make_repo(tmp_path / "repo", repo_files(req))
    runs = hubless(app, pipeline)
    request = LaunchRequest(provider="", spec=str(repo))
    first = await run_events(runs, request)
    assert "does not launch" in failed(first).message
    assert any(e.message == "Dataset 'once' is ready." for e in first)
    # the fetched tree never changes, so its file is not read again: take it away
    content = runs.content.path_for(await runs.provider_for(request).resolve())
    (content / "binder" / "data_requirement.json").unlink()
    again = await run_events(runs, request)
    assert "does not launch" in failed(again).message
    assert any(e.message == "Dataset 'once' is ready (cached)." for e in again)
    # a pipeline that has not read this tree yet finds no datasets in it now
    fresh = await run_events(hubless(app, pipeline), request)
    assert "does not launch" in failed(fresh).message
    assert not any("Dataset" in e.message for e in fresh)


@module_loop
async def test_build_only_does_not_read_data_requirement(
    pipeline: LaunchPipeline, app: BinderboxApp, tmp_path: Path
) -> None:
    files = {**ENV_FILES, "binder/data_requirement.json": "{not json", "README.md": "# x\n"}
    repo = make_repo(tmp_path / "repo", files)
    runs = hubless(app, pipeline)
    build = LaunchRequest(provider="", spec=str(repo), build_only=True)
    assert isinstance((await run_events(runs, build))[-1], Built)
    event = failed(await run_events(runs, LaunchRequest(provider="", spec=str(repo))))
    assert event.message.startswith("binder/data_requirement.json is not valid JSON")
    assert event.status_code == 400


@module_loop
async def test_concurrent_launches_download_once(
    pipeline: LaunchPipeline, app: BinderboxApp, server: FileServer, tmp_path: Path
) -> None:
    """Ten pipeline runs at once need one dataset: one download.

    The runs are real launches up to the session step: a pipeline sharing the
    module's store, content cache and dataset cache but with no hub attached,
    so each run ends with "does not launch" right after its data step (ten
    sandboxed Jupyter servers would be too heavy for this machine).
    """

    def slow(_query: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        time.sleep(1.0)  # every run reaches the data step while the download runs
        return 200, {}, b"shared\n" * 1000

    server.routes["/shared.txt"] = Route(fn=slow)
    req = {"one": {"src": server.url("/shared.txt"), "dst": "../data", "projectName": "shared"}}
    repo = make_repo(tmp_path / "repo", repo_files(req))
    runs = hubless(app, pipeline)
    request = LaunchRequest(provider="", spec=str(repo))

    async def run() -> list[Event]:
        return [event async for event in runs.launch(request)]

    results = await asyncio.gather(*(run() for _ in range(10)))
    for events in results:
        assert "does not launch" in failed(events).message  # the step after the data step
        assert any("Dataset 'shared' is ready" in e.message for e in events)
    assert server.hits["/shared.txt"] == 1


class CountingCache(DataCache):
    """A dataset cache counting the folder keys it computes."""

    computed = 0

    def key_for(self, entries: Sequence[DataEntry], env_key: str | None = None) -> str:
        self.computed += 1
        return super().key_for(entries, env_key)


@module_loop
async def test_dataset_keys_computed_once_per_tree(
    pipeline: LaunchPipeline, app: BinderboxApp, hub: ManagedHub, server: FileServer, tmp_path: Path
) -> None:
    """A launch keys each folder once for its fetch, mounts and use-locks; a
    launch of a tree launched before keys none."""
    assert pipeline.data is not None
    req = {
        "one": {"src": server.url("/scores.csv"), "projectName": "keyed"},
        "two": {"src": server.url("/extra.zip"), "dst": "../data", "projectName": "keyed-too"},
    }
    repo = make_repo(tmp_path / "repo", repo_files(req))
    counting = CountingCache(parent=app, root=pipeline.data.root)
    runs = hubless(app, pipeline)
    runs.data, runs.launcher = counting, pipeline.launcher
    for ready_message in ("Dataset 'keyed' is ready.", "Dataset 'keyed' is ready (cached)."):
        events = await launched(runs, hub, repo)
        assert any(e.message == ready_message for e in events)
        assert counting.computed == 2
    await counting.aclose()


def binderbox(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = f"--PythonBuilder.cache_dir={UV_CACHE}"
    argv = [sys.executable, "-m", "binderbox", "data", *args, f"--data-dir={data_dir}", config]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600)


@module_loop
async def test_cli_fetch_list_rm(
    data_dir: Path, server: FileServer, pipeline: LaunchPipeline, tmp_path: Path
) -> None:
    req = {
        "cli": {"src": server.url("/cli.tar.gz"), "dst": "../data", "projectName": "cli-data"},
        "code": {"src": MADE.replace("made.txt", "cli.txt"), "projectName": "cli-data"},
    }
    server.add("/cli.tar.gz", tar_bytes({"inside.txt": b"from the cli\n"}))
    repo = make_repo(tmp_path / "repo", repo_files(req))
    result = await asyncio.to_thread(binderbox, data_dir, "fetch", str(repo))
    assert result.returncode == 0, result.stderr
    # resolved once, and the environment (for the code source) built from that content
    resolving = [ln.strip() for ln in result.stderr.splitlines() if "Resolv" in ln]
    assert len(resolving) == 2 and resolving[0].startswith("Resolving"), resolving
    assert resolving[1].startswith("Resolved to "), resolving
    assert server.url("/cli.tar.gz") in result.stderr  # progress names the URL...
    assert "(100%)" in result.stderr  # ... and the bytes and percent
    assert "Traceback" not in result.stderr
    name, path = result.stdout.split()
    assert name == "cli-data"
    assert (Path(path) / "inside.txt").read_text() == "from the cli\n"
    assert (Path(path) / "cli.txt").read_text() == "hi"  # code source, in the built env

    listing = await asyncio.to_thread(binderbox, data_dir, "list")
    assert listing.returncode == 0, listing.stderr
    line = next(ln for ln in listing.stdout.splitlines() if "cli-data" in ln)
    key = Path(path).parent.name
    assert line.startswith(f"{key}  cli-data  ")
    assert server.url("/cli.tar.gz") in line

    removed = await asyncio.to_thread(binderbox, data_dir, "rm", "cli-data")
    assert removed.returncode == 0, removed.stderr
    assert not Path(path).exists()
    assert "cli-data" not in (await asyncio.to_thread(binderbox, data_dir, "list")).stdout
    again = await asyncio.to_thread(binderbox, data_dir, "rm", "cli-data")
    assert again.returncode == 1
    assert again.stderr.strip() == "error: cannot remove cli-data: no such dataset, or in use"

    bad = {"gone": {"src": server.url("/nowhere.zip"), "projectName": "nowhere"}}
    broken = make_repo(tmp_path / "broken", repo_files(bad))
    failing = await asyncio.to_thread(binderbox, data_dir, "fetch", str(broken))
    assert failing.returncode == 1
    # progress lines are indented; apart from them, one plain line says what went wrong
    errors = [ln for ln in failing.stderr.splitlines() if not ln.startswith("  ")]
    assert len(errors) == 1 and errors[0].startswith("error: "), failing.stderr
    assert "'gone'" in errors[0] and "404" in errors[0], failing.stderr
    assert "Traceback" not in failing.stderr
    assert "nowhere" not in (await asyncio.to_thread(binderbox, data_dir, "list")).stdout


@module_loop
async def test_spawner_takes_only_use_locks(
    pipeline: LaunchPipeline, hub: ManagedHub, data_dir: Path
) -> None:
    """``hold_files`` comes from user_options: no other file is opened or created."""
    assert pipeline.launcher is not None
    resolved = Resolved(
        provider="gh",
        spec="org/repo/main",
        version="a" * 40,
        persistent_spec=f"org/repo/{'a' * 40}",
        repo_url="https://github.com/org/repo",
        ref_url=f"https://github.com/org/repo/tree/{'a' * 40}",
    )
    bad = [
        Path("/etc/intruder.use"),  # outside the allowed directories
        data_dir / "store" / "intruder.use",  # not a locks/ folder
        data_dir / "store" / "locks" / "intruder.lock",  # not a use-lock
    ]
    (data_dir / "store" / "locks").mkdir(parents=True, exist_ok=True)
    for path in bad:
        req = SessionRequest("k", data_dir, data_dir, resolved, hold_files=[path])
        with pytest.raises(LaunchError):
            async for _event in pipeline.launcher.launch(req):
                pass
        assert not path.exists()


async def evicted(gc: Callable[[], list[str]]) -> list[str]:
    """What ``gc`` evicts once the stopped session's supervisor is gone (it may lag a little)."""
    removed: list[str] = []
    for _ in range(100):
        removed += await asyncio.to_thread(gc)
        if removed:
            break
        await asyncio.sleep(0.1)
    return removed


@module_loop
async def test_session_holds_its_env_and_datasets(
    pipeline: LaunchPipeline, hub: ManagedHub, server: FileServer, data_dir: Path, tmp_path: Path
) -> None:
    """Runs last: it evicts the module's environment."""
    req = {"held": {"src": server.url("/scores.csv"), "projectName": "held"}}
    repo = make_repo(tmp_path / "repo", repo_files(req))
    session = ready(await launch(pipeline, hub, repo))
    assert pipeline.data is not None
    dataset = next(d for d in pipeline.data.list() if d.project_name == "held")
    env_key = session.image
    # another process evicting with a tiny budget and no grace period
    store = Store(root=str(data_dir / "store"), budget=1, min_idle=0)
    data = DataCache(root=str(data_dir / "datasets"), budget=1, min_idle=0)
    try:
        assert env_key not in await asyncio.to_thread(store.gc)
        assert dataset.key not in await asyncio.to_thread(data.gc)
        assert store.get(env_key) is not None and dataset.path.is_dir()
        assert not store.remove(env_key) and not data.remove(dataset.key)
        out = await run_code(
            session.url, session.token, "print(open('data/held/scores.csv').read())"
        )
        assert out.strip() == CSV.decode().strip()
    finally:
        await stop(hub, session)
    assert env_key in await evicted(store.gc)
    assert dataset.key in await evicted(data.gc)
    assert not dataset.path.exists() and store.get(env_key) is None


@module_loop
async def test_cli_prefetch_then_binderbox_serve_launch(server: FileServer, tmp_path: Path) -> None:
    """The operator's ``binderbox data fetch`` fills the cache ``binderbox serve`` uses.

    A real ``binderbox serve`` subprocess then launches the repository without
    downloading again, the session reads the dataset, and while it runs an
    eviction with a tiny budget (from another process) leaves its environment
    and dataset alone; once it ended, they can go.
    """
    server.add("/served.tar.gz", tar_bytes({"served.txt": b"prefetched\n"}))
    req = {"s": {"src": server.url("/served.tar.gz"), "dst": "../data", "projectName": "served"}}
    repo = make_repo(tmp_path / "repo", repo_files(req))
    data_dir = tmp_path / "serve" / "data"
    fetched = await asyncio.to_thread(binderbox, data_dir, "fetch", str(repo))
    assert fetched.returncode == 0, fetched.stderr
    assert server.hits["/served.tar.gz"] == 1

    with running_serve(tmp_path / "serve", data_dir) as serve:
        stream = await build_events(serve.url, "git", git_spec(repo))
        session = stream.last
        assert session.get("phase") == "ready", stream.events[-5:]
        assert server.hits["/served.tar.gz"] == 1  # the CLI's copy was used
        out = await run_code(
            session["url"], session["token"], "print(open('data/served/served.txt').read())"
        )
        assert out.strip() == "prefetched"
        store = Store(root=str(data_dir / "store"), budget=1, min_idle=0)
        data = DataCache(root=str(data_dir / "datasets"), budget=1, min_idle=0)
        try:
            assert await asyncio.to_thread(store.gc) == []
            assert await asyncio.to_thread(data.gc) == []
        finally:
            await end_session(serve, session)
        assert session["image"] in await evicted(store.gc)
        assert len(await evicted(data.gc)) == 1
