"""Image mode against a real registry: Debian's docker-registry (Distribution 2.8) on a
loopback port, checked with real clients (skopeo, umoci).

A repository is built and pushed by ``binderbox build --push``; skopeo sees the digests
binderbox recorded; the image pulled back (skopeo copy docker:// -> oci:) and unpacked by
umoci is a root filesystem whose ``jupyter server`` starts under bubblewrap and runs
code.  A second environment shares the base and interpreter layers; pushing again
sends no blob; the pipeline skips a build the registry has the image of; Basic
(htpasswd) and Bearer (token service) authentication over TLS; bad registries are plain
errors.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from build_helpers import build_only, cli
from envs import built_env
from fixtures_git import free_port
from kernels import run_code
from registry_helpers import REPOSITORY, LocalRegistry, skopeo
from repos import make_repo
from testcache import CACHE as TEST_CACHE
from tornado.httpclient import AsyncHTTPClient, HTTPClientError

from binderbox.app import BinderboxApp
from binderbox.errors import BinderboxError
from binderbox.events import Building, Built
from binderbox.images import ImageRegistry, RegistryAuthError
from binderbox.images.layout import ImageLayout
from binderbox.images.registry import RegistryClient, RegistryError
from binderbox.images.target import image_layers
from binderbox.pipeline import LaunchPipeline
from binderbox.runtime.sandbox import bwrap_path

pytestmark = pytest.mark.slow
UV_CACHE = TEST_CACHE / "uv"
FILES = {"requirements.txt": "six==1.16.0\n"}


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    running = LocalRegistry(tmp_path_factory.mktemp("registry"))
    yield running
    running.close()


@pytest.fixture(scope="module")
def pushed(registry: LocalRegistry, tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """A repository built and pushed by the CLI: its data folder, repo, key and record."""
    root = tmp_path_factory.mktemp("pushed")
    repo = make_repo(root / "repo", FILES)
    data = root / "data"
    target = f"{registry.host}/{REPOSITORY}"
    result = cli(data, "build", str(repo), "--json", "--push", target, "--insecure")
    assert result.returncode == 0, result.stderr + result.stdout
    events = [json.loads(line) for line in result.stdout.splitlines()]
    key = next(e["imageName"] for e in events if e["phase"] == "built")
    assert events[-1]["phase"] == "building" and "Pushed" in events[-1]["message"]
    record = json.loads((data / "images" / "pushed" / f"{key}.json").read_text())
    return {"data": str(data), "repo": str(repo), "key": key, "record": json.dumps(record)}


def test_skopeo_sees_the_digests_binderbox_recorded(
    registry: LocalRegistry, pushed: dict[str, str]
) -> None:
    record = json.loads(pushed["record"])
    image = f"docker://{registry.host}/{REPOSITORY}:{pushed['key']}"
    assert record["image"] == f"{registry.host}/{REPOSITORY}:{pushed['key']}"
    inspected = skopeo(registry, "inspect", image)
    assert inspected.returncode == 0, inspected.stderr
    info = json.loads(inspected.stdout)
    assert info["Digest"] == record["manifest_digest"]
    assert info["Layers"] == record["layers"]
    assert len(record["layers"]) == 3  # base, the interpreter, the environment
    raw = skopeo(registry, "inspect", "--raw", image).stdout.encode()
    assert f"sha256:{hashlib.sha256(raw).hexdigest()}" == record["manifest_digest"]
    config = json.loads(skopeo(registry, "inspect", "--config", image).stdout)
    assert config["rootfs"]["diff_ids"] == record["diff_ids"]
    assert config["config"]["User"] == "1000:1000"


async def _serve_rootfs(bundle: Path, home: Path) -> None:
    """``jupyter server`` of the unpacked image under bubblewrap: the root filesystem as
    /, the image's variables and working folder (umoci's runtime config), uid 1000."""
    runtime = json.loads((bundle / "config.json").read_text())["process"]
    port, token = free_port(), secrets.token_hex(16)
    env = [arg for var in runtime["env"] for arg in ("--setenv", *var.split("=", 1))]
    argv = [
        bwrap_path(), "--ro-bind", str(bundle / "rootfs"), "/", "--proc", "/proc",
        "--dev", "/dev", "--tmpfs", "/tmp", "--bind", str(home), "/home/jovyan",
        "--unshare-user", "--uid", "1000", "--gid", "1000", "--unshare-pid", "--unshare-ipc",
        "--die-with-parent", "--clearenv", *env, "--chdir", runtime["cwd"],
        "jupyter", "server", "--ip=127.0.0.1", f"--port={port}",
        f"--IdentityProvider.token={token}",
    ]  # fmt: skip
    log = home.parent / "server.log"
    with log.open("wb") as out:
        proc = await asyncio.create_subprocess_exec(*argv, stdout=subprocess.DEVNULL, stderr=out)
    base = f"http://127.0.0.1:{port}/"
    try:
        for _ in range(300):
            try:
                await AsyncHTTPClient().fetch(f"{base}api/status?token={token}")
                break
            except (OSError, HTTPClientError):
                assert proc.returncode is None, log.read_text()
                await asyncio.sleep(0.2)
        assert (
            await run_code(base, token, "import sys; print(sys.prefix, 6 * 7)") == "/srv/env 42\n"
        )
    finally:
        proc.terminate()
        await proc.wait()


def _pull_and_unpack(registry: LocalRegistry, key: str, folder: Path) -> None:
    """skopeo copy docker:// -> oci:, then umoci unpack into ``folder/bundle``."""
    source = f"docker://{registry.host}/{REPOSITORY}:{key}"
    pulled = skopeo(registry, "copy", "-q", source, f"oci:{folder / 'oci'}:{key}")
    assert pulled.returncode == 0, pulled.stderr
    unpack = subprocess.run(
        ["umoci", "unpack", "--image", f"{folder / 'oci'}:{key}", str(folder / "bundle")],
        capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert unpack.returncode == 0, unpack.stderr


async def test_the_pulled_image_unpacks_to_a_root_that_runs_jupyter(
    registry: LocalRegistry, pushed: dict[str, str], tmp_path: Path
) -> None:
    _pull_and_unpack(registry, pushed["key"], tmp_path)
    rootfs = tmp_path / "bundle" / "rootfs"
    assert (rootfs / "srv/env/bin/jupyter").is_file() and (rootfs / "etc/passwd").is_file()
    assert (rootfs / "home/jovyan").stat().st_uid == 1000
    home = tmp_path / "home"
    home.mkdir()
    await _serve_rootfs(tmp_path / "bundle", home)


def _publish(
    registry: LocalRegistry, env: Path, key: str, layout: Path, **settings: object
) -> ImageRegistry:
    images = ImageRegistry(url=registry.host, prefix=REPOSITORY, layout_dir=str(layout), **settings)
    images.publish(env, key)
    return images


def test_a_second_environment_shares_the_base_layer_and_pushing_again_sends_nothing(
    registry: LocalRegistry, pushed: dict[str, str], tmp_path: Path
) -> None:
    first = json.loads(pushed["record"])
    layout = Path(pushed["data"]) / "images"
    other = built_env("packaging==23.2", session=False, python="3.10")  # the repo's Python
    images = _publish(registry, other, "second-env", layout, insecure=True, chunk_size=1 << 20)
    second = ImageLayout(layout, parent=images).pushed("second-env")
    assert second is not None
    assert second["layers"][:2] == first["layers"][:2]  # base and interpreter: same digests
    assert second["layers"][2] != first["layers"][2]
    assert set(second["uploaded"]) == {second["layers"][2], second["config_digest"]}
    assert '"PATCH /v2/' in registry.log()  # over 1 MiB: sent in chunks
    before = registry.uploads_started()
    env_path = json.loads(cli(Path(pushed["data"]), "envs", "show", pushed["key"]).stdout)["path"]
    done = images.publish(Path(env_path), pushed["key"])
    assert done.uploaded == [] and done.digest == first["manifest_digest"]
    assert registry.uploads_started() == before  # the registry saw no upload start


def test_layers_do_not_depend_on_mtimes_or_the_host_path(tmp_path: Path) -> None:
    env = built_env("packaging==23.2", session=False)
    copy = tmp_path / "copy"
    shutil.copytree(env, copy, symlinks=True, copy_function=shutil.copy)  # new mtimes
    os.utime(copy / "pyvenv.cfg", (1, 1))
    layouts = [ImageLayout(tmp_path / name) for name in ("one", "two")]
    first = layouts[0].layer(image_layers(env)[-1])
    assert layouts[1].layer(image_layers(copy)[-1]) == first
    (copy / "pyvenv.cfg").chmod(0o600)  # a mode is content: another digest
    assert ImageLayout(tmp_path / "three").layer(image_layers(copy)[-1]).digest != first.digest


def test_the_layout_keeps_only_its_recent_images(tmp_path: Path) -> None:
    env = built_env("packaging==23.2", session=False)
    layout = ImageLayout(tmp_path / "layout", keep=1)
    first = layout.write("one", image_layers(env), {}, ["true"])
    second = layout.write("two", image_layers(env), {"other": "label"}, ["true"])
    index = json.loads((tmp_path / "layout" / "index.json").read_text())
    assert [m["digest"] for m in index["manifests"]] == [second.manifest]
    assert not layout.blob_path(first.manifest).exists()
    assert layout.blob_path(second.layers[-1].digest).exists()  # shared layers stay
    assert sorted(p.name for p in layout.blob_dir.iterdir()) == sorted(
        d.split(":")[1] for d in [*second.blobs(), second.manifest]
    )


async def test_the_pipeline_skips_a_build_the_registry_has(
    registry: LocalRegistry, pushed: dict[str, str], tmp_path: Path
) -> None:
    app = BinderboxApp(data_dir=str(tmp_path / "data"))
    app.config.PythonBuilder.cache_dir = str(UV_CACHE)
    app.config.ImageRegistry.url = registry.host
    app.config.ImageRegistry.prefix = REPOSITORY
    app.config.ImageRegistry.insecure = True
    pipeline: LaunchPipeline = app.make_pipeline(allow_local=True)
    events = await build_only(pipeline, pushed["repo"])
    assert not [e for e in events if isinstance(e, Building)]
    last = events[-1]
    assert isinstance(last, Built) and last.cached and last.image_name == pushed["key"]
    assert "Found image" in last.message and pipeline.store.list() == []
    # a repository the registry lacks is built, then pushed before `built`
    repo = make_repo(tmp_path / "new", {"requirements.txt": "packaging==23.2\n"})
    events = await build_only(pipeline, str(repo))
    assert isinstance(events[-1], Built) and not events[-1].cached
    assert any("Pushed" in e.message for e in events if isinstance(e, Building))
    inspected = skopeo(
        registry, "inspect", f"docker://{registry.host}/{REPOSITORY}:{events[-1].image_name}"
    )
    assert inspected.returncode == 0, inspected.stderr
    await pipeline.finisher.aclose()


async def test_image_sessions_push_an_environment_only_the_store_has(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    """Built before sessions ran images: the store has it, the registry not; a launch
    that runs images pushes it first (and asks the registry before the store)."""
    repo = make_repo(tmp_path / "repo", {"requirements.txt": "packaging==23.2\n", "x": "1"})
    app = BinderboxApp(data_dir=str(tmp_path / "data"))
    app.config.PythonBuilder.cache_dir = str(UV_CACHE)
    plain: LaunchPipeline = app.make_pipeline(allow_local=True)  # no registry: store only
    built = (await build_only(plain, str(repo)))[-1]
    assert isinstance(built, Built) and not built.cached
    await plain.finisher.aclose()
    app.config.ImageRegistry.url = registry.host
    app.config.ImageRegistry.prefix = f"{REPOSITORY}-sessions"
    app.config.ImageRegistry.insecure = True
    pipeline: LaunchPipeline = app.make_pipeline(allow_local=True)
    pipeline.image_sessions = True
    events = await build_only(pipeline, str(repo))
    pushed = [e.message for e in events if isinstance(e, Building) and "Pushed" in e.message]
    assert len(pushed) == 1, [e.message for e in events]
    assert isinstance(events[-1], Built) and events[-1].cached
    image = f"docker://{registry.host}/{REPOSITORY}-sessions:{built.image_name}"
    assert skopeo(registry, "inspect", image).returncode == 0
    again = await build_only(pipeline, str(repo))  # now the registry's image is found
    assert [e.message for e in again if isinstance(e, Built)] == [
        f"Found image {image.removeprefix('docker://')} in the registry."
    ]
    await pipeline.finisher.aclose()


@pytest.mark.parametrize("auth", ["htpasswd", "token"])
def test_pushes_over_tls_with_credentials(
    auth: str, pushed: dict[str, str], tmp_path: Path
) -> None:
    secured = LocalRegistry(tmp_path / "registry", auth=auth, tls=True)
    try:
        target = f"{secured.host}/{REPOSITORY}"
        data = Path(pushed["data"])
        ca = f"--ImageRegistry.ca_file={secured.cert}"
        good = {"REGISTRY_AUTH_FILE": str(secured.auth_file(tmp_path))}
        result = cli(data, "build", pushed["repo"], "--push", target, ca, env=good)
        assert result.returncode == 0, result.stderr
        assert "Pushed" in result.stderr
        if secured.tokens is not None:  # the registry sent us to its token service
            assert any("scope=repository" in r for r in secured.tokens.requests)
        creds = ["--creds", "pusher:s3cret-pass"]
        image = f"docker://{target}:{pushed['key']}"
        info = json.loads(skopeo(secured, "inspect", *creds, image).stdout)
        assert info["Digest"] == json.loads(pushed["record"])["manifest_digest"]
        bad = {"REGISTRY_AUTH_FILE": str(secured.auth_file(tmp_path, password="wrong"))}
        refused = cli(data, "build", pushed["repo"], "--push", target, ca, env=bad)
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert "refused the credentials" in refused.stderr
        nobody = cli(
            data,
            "build",
            pushed["repo"],
            "--push",
            target,
            ca,
            env={"REGISTRY_AUTH_FILE": "/nonexistent"},
        )
        assert nobody.returncode == 1 and "Traceback" not in nobody.stderr
        untrusted = cli(data, "build", pushed["repo"], "--push", target, env=good)
        assert untrusted.returncode == 1 and "TLS certificate is not trusted" in untrusted.stderr
    finally:
        secured.close()


def test_bad_registries_are_plain_errors(pushed: dict[str, str]) -> None:
    data = Path(pushed["data"])
    closed = f"127.0.0.1:{free_port()}/{REPOSITORY}"
    cases = [
        ([closed, "--insecure"], "Cannot reach the registry"),
        (["not a registry"], "does not start with a registry host"),
        (["registry.example.org/Upper/Case"], "not a valid repository name"),
        (["registry.example.org/binder/envs", "--insecure"], "not on loopback"),
        (["http://registry.example.org/binder/envs"], "not on loopback"),
    ]
    for args, words in cases:
        result = cli(data, "build", pushed["repo"], "--push", *args)
        assert result.returncode == 1, (args, result.stderr)
        assert words in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_plain_http_is_refused_for_other_hosts_before_any_request() -> None:
    images = ImageRegistry(url="10.1.2.3:5000", insecure=True)
    with pytest.raises(Exception, match="not on loopback"):
        images.exists("abc")
    assert ImageRegistry(url="[::1]:5000", insecure=True).client().secure is False
    with pytest.raises(RegistryAuthError):
        ImageRegistry(url="127.0.0.1:5000", auth_file=__file__).client()


def test_an_environment_that_is_not_there_is_a_plain_error(
    registry: LocalRegistry, tmp_path: Path
) -> None:
    images = ImageRegistry(url=registry.host, insecure=True, layout_dir=str(tmp_path / "l"))
    with pytest.raises(BinderboxError, match="could not be written"):
        images.publish(tmp_path / "no-such-env", "abc")


def test_an_upload_location_over_plain_http_is_refused_before_anything_is_sent() -> None:
    """An HTTPS registry that answers with an ``http://`` upload location on its own host
    (a TLS-terminating balancer does) would have the credentials sent in clear: refused
    before any connection (nothing is sent to the example host); the same host over HTTPS,
    with or without its default port, is the registry."""
    client = RegistryClient("registry.example.org", credentials=("pusher", "secret"))
    with pytest.raises(RegistryError, match="sent an upload elsewhere"):
        client.request(
            "PUT", "http://registry.example.org/v2/x/blobs/uploads/1", scope="repository:x:push"
        )
    client._same_registry("https://registry.example.org:443/v2/x/blobs/uploads/1")
    client._same_registry("https://registry.example.org/v2/x/blobs/uploads/1")
    with pytest.raises(RegistryError):
        client._same_registry("https://registry.example.org:8443/v2/x/blobs/uploads/1")
