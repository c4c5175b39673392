"""conda environments through the real pipeline and store: real rattler, real uv.

conda-forge cannot be reached from here: every test solves and installs from
a *local stand-in for conda-forge* (tests/condachannel.py: packages made at
test time -- a compiled library and a program linking it, a noarch package, a
``python`` repackaged from pyenv's -- indexed by rattler), served on
loopback HTTP and configured as the operator's mirror of ``conda-forge``, or
read as a ``file://`` mirror.  The Jupyter server packages and ``pip:``
extras come from PyPI with uv, as in production.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.server
import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from build_helpers import build_only, built
from condachannel import (
    ENVIRONMENT,
    ChannelServer,
    conda_lock,
    pixi_lock,
    solve,
    stand_in_for_conda_forge,
)
from loopback import LoopbackServer
from nethosts import NamespaceHost, namespace_host
from repos import commit, make_repo, notebook
from testcache import CACHE as TEST_CACHE

from binderbox.app import BinderboxApp
from binderbox.builders import run_in_env
from binderbox.builders.conda import CondaBuilder
from binderbox.builders.condafetch import package_cache
from binderbox.events import Building, Built, Failed
from binderbox.pipeline import LaunchPipeline

pytestmark = pytest.mark.slow

CONDA_FORGE = "https://conda.anaconda.org/conda-forge"


@pytest.fixture(scope="module")
def channels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChannelServer]:
    """The local stand-in for conda-forge, at ``<server>/conda-forge``."""
    with stand_in_for_conda_forge(tmp_path_factory.mktemp("channels")) as server:
        yield server


def make_pipeline(data: Path, server: ChannelServer, **conda: object) -> LaunchPipeline:
    app = BinderboxApp(data_dir=str(data))
    app.config.PythonBuilder.cache_dir = str(TEST_CACHE / "uv")
    app.config.CondaBuilder.pkgs_dir = str(TEST_CACHE / "conda")
    app.config.CondaBuilder.channel_alias = server.url  # other names: 404 there
    app.config.CondaBuilder.mirrors = {"conda-forge": f"{server.url}/conda-forge"}
    for name, value in conda.items():
        setattr(app.config.CondaBuilder, name, value)
    return app.make_pipeline(allow_local=True)


@pytest.fixture
async def pipeline(tmp_path: Path, channels: ChannelServer) -> AsyncIterator[LaunchPipeline]:
    made = make_pipeline(tmp_path / "data", channels)
    yield made
    await made.finisher.aclose()


def shell(env: Built, script: str) -> str:
    result = run_in_env(Path(env.path), ["sh", "-c", script])
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def conda_meta(env: Built) -> set[str]:
    return {p.stem for p in (Path(env.path) / "conda-meta").glob("*.json")}


async def test_environment_yml_from_the_local_stand_in_for_conda_forge(
    pipeline: LaunchPipeline, tmp_path: Path
) -> None:
    repo = make_repo(
        tmp_path / "repo", {"environment.yml": ENVIRONMENT, "index.ipynb": notebook("1")}
    )
    env = built(await build_only(pipeline, str(repo)))
    assert not env.cached
    # the compiled program runs in the session layout, linked to the package's library
    # at /srv/env (rattler rewrote the build prefix in its run path and in text files)
    out = shell(env, "demo-answer; cat /srv/env/etc/demo/prefix.txt; demo-noarch")
    assert out == "the answer is 42\nprefix=/srv/env\nhello from demo-noarch\n"
    code = "import sys, six, demo_noarch; print(sys.prefix, sys.version_info[:2], six.__version__)"
    assert shell(env, f"python -c '{code}'") == "/srv/env (3, 11) 1.16.0\n"
    # python is the channel's, with the Jupyter server installed into it by uv
    assert {"python-3.11.7-h0_binderbox_test", "libdemo-1.0-h0_test"} <= conda_meta(env)
    assert shell(env, "jupyterhub-singleuser --version").strip()
    assert shell(env, "jupyter-lab --version").strip()
    # the packages come from one shared cache, hard-linked (no postBuild here)
    assert (Path(env.path) / "lib" / "libdemo.so.1").stat().st_nlink >= 2
    await pipeline.finisher.drain()
    verbose = run_in_env(Path(env.path), ["python", "-v", "-c", "import six"])
    assert "six.cpython-311.pyc matches" in verbose.stderr

    # a commit changing only a notebook reuses it; a changed environment.yml rebuilds
    commit(repo, {"index.ipynb": notebook("2 + 2")})
    again = await build_only(pipeline, str(repo))
    assert not any(isinstance(e, Building) for e in again)
    assert built(again).cached and built(again).image_name == env.image_name
    commit(repo, {"environment.yml": ENVIRONMENT.replace("  - demo-noarch\n", "")})
    changed = built(await build_only(pipeline, str(repo)))
    assert not changed.cached and changed.image_name != env.image_name
    assert "demo-noarch-0.2-pyh0_test" not in conda_meta(changed)


async def test_pixi_lock_installs_exactly_the_locked_packages(
    pipeline: LaunchPipeline, tmp_path: Path, channels: ChannelServer
) -> None:
    served = f"{channels.url}/conda-forge"
    records = await solve(served, ["python 3.11.*", "libdemo"])
    manifest = (
        '[workspace]\nname = "demo"\nchannels = ["conda-forge"]\nplatforms = ["linux-64"]\n\n'
        '[dependencies]\npython = "3.11.*"\nlibdemo = "*"\ndemo-noarch = "*"\n'
    )  # the manifest asks for demo-noarch too: the lock, without it, wins
    files = {
        "pixi.toml": manifest,
        "pixi.lock": pixi_lock(records, served, CONDA_FORGE),
        "environment.yml": ENVIRONMENT,
    }
    env = built(await build_only(pipeline, str(make_repo(tmp_path / "pixi", files))))
    locked = {f"{r.name.normalized}-{r.version}-{r.build}" for r in records}  # type: ignore[attr-defined]
    assert conda_meta(env) == locked
    meta = Path(env.path) / "conda-meta" / "libdemo-1.0-h0_test.json"
    assert json.loads(meta.read_text())["url"].startswith(CONDA_FORGE)  # as locked
    assert shell(env, "demo-answer") == "the answer is 42\n"
    assert shell(env, "python -c 'import six; print(six.__version__)'") == "1.16.0\n"


async def test_conda_lock_from_a_file_mirror(tmp_path: Path, channels: ChannelServer) -> None:
    served = f"{channels.url}/conda-forge"
    records = await solve(served, ["python 3.11.*", "demo-noarch"])
    mirror = (channels.root / "conda-forge").as_uri()
    pipeline = make_pipeline(
        tmp_path / "data",
        channels,
        mirrors={"conda-forge": mirror},
        session_packages=[],
        jupyterhub_version="",
    )
    lock = conda_lock(records, served, CONDA_FORGE)
    files = {"conda-lock.yml": lock, "environment.yml": ENVIRONMENT}
    env = built(await build_only(pipeline, str(make_repo(tmp_path / "locked", files))))
    await pipeline.finisher.aclose()
    assert conda_meta(env) == {f"{r.name.normalized}-{r.version}-{r.build}" for r in records}  # type: ignore[attr-defined]
    assert shell(env, "demo-noarch") == "hello from demo-noarch\n"
    assert shell(env, "python -c 'import six; print(six.__version__)'") == "1.16.0\n"


BAD = [
    pytest.param(
        "  - needs-future-python\n",
        "conda_solve",
        "needs-future-python",
        id="unsolvable",
    ),
    pytest.param("  - no-such-package\n", "conda_package", "no-such-package", id="unknown"),
    pytest.param(
        "  - writes-through-a-link\n",
        "build",
        "writes-through-a-link-1.0-h0_test.tar.bz2 writes outside its place: share/sub/planted",
        id="crafted-paths",
    ),
]


async def assert_failed_cleanly(
    pipeline: LaunchPipeline, repo: Path, reason: str, words: str
) -> Failed:
    events = await build_only(pipeline, str(repo))
    failed = events[-1]
    assert isinstance(failed, Failed), failed.to_wire()
    assert failed.reason == reason, failed.to_wire()
    assert words in failed.message and "Traceback" not in failed.message
    assert "\n" not in failed.message
    assert pipeline.store.list() == []
    for folder in ("envs", "tmp"):
        path = Path(pipeline.store.root) / folder
        assert not path.exists() or not any(path.iterdir()), folder
    return failed


@pytest.mark.parametrize(("extra", "reason", "words"), BAD)
async def test_bad_specs_fail_plainly_naming_the_culprit(
    pipeline: LaunchPipeline, tmp_path: Path, extra: str, reason: str, words: str
) -> None:
    text = ENVIRONMENT.replace("  - pip\n", extra)
    repo = make_repo(tmp_path / "bad", {"environment.yml": text})
    await assert_failed_cleanly(pipeline, repo, reason, words)


CHANNELS = [
    pytest.param(
        "  - conda-forge\n  - no-such-channel\n", "no-such-channel was not found", id="missing"
    ),
    pytest.param("  - defaults\n", "'defaults' is not allowed", id="defaults"),
    pytest.param(
        "  - http://127.0.0.1:9/conda-forge\n", "127.0.0.1 is on a private network", id="private"
    ),
    pytest.param("  - file:///etc\n", "this server's own disk", id="file"),
]


@pytest.mark.parametrize(("channel_lines", "words"), CHANNELS)
async def test_channels_refused_or_missing_fail_plainly(
    pipeline: LaunchPipeline, tmp_path: Path, channel_lines: str, words: str
) -> None:
    text = ENVIRONMENT.replace("  - conda-forge\n", channel_lines)
    repo = make_repo(tmp_path / "channel", {"environment.yml": text})
    await assert_failed_cleanly(pipeline, repo, "conda_channel", words)


async def test_a_private_channel_the_operator_allows(
    tmp_path: Path, channels: ChannelServer
) -> None:
    pipeline = make_pipeline(
        tmp_path / "data",
        channels,
        allow_private_channels=True,
        session_packages=[],
        jupyterhub_version="",
    )
    # a spec naming its channel obeys the same rules (conda-forge: the operator's mirror)
    text = "channels:\n  - {url}/conda-forge\ndependencies:\n  - python=3.11\n"
    text += "  - conda-forge::libdemo\n"
    repo = make_repo(tmp_path / "private", {"environment.yml": text.format(url=channels.url)})
    env = built(await build_only(pipeline, str(repo)))
    await pipeline.finisher.aclose()
    assert shell(env, "demo-answer") == "the answer is 42\n"


async def test_repository_code_in_the_pip_layer_gets_copies_not_hard_links(
    tmp_path: Path, channels: ChannelServer
) -> None:
    pipeline = make_pipeline(
        tmp_path / "data", channels, session_packages=[], jupyterhub_version=""
    )
    text = ENVIRONMENT.replace("      - six==1.16.0\n", "      - -e .\n")
    setup = 'from setuptools import setup\nsetup(name="mine", version="1", py_modules=["mine"])\n'
    files = {"environment.yml": text, "setup.py": setup, "mine.py": "VALUE = 7\n"}
    env = built(await build_only(pipeline, str(make_repo(tmp_path / "own", files))))
    await pipeline.finisher.aclose()
    # setup.py ran as the build's own uid: no file of the shared package cache is in reach
    assert (Path(env.path) / "lib" / "libdemo.so.1").stat().st_nlink == 1
    assert shell(env, "demo-answer") == "the answer is 42\n"


# -- redirects: every hop of every fetch is checked ------------------------------------


@contextlib.contextmanager
def redirecting(channels: ChannelServer, to: str) -> Iterator[str]:
    """A server on loopback (the operator's mirror in the tests below) that answers
    ``/repodata/<path>`` with a redirect to ``<to>conda-forge/<path>``, and
    ``/packages/<path>`` with the stand-in channel's repodata but a redirect for each
    package archive.  Yields its URL."""
    root = channels.root / "conda-forge"

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            kind, _, rest = self.path.lstrip("/").partition("/")
            local = root / rest
            if kind == "packages" and not rest.endswith((".conda", ".tar.bz2")):
                if not local.is_file():
                    self.send_error(404)
                    return
                data = local.read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self.send_response(302)
            self.send_header("Location", f"{to}conda-forge/{rest}")
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = LoopbackServer(Handler)
    try:
        yield server.url
    finally:
        server.close()


@pytest.fixture(scope="module")
def private_host(
    channels: ChannelServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NamespaceHost]:
    """The stand-in channel's repodata served again by a test host on a private address,
    its packages published on loopback (CEP-15's ``base_url``: the channel alias, which
    the operator allows): repodata fetched from the private host would build."""
    root = tmp_path_factory.mktemp("private")
    for subdir in ("linux-64", "noarch"):
        repodata = json.loads(
            (channels.root / "conda-forge" / subdir / "repodata.json").read_text()
        )
        repodata["repodata_version"] = 2
        repodata.setdefault("info", {})["base_url"] = f"{channels.url}/conda-forge/{subdir}/"
        (root / "conda-forge" / subdir).mkdir(parents=True)
        (root / "conda-forge" / subdir / "repodata.json").write_text(json.dumps(repodata))
    with namespace_host("10.254.0.0/16", root) as host:
        yield host


@pytest.mark.parametrize("what", ["repodata", "packages"])
async def test_a_mirror_redirecting_to_a_private_address_is_refused(
    tmp_path: Path, channels: ChannelServer, private_host: NamespaceHost, what: str
) -> None:
    """The operator's mirror (on loopback: allowed) redirects repodata, or each package,
    to a host on a private network: the build fails naming it, and nothing is built.
    rattler follows redirects itself; without the build's proxy (condaproxy.py) the
    repodata case solves from the private host."""
    with redirecting(channels, private_host.url) as url:
        pipeline = make_pipeline(
            tmp_path / "data",
            channels,
            mirrors={"mirrored": f"{url}/{what}"},
            pkgs_dir=str(tmp_path / "conda"),  # no archive cached yet
            session_packages=[],
            jupyterhub_version="",
        )
        text = "channels:\n  - mirrored\ndependencies:\n  - python=3.11\n  - libdemo\n"
        repo = make_repo(tmp_path / "redirected", {"environment.yml": text})
        try:
            failed = await assert_failed_cleanly(
                pipeline, repo, "conda_channel", private_host.address
            )
        finally:
            await pipeline.finisher.aclose()
    assert "not allowed" in failed.message and "private network" in failed.message


# -- the download budget and the package cache's eviction --------------------------------


async def test_a_build_over_the_download_limit_fails_before_downloading(
    tmp_path: Path, channels: ChannelServer
) -> None:
    pipeline = make_pipeline(
        tmp_path / "data",
        channels,
        pkgs_dir=str(tmp_path / "conda"),  # nothing cached: every package would download
        download_limit="100K",
        session_packages=[],
        jupyterhub_version="",
    )
    repo = make_repo(tmp_path / "big", {"environment.yml": ENVIRONMENT})
    try:
        failed = await assert_failed_cleanly(
            pipeline, repo, "conda_download_limit", "CondaBuilder.download_limit"
        )
    finally:
        await pipeline.finisher.aclose()
    assert "MiB of downloads" in failed.message and "(100 KiB" in failed.message
    archives = tmp_path / "conda" / "archives"
    assert not archives.exists() or not any(archives.iterdir())  # nothing downloaded


def extracted(pkgs: Path) -> list[str]:
    """What rattler extracted (without its own ``.cache.lock``)."""
    return sorted(p.name for p in (pkgs / "pkgs").iterdir() if not p.name.startswith("."))


def conda_builder(pipeline: LaunchPipeline) -> CondaBuilder:
    return next(m for m in pipeline.builder.members if isinstance(m, CondaBuilder))  # type: ignore[attr-defined]


async def test_the_package_cache_is_evicted_least_recently_used_never_in_use(
    tmp_path: Path, channels: ChannelServer
) -> None:
    pkgs = tmp_path / "conda"
    pipeline = make_pipeline(
        tmp_path / "data",
        channels,
        pkgs_dir=str(pkgs),
        pkgs_budget="1",  # one byte: everything not in use goes
        pkgs_min_idle=0.0,
        session_packages=[],
        jupyterhub_version="",
    )
    text = "channels:\n  - conda-forge\ndependencies:\n  - python=3.11\n  - libdemo\n"
    env = built(
        await build_only(pipeline, str(make_repo(tmp_path / "repo", {"environment.yml": text})))
    )
    await pipeline.finisher.aclose()
    archives = {p.name: next(p.iterdir()).name for p in (pkgs / "archives").iterdir()}
    assert len(archives) >= 2 and (pkgs / "pkgs" / "libdemo-1.0-h0_test").is_dir()
    libdemo = next(key for key, name in archives.items() if name.startswith("libdemo-"))

    builder = conda_builder(pipeline)
    with package_cache(pkgs).use(libdemo):  # a build linking it right now
        await asyncio.to_thread(builder.gc)
    assert [p.name for p in (pkgs / "archives").iterdir()] == [libdemo]
    assert extracted(pkgs) == ["libdemo-1.0-h0_test", "libdemo-1.0-h0_test.lock"]
    await asyncio.to_thread(builder.gc)
    assert list((pkgs / "archives").iterdir()) == [] and extracted(pkgs) == []
    # the environment keeps its files (hard links), and a new build downloads again
    assert shell(env, "demo-answer") == "the answer is 42\n"
