"""apt.txt: a system layer of Debian packages under every kind of environment.

Real apt-get, apt-cache and dpkg-deb against this host's apt sources (the Debian
mirror), real bubblewrap overlays, build steps and sessions as leased host uids.
The packages are small (graphviz and Debian's numpy, 14 packages, 11 MB) and their
``.deb`` files are kept in the test cache (``<test cache>/debs``) across runs; each
test makes its layers afresh in its own folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from build_helpers import build_only, built
from kernels import run_code
from nethosts import namespace_host
from repos import commit, make_repo, notebook
from session_helpers import launch, launcher_for, resolved, running_hub
from testcache import CACHE as TEST_CACHE

from binderbox.app import BinderboxApp
from binderbox.builders import aptdownload, aptget, aptreplay, run_in_env
from binderbox.builders.aptlayer import AptLayers
from binderbox.errors import BuildError
from binderbox.events import Building, Built, Event, Failed
from binderbox.pipeline import LaunchPipeline
from binderbox.runtime.host import SandboxHost
from binderbox.runtime.layout import base_sandbox, layer_use_lock
from binderbox.runtime.provision import make_reachable
from binderbox.sessions import SessionRequest
from binderbox.store.locks import FileLock

APT = "graphviz\n# plots need Debian's BLAS through an alternatives link\npython3-numpy\n"
POSTBUILD = """\
#!/bin/bash
set -e
echo 'digraph { a -> b }' | dot -Tpng > graph.png
/usr/bin/python3 -c 'import numpy; print(numpy.ones((2, 2)) @ numpy.ones(2))' > blas.txt
"""
NUMPY = "import numpy; print(numpy.ones((2, 2)) @ numpy.ones(2))"
BLAS = "/usr/lib/x86_64-linux-gnu/libblas.so.3"


@pytest.fixture
async def pipeline(tmp_path: Path) -> AsyncIterator[LaunchPipeline]:
    for program in ("/usr/bin/dot", BLAS):  # else the layer would prove nothing
        assert not os.path.lexists(program), f"this host has {program} installed"
    app = BinderboxApp(data_dir=str(tmp_path / "data"))
    app.config.PythonBuilder.cache_dir = str(TEST_CACHE / "uv")
    app.config.AptLayers.root = str(tmp_path / "layers")
    app.config.AptLayers.debs_dir = str(TEST_CACHE / "debs")
    made = app.make_pipeline(allow_local=True)
    yield made
    await made.finisher.aclose()


def log(events: list[Event]) -> str:
    return "\n".join(e.message for e in events if isinstance(e, Building))


def layers_of(env: Built) -> list[str]:
    info = json.loads((Path(env.path) / ".binderbox" / "build.json").read_text())
    layers: list[str] = info["system_layers"]
    return layers


def sh(env: Built, script: str) -> str:
    result = run_in_env(Path(env.path), ["/bin/sh", "-c", script])
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


async def test_graphviz_and_blas_in_build_and_session(
    pipeline: LaunchPipeline, tmp_path: Path
) -> None:
    repo = make_repo(
        tmp_path / "repo",
        {"apt.txt": APT, "postBuild": POSTBUILD, "index.ipynb": notebook("1")},
        executable=("postBuild",),
    )
    env = built(await build_only(pipeline, str(repo)))
    # postBuild (a build step, as the build's own uid) used both; its files are kept
    overlay = Path(env.path) / ".binderbox" / "home-overlay"
    assert (overlay / "graph.png").read_bytes()[:4] == b"\x89PNG"
    assert (overlay / "blas.txt").read_text().strip() == "[2. 2.]"
    # the session layout shows the layer too: dot with its plugins, numpy with BLAS
    png = sh(env, "echo 'digraph { x -> y }' | dot -Tpng | head -c 4 | od -An -c")
    assert png.split() == ["211", "P", "N", "G"]
    assert sh(env, f"/usr/bin/python3 -c '{NUMPY}'").strip() == "[2. 2.]"
    assert sh(env, f"readlink -f {BLAS}").strip().endswith("/blas/libblas.so.3.11.0")
    assert (
        "Fontconfig error"
        not in run_in_env(Path(env.path), ["/bin/sh", "-c", "echo 'digraph{a}' | dot -Tsvg"]).stderr
    )  # the host's /etc/fonts of installed fontconfig is in the layer
    # the layer is the service's: no sandbox uid can change it
    (layer,) = layers_of(env)
    for folder, dirs, files in os.walk(layer):
        for name in [*dirs, *files]:
            info = os.lstat(Path(folder, name))
            assert info.st_uid == os.geteuid(), Path(folder, name)
            assert stat.S_ISLNK(info.st_mode) or not info.st_mode & 0o022, Path(folder, name)

    # a session through the hub: the kernel runs dot
    content = make_repo(tmp_path / "content", {"index.ipynb": notebook("1")})
    async with running_hub(tmp_path / "hub") as hub:
        request = SessionRequest(
            "env-apt",
            Path(env.path),
            content,
            resolved("apt"),
            launch_host=hub.public_url,
            hold_files=[layer_use_lock(Path(layer))],  # what the pipeline hands over
        )
        _, ready = await launch(launcher_for(hub), request)
        # while the session runs, its layer is never evicted, whatever the budget
        evicting = AptLayers(
            root=str(tmp_path / "layers"), debs_dir=str(TEST_CACHE / "debs"), budget="1"
        )
        evicting.min_idle = 0.0
        assert await asyncio.to_thread(evicting.gc) == []
        assert Path(layer).is_dir()
        code = (
            "import subprocess\n"
            "dot = subprocess.run(['dot', '-Tpng'], input=b'digraph{a->b}', capture_output=True)\n"
            "print(dot.stdout[:4], subprocess.run(['/usr/bin/python3', '-c', "
            f"{NUMPY!r}], capture_output=True, text=True).stdout.strip())"
        )
        assert (await run_code(ready.url, ready.token, code)).strip() == "b'\\x89PNG' [2. 2.]"


async def test_layer_shared_by_environments_and_rebuilt_when_apt_txt_changes(
    pipeline: LaunchPipeline, tmp_path: Path
) -> None:
    first = make_repo(
        tmp_path / "first", {"apt.txt": APT, "requirements.txt": "six\n", "a.ipynb": notebook()}
    )
    second = make_repo(tmp_path / "second", {"apt.txt": APT, "b.ipynb": notebook()})
    one = built(await build_only(pipeline, str(first)))
    events = await build_only(pipeline, str(second))
    two = built(events)
    assert one.image_name != two.image_name
    assert "Reusing the system packages layer for: graphviz python3-numpy" in log(events)
    assert layers_of(one) == layers_of(two)

    # a commit that edits only a notebook reuses the environment
    commit(second, {"b.ipynb": notebook("2 + 2")})
    assert built(await build_only(pipeline, str(second))).cached

    # apt.txt changes: a new layer and a new environment without numpy
    commit(second, {"apt.txt": "graphviz\n"})
    three = built(await build_only(pipeline, str(second)))
    assert not three.cached and three.image_name != two.image_name
    assert layers_of(three) != layers_of(two)
    assert sh(three, "dot -V 2>&1").startswith("dot - graphviz version")
    missing = run_in_env(Path(three.path), ["/usr/bin/python3", "-c", "import numpy"])
    assert missing.returncode != 0 and "No module named 'numpy'" in missing.stderr


async def test_unknown_package_is_a_plain_failure_leaving_nothing(
    pipeline: LaunchPipeline, tmp_path: Path
) -> None:
    repo = make_repo(
        tmp_path / "repo", {"apt.txt": "graphviz\nlibnosuch-thing9\n", "a.ipynb": notebook()}
    )
    events = await build_only(pipeline, str(repo))
    failed = events[-1]
    assert isinstance(failed, Failed), failed.to_wire()
    assert "libnosuch-thing9" in failed.message and "graphviz" not in failed.message
    assert "Ubuntu" in failed.message and "Traceback" not in failed.message
    layers = tmp_path / "layers"
    assert not [p for p in layers.iterdir() if p.name not in ("tmp", "locks", "apt")]
    assert not list((layers / "tmp").iterdir())
    assert not list(Path(pipeline.store.root).glob("envs/*"))


def test_layer_key_is_the_host_package_set_and_the_list(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    layers = AptLayers(root=str(tmp_path / "layers"))
    key = layers.key(["graphviz", "python3-numpy"])
    assert layers.key(["python3-numpy", "graphviz", "graphviz"]) == key  # sorted, once
    assert layers.key(["graphviz"]) != key
    identity = layers.identity()
    host = aptget.installed_text()
    monkeypatch.setattr(aptget, "installed_text", lambda: (*host, "newpkg:amd64=1.0"))
    monkeypatch.setattr("binderbox.builders.aptlayer.DPKG_STATUS", tmp_path / "status")
    assert layers.identity() != identity and layers.key(["graphviz", "python3-numpy"]) != key
    with pytest.raises(BuildError, match="not a package name: -o"):
        layers.key(["graphviz", "-o"])  # nothing reaches apt's command line as an option


def test_alternatives_are_read_from_postinst_lines() -> None:
    script = """\
set -e
update-alternatives --install /usr/bin/editor editor /usr/bin/vim.basic 30 \\
    --slave /usr/share/man/man1/editor.1.gz editor.1.gz /usr/share/man/man1/vim.1.gz
if [ "$1" = configure ]; then
  update-alternatives --install /usr/lib/$ARCH/libblas.so.3 libblas.so.3 /x 10
fi
"""
    (alt,) = aptreplay.parse_alternatives(script)
    assert alt.name == "editor" and alt.priority == 30
    assert alt.links == (
        ("/usr/bin/editor", "editor", "/usr/bin/vim.basic"),
        ("/usr/share/man/man1/editor.1.gz", "editor.1.gz", "/usr/share/man/man1/vim.1.gz"),
    )


async def test_a_list_over_the_size_limit_fails_before_anything_is_kept(tmp_path: Path) -> None:
    layers = AptLayers(
        root=str(tmp_path / "layers"), debs_dir=str(TEST_CACHE / "debs"), size_limit="1M"
    )
    with pytest.raises(BuildError, match=r"take .* installed, more than this service allows"):
        async for _line in layers.ensure(["graphviz", "python3-numpy"], SandboxHost()):
            pass
    assert not layers.published(["graphviz", "python3-numpy"])
    assert not list((tmp_path / "layers" / "tmp").iterdir())
    assert not list((TEST_CACHE / "debs").glob(".download-*"))


async def test_debian_r_with_irkernel_runs_from_a_layer(tmp_path: Path) -> None:
    """R's own system layer (what RBuilder asks for): R finds its packages only with
    /etc/R/Renviron, which r-base-core's script makes from a template (replayed), and
    solves through LAPACK/BLAS alternatives links."""
    names = ["r-base-core", "r-cran-irkernel"]
    layers = AptLayers(root=str(tmp_path / "layers"), debs_dir=str(TEST_CACHE / "debs"))
    lines = [line async for line in layers.ensure(names, SandboxHost())]
    assert "Configuration made from the packages' templates: /etc/R/Renviron" in lines
    tree = layers.tree(names)
    assert tree is not None
    code = "library(IRkernel); cat(solve(matrix(c(2, 0, 0, 4), 2)) %*% c(2, 4), '\\n')"
    box = base_sandbox([], None, [tree])
    argv = box.argv(["/usr/bin/Rscript", "-e", code])
    result = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=120, check=False
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["1", "1"]


async def test_packages_shipping_bin_and_alternatives_with_slaves(tmp_path: Path) -> None:
    """netcat-openbsd ships /bin/nc.openbsd (Debian 12 packages are not merged-/usr
    yet; the layer is) and makes /bin/nc and its slave /bin/netcat alternatives."""
    assert not os.path.lexists("/usr/bin/nc"), "this host has nc installed"
    layers = AptLayers(root=str(tmp_path / "layers"), debs_dir=str(TEST_CACHE / "debs"))
    lines = [line async for line in layers.ensure(["netcat-openbsd"], SandboxHost())]
    assert "Alternatives: nc" in lines
    tree = layers.tree(["netcat-openbsd"])
    assert tree is not None and not (tree / "bin").exists()
    box = base_sandbox([], None, [tree])
    script = "readlink -f /bin/netcat; nc -h 2>&1 | head -1"
    argv = box.argv(["/bin/sh", "-c", script])
    result = await asyncio.to_thread(
        subprocess.run, argv, capture_output=True, text=True, timeout=60, check=False
    )
    link, usage = result.stdout.splitlines()
    assert link == "/usr/bin/nc.openbsd" and "OpenBSD netcat" in usage, result.stderr


async def test_a_registry_lists_the_hosts_plugins_and_the_layers(tmp_path: Path) -> None:
    """webp-pixbuf-loader adds a gdk-pixbuf loader: the loader cache made for the layer
    lists it and every loader the host already has."""
    loaders = Path("/usr/lib/x86_64-linux-gnu/gdk-pixbuf-2.0/2.10.0")
    if not (loaders / "loaders.cache").is_file():
        pytest.skip("this host has no gdk-pixbuf loaders of its own")
    layers = AptLayers(root=str(tmp_path / "layers"), debs_dir=str(TEST_CACHE / "debs"))
    lines = [line async for line in layers.ensure(["webp-pixbuf-loader"], SandboxHost())]
    assert any(line.startswith("Generating the gdk-pixbuf loaders") for line in lines)
    tree = layers.tree(["webp-pixbuf-loader"])
    assert tree is not None
    cache = (tree / str(loaders).lstrip("/") / "loaders.cache").read_text()
    host = [path.name for path in (loaders / "loaders").glob("*.so")]
    assert host and all(f"/{name}" in cache for name in host)
    assert "/libpixbufloader-webp.so" in cache
    assert sorted(p.name for p in tree.parent.iterdir()) == ["layer.json", "tree"]


async def test_a_name_apt_would_read_as_a_pattern_is_refused_naming_it() -> None:
    """``graphvi.`` is no package: apt would take it as a regex matching dozens."""
    with pytest.raises(BuildError, match=r"do not have: graphvi\. \(apt would read"):
        await aptget.closure(aptget.Apt(), ["graphvi."])
    assert [p.name for p in await aptget.closure(aptget.Apt(), ["libc6"])] == []  # the host's


# -- what apt brings in is unprivileged, policed, and stripped --------------------------

DEMO = "bbx-setuid-demo"
CONTROL = f"""Package: {DEMO}
Version: 1.0
Architecture: all
Maintainer: binderbox tests <tests@binderbox.invalid>
Description: a package made by the tests, with set-uid, set-gid and writable files
"""
DANGEROUS = stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWGRP | stat.S_IWOTH


def make_deb(where: Path, *, device: bool = False) -> Path:
    """A real .deb (``dpkg-deb --build``, owned by root inside) whose files carry
    set-uid, set-gid, sticky and group/other write bits; with a device node if asked."""
    tree = where / "tree"
    (tree / "DEBIAN").mkdir(parents=True)
    (tree / "DEBIAN" / "control").write_text(CONTROL)
    files = {
        "usr/bin/bbx-setuid": 0o4755,
        "usr/bin/bbx-setgid": 0o2755,
        "usr/share/bbx/everyone-writes": 0o666,
    }
    for name, mode in files.items():
        path = tree / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("#!/bin/sh\necho demo\n")
        path.chmod(mode)
    (tree / "usr/share/bbx/sticky").mkdir()
    (tree / "usr/share/bbx/sticky").chmod(0o3777)
    if device:
        os.mknod(tree / "usr/share/bbx/null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    deb = where / f"{DEMO}_1.0_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", str(tree), str(deb)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return deb


async def test_set_uid_bits_owners_and_device_nodes_never_reach_a_layer(tmp_path: Path) -> None:
    deb = make_deb(tmp_path / "plain")
    listing = await asyncio.to_thread(
        subprocess.run, ["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True
    )
    assert "-rwsr-xr-x root/root" in listing.stdout  # the archive has them
    tree = tmp_path / "layer"
    tree.mkdir()
    await aptget.extract([deb], tree)
    seen = 0
    for folder, dirs, files in os.walk(tree):
        for name in [*dirs, *files]:
            info = os.lstat(Path(folder, name))
            assert not info.st_mode & DANGEROUS, (name, oct(info.st_mode))
            assert info.st_uid == os.geteuid() and info.st_gid == os.getegid(), name
            seen += 1
    assert seen >= 7
    assert os.access(tree / "usr/bin/bbx-setuid", os.X_OK)  # still a program
    assert (tree / "usr/share/bbx/everyone-writes").read_text().startswith("#!/bin/sh")

    with_device = make_deb(tmp_path / "device", device=True)
    other = tmp_path / "other"
    other.mkdir()
    with pytest.raises(BuildError, match=r"device or special file \(\./usr/share/bbx/null\)"):
        await aptget.extract([with_device], other)
    assert not (other / "usr/share/bbx/null").exists()


def flat_repository(root: Path, deb: Path) -> None:
    """An apt repository of ``deb`` in ``root`` (flat: ``deb [trusted=yes] URL ./``)."""
    import hashlib

    root.mkdir()
    (root / deb.name).write_bytes(deb.read_bytes())
    data = deb.read_bytes()
    packages = CONTROL + (
        f"Filename: ./{deb.name}\nSize: {len(data)}\nSHA256: {hashlib.sha256(data).hexdigest()}\n\n"
    )
    (root / "Packages").write_text(packages)
    digest = hashlib.sha256(packages.encode()).hexdigest()
    release = f"Origin: binderbox-tests\nSHA256:\n {digest} {len(packages)} Packages\n"
    (root / "Release").write_text(release)


async def test_downloads_run_unprivileged_under_the_build_network(tmp_path: Path) -> None:
    """An apt source on a private address (a test host on 10.254/16): the service's own
    apt (root, on the host) reads its index, but the download runs in a build sandbox
    whose network refuses private destinations, so it fails, naming the host, and
    nothing joins the .deb cache.  (Run as root on the host it would download.)"""
    make_reachable(tmp_path)
    flat_repository(tmp_path / "repo", make_deb(tmp_path / "deb"))
    with namespace_host("10.254.0.0/16", tmp_path / "repo") as host:
        (tmp_path / "lists" / "partial").mkdir(parents=True)
        (tmp_path / "sources.list").write_text(f"deb [trusted=yes] {host.url} ./\n")
        options = [
            f"Dir::Etc::SourceList={tmp_path / 'sources.list'}",
            "Dir::Etc::SourceParts=/nonexistent",
            f"Dir::State::Lists={tmp_path / 'lists'}",
            f"Dir::Cache::pkgcache={tmp_path / 'pkgcache.bin'}",
            f"Dir::Cache::srcpkgcache={tmp_path / 'srcpkgcache.bin'}",
        ]
        apt = aptget.Apt(options=tuple(x for option in options for x in ("-o", option)))
        code, out = await aptget.run(apt.apt_get("update", "-q"))
        assert code == 0, out
        (package,) = await aptget.closure(apt, [DEMO])
        debs = tmp_path / "debs"
        debs.mkdir()
        with pytest.raises(BuildError, match="could not be downloaded") as failure:
            await aptdownload.download(apt, [package], debs, SandboxHost())
    assert host.address in failure.value.user_message
    assert failure.value.reason == "apt_download"
    assert list(debs.iterdir()) == []


async def test_layers_are_evicted_least_recently_used_and_rebuilt_when_needed(
    pipeline: LaunchPipeline, tmp_path: Path
) -> None:
    repo = make_repo(tmp_path / "repo", {"apt.txt": "netcat-openbsd\n", "a.ipynb": notebook()})
    env = built(await build_only(pipeline, str(repo)))
    (layer,) = layers_of(env)
    await pipeline.finisher.drain()  # its bytecode compiled: the environment is idle
    where = {"root": str(tmp_path / "layers"), "debs_dir": str(TEST_CACHE / "debs")}
    layers = AptLayers(**where, budget="1", min_idle=0.0)
    assert AptLayers(**where, min_idle=0.0).gc() == []  # under the default 20G
    with FileLock.acquire(layer_use_lock(Path(layer)), shared=True):  # a session has it
        assert await asyncio.to_thread(layers.gc) == []
    assert await asyncio.to_thread(layers.gc) == [Path(layer).parent.name]
    assert not Path(layer).exists()
    assert sorted(p.name for p in (tmp_path / "layers").iterdir()) == ["apt", "locks", "tmp"]
    # the environment named it: its next launch builds it again, layer and all
    again = built(await build_only(pipeline, str(repo)))
    assert not again.cached and Path(layers_of(again)[0]).is_dir()
    assert "OpenBSD netcat" in sh(again, "nc -h 2>&1 | head -1")
