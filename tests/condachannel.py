"""A local stand-in for conda-forge: conda packages made at test time, indexed by rattler.

conda-forge cannot be reached from this machine, so tests solve and install
from a channel they make themselves, served over loopback HTTP (or read as a
``file://`` channel).  Every package is a real conda package (``.tar.bz2``:
``info/index.json``, ``info/paths.json``, ``info/files``, the payload) and the
channel is indexed with rattler's own indexer (``rattler.index.index_fs``),
so solving and installing go through the same code paths as with
conda-forge:

* ``libdemo``: a shared library compiled here with the host's gcc
  (``lib/libdemo.so.1``) and a program linking it (``bin/demo-answer``), whose
  run path names the *build prefix* (:data:`PLACEHOLDER`), as conda-build
  leaves it; rattler rewrites it to the environment's prefix at install
  (binary prefix replacement), and a text file naming the build prefix too
  (text replacement);
* ``demo-noarch``: a ``noarch: python`` package with an entry point;
* ``python``: the host's pyenv CPython repackaged as a relocatable conda
  package (its files naming pyenv's prefix marked as prefix placeholders,
  as conda-build does for any build prefix), without site-packages, tests,
  IDLE and Tk.  Built once per machine and interpreter under the suite's
  cache (``<test cache>/conda-python/``): about 3 s and 18 MB (bz2 level 1);
* ``pip``: the pip of that pyenv interpreter repackaged as a ``noarch: python``
  package, as conda-forge ships it (environment files list ``pip`` beside a
  ``pip:`` section); cached beside ``python``;
* ``needs-future-python``: depends on ``python >=3.99`` (unsolvable).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.server
import io
import json
import os
import shutil
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loopback import LoopbackServer
from testcache import CACHE

#: the prefix the test packages were "built" in (what rattler replaces)
PLACEHOLDER = "/opt/conda-bld/demo_1700000000000/_h_env_placehold_placehold_placehold_placeh"
#: the subdir of this machine
SUBDIR = "linux-64"
#: the pyenv interpreter repackaged as the channel's ``python``
PYTHON_VERSION = "3.11"
#: bump when the repackaging below changes (a new cached package)
PYTHON_RECIPE = "2"
_SKIP = {
    "site-packages", "test", "tests", "__pycache__", "idlelib", "tkinter", "turtledemo",
    "lib2to3", "ensurepip",
}  # fmt: skip

#: an environment.yml of the channel's packages, as Binder repositories write them
ENVIRONMENT = """\
name: demo
channels:
  - conda-forge
dependencies:
  - python=3.11
  - libdemo
  - demo-noarch
  - pip
  - pip:
      - six==1.16.0
"""
LIB_C = "int demo_answer(void) { return 42; }\n"
PROGRAM_C = """#include <stdio.h>
int demo_answer(void);
int main(void) { printf("the answer is %d\\n", demo_answer()); return 0; }
"""
NOARCH_MODULE = '''"""A noarch python package of the local stand-in channel."""
GREETING = "hello from demo-noarch"


def main() -> None:
    print(GREETING)
'''


@dataclass
class Payload:
    """One file of a package: its bytes, mode, and the placeholder it holds (if any)."""

    data: bytes
    mode: int = 0o644
    placeholder: str | None = None
    binary: bool = False


@dataclass
class Package:
    """What :func:`write_package` writes."""

    name: str
    version: str
    build: str = "0"
    depends: list[str] = field(default_factory=list)
    files: dict[str, Payload] = field(default_factory=dict)
    symlinks: dict[str, str] = field(default_factory=dict)
    noarch: str | None = None
    entry_points: list[str] = field(default_factory=list)

    @property
    def subdir(self) -> str:
        return "noarch" if self.noarch else SUBDIR

    @property
    def filename(self) -> str:
        return f"{self.name}-{self.version}-{self.build}.tar.bz2"


def _index_json(pkg: Package) -> dict[str, object]:
    index: dict[str, object] = {
        "name": pkg.name,
        "version": pkg.version,
        "build": pkg.build,
        "build_number": 0,
        "depends": pkg.depends,
        "license": "BSD-3-Clause",
        "subdir": pkg.subdir,
        "timestamp": 1700000000000,
    }
    if pkg.noarch:
        index["noarch"] = pkg.noarch
    else:
        index.update(arch="x86_64", platform="linux")
    return index


def _paths_json(pkg: Package) -> dict[str, object]:
    paths: list[dict[str, object]] = []
    for name, item in sorted(pkg.files.items()):
        entry: dict[str, object] = {
            "_path": name,
            "path_type": "hardlink",
            "sha256": hashlib.sha256(item.data).hexdigest(),
            "size_in_bytes": len(item.data),
        }
        if item.placeholder:
            entry.update(
                prefix_placeholder=item.placeholder, file_mode="binary" if item.binary else "text"
            )
        paths.append(entry)
    for name in sorted(pkg.symlinks):
        paths.append(
            {"_path": name, "path_type": "softlink", "sha256": "0" * 64, "size_in_bytes": 0}
        )
    return {"paths": sorted(paths, key=lambda p: str(p["_path"])), "paths_version": 1}


def _add(tar: tarfile.TarFile, name: str, data: bytes, mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, 1700000000
    tar.addfile(info, io.BytesIO(data))


def write_package(channel: Path, pkg: Package, compresslevel: int = 1) -> Path:
    """Write ``pkg`` into ``channel/<subdir>/`` as a ``.tar.bz2``; returns its path."""
    folder = channel / pkg.subdir
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / pkg.filename
    meta: dict[str, bytes] = {
        "info/index.json": json.dumps(_index_json(pkg), indent=1).encode(),
        "info/paths.json": json.dumps(_paths_json(pkg), indent=1).encode(),
        "info/files": "".join(f"{n}\n" for n in sorted([*pkg.files, *pkg.symlinks])).encode(),
    }
    if pkg.noarch == "python":
        link = {"noarch": {"type": "python", "entry_points": pkg.entry_points}}
        meta["info/link.json"] = json.dumps({**link, "package_metadata_version": 1}).encode()
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with tarfile.open(tmp, "w:bz2", compresslevel=compresslevel) as tar:
        for name, data in meta.items():
            _add(tar, name, data)
        for name, item in sorted(pkg.files.items()):
            _add(tar, name, item.data, item.mode)
        for name, target in sorted(pkg.symlinks.items()):
            info = tarfile.TarInfo(name)
            info.type, info.linkname, info.mtime = tarfile.SYMTYPE, target, 1700000000
            tar.addfile(info)
    tmp.rename(path)
    return path


def _gcc(*args: str, cwd: Path) -> None:
    subprocess.run(["gcc", *args], cwd=cwd, check=True, capture_output=True)


def libdemo(work: Path, version: str = "1.0") -> Package:
    """The compiled library and the program linking it (see the module docstring)."""
    work.mkdir(parents=True, exist_ok=True)
    (work / "demo.c").write_text(LIB_C)
    (work / "main.c").write_text(PROGRAM_C)
    _gcc("-shared", "-fPIC", "-Wl,-soname,libdemo.so.1", "-o", "libdemo.so.1", "demo.c", cwd=work)
    (work / "libdemo.so").symlink_to("libdemo.so.1")
    _gcc("-o", "demo-answer", "main.c", "-L.", "-ldemo", f"-Wl,-rpath,{PLACEHOLDER}/lib", cwd=work)
    program = (work / "demo-answer").read_bytes()
    assert PLACEHOLDER.encode() in program
    return Package(
        "libdemo",
        version,
        build="h0_test",
        files={
            "lib/libdemo.so.1": Payload((work / "libdemo.so.1").read_bytes(), 0o755),
            "bin/demo-answer": Payload(program, 0o755, PLACEHOLDER, binary=True),
            "etc/demo/prefix.txt": Payload(f"prefix={PLACEHOLDER}\n".encode(), 0o644, PLACEHOLDER),
        },
        symlinks={"lib/libdemo.so": "libdemo.so.1"},
    )


def demo_noarch(version: str = "0.2") -> Package:
    """A ``noarch: python`` package with a console script."""
    dist = f"site-packages/demo_noarch-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: demo-noarch\nVersion: {version}\n"
    return Package(
        "demo-noarch",
        version,
        build="pyh0_test",
        depends=["python >=3.8"],
        noarch="python",
        entry_points=["demo-noarch = demo_noarch:main"],
        files={
            "site-packages/demo_noarch/__init__.py": Payload(NOARCH_MODULE.encode()),
            f"{dist}/METADATA": Payload(metadata.encode()),
            f"{dist}/INSTALLER": Payload(b"conda\n"),
        },
    )


def writes_through_a_link() -> Package:
    """A crafted package: a link it ships, and a file written through it (rattler would
    write wherever the link points: into the shared package cache, say)."""
    return Package(
        "writes-through-a-link",
        "1.0",
        build="h0_test",
        symlinks={"share/sub": "../.."},
        files={"share/sub/planted.txt": Payload(b"planted\n")},
    )


def needs_future_python() -> Package:
    return Package(
        "needs-future-python", "1.0", build="pyh0_test", depends=["python >=3.99"], noarch="generic"
    )


def _pyenv_prefix(minor: str) -> Path:
    root = Path(os.environ.get("PYENV_ROOT") or Path("~/.pyenv").expanduser()) / "versions"
    found = sorted(
        root.glob(f"{minor}.*"), key=lambda p: [int(x) for x in p.name.split(".") if x.isdigit()]
    )
    if not found:
        raise FileNotFoundError(f"no pyenv Python {minor} under {root}")
    return found[-1]


def _python_payload(prefix: Path) -> tuple[dict[str, Payload], dict[str, str]]:
    """The files of the interpreter at ``prefix`` and its links.  Text files naming the
    prefix and the interpreter program (its run path) are marked as holding a prefix
    placeholder; libraries are not: ``libpython`` keeps pyenv's prefix as its unused
    fallback (Python finds its prefix from where its program is), because rewriting it
    there would also blank the version string the linker stored as that path's tail."""
    files: dict[str, Payload] = {}
    links: dict[str, str] = {}
    needle = str(prefix).encode()
    for dirpath, dirnames, filenames in os.walk(prefix):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP and not d.startswith("config-"))
        rel_dir = Path(dirpath).relative_to(prefix)
        if rel_dir == Path("bin"):
            filenames = [f for f in filenames if f.startswith(("python", "pydoc"))]
        for name in filenames:
            path, rel = Path(dirpath) / name, str(rel_dir / name)
            if path.is_symlink():
                links[rel] = str(path.readlink())
                continue
            data = path.read_bytes()
            binary = b"\0" in data
            # binary: only the program's run path; see _python_payload's docstring
            marked = needle in data and (not binary or rel_dir == Path("bin"))
            placeholder = str(prefix) if marked else None
            files[rel] = Payload(data, path.stat().st_mode & 0o777, placeholder, binary)
    return files, links


@functools.cache
def python_package() -> Path:
    """The channel's ``python`` (see the module docstring), built once per machine."""
    prefix = _pyenv_prefix(PYTHON_VERSION)
    version = prefix.name
    folder = CACHE / "conda-python" / f"{version}-{PYTHON_RECIPE}"
    pkg_path = folder / SUBDIR / f"python-{version}-h0_binderbox_test.tar.bz2"
    if pkg_path.is_file():
        return pkg_path
    files, links = _python_payload(prefix)
    pkg = Package("python", version, build="h0_binderbox_test", files=files, symlinks=links)
    return write_package(folder, pkg)


@functools.cache
def pip_package() -> Path:
    """The channel's ``pip`` (see the module docstring), built once per machine."""
    site = _pyenv_prefix(PYTHON_VERSION) / "lib" / f"python{PYTHON_VERSION}" / "site-packages"
    dist = next(site.glob("pip-*.dist-info"))
    version = dist.name.removeprefix("pip-").removesuffix(".dist-info")
    folder = CACHE / "conda-python" / f"pip-{version}-{PYTHON_RECIPE}"
    pkg = Package("pip", version, "pyh0_binderbox_test", ["python >=3.7"], noarch="python")
    if (folder / "noarch" / pkg.filename).is_file():
        return folder / "noarch" / pkg.filename
    pkg.entry_points = ["pip = pip._internal.cli.main:main", "pip3 = pip._internal.cli.main:main"]
    for top in (site / "pip", dist):
        for dirpath, dirnames, filenames in os.walk(top):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            for name in filenames:
                path = Path(dirpath) / name
                rel = f"site-packages/{path.relative_to(site)}"
                pkg.files[rel] = Payload(path.read_bytes())
    pkg.files[f"site-packages/{dist.name}/INSTALLER"] = Payload(b"conda\n")
    return write_package(folder, pkg)


def _link_or_copy(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def make_channel(root: Path) -> Path:
    """The local stand-in for conda-forge at ``root`` (see the module docstring), indexed."""
    import asyncio

    from rattler.index import index_fs

    (root / "noarch").mkdir(parents=True, exist_ok=True)
    (root / SUBDIR).mkdir(parents=True, exist_ok=True)
    python, pip = python_package(), pip_package()
    _link_or_copy(python, root / SUBDIR / python.name)
    _link_or_copy(pip, root / "noarch" / pip.name)
    write_package(root, libdemo(root.parent / f"{root.name}-build"))
    write_package(root, demo_noarch())
    write_package(root, needs_future_python())
    write_package(root, writes_through_a_link())
    asyncio.run(index_fs(root, write_zst=False, write_shards=False))
    return root


class ChannelServer(LoopbackServer):
    """A folder of channels served on 127.0.0.1 (``url``); :meth:`close` stops it."""

    def __init__(self, root: Path) -> None:
        self.root = root
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.requests: list[str] = []
        super().__init__(handler)
        self.httpd.requests = self.requests  # type: ignore[attr-defined]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        self.server.requests.append(self.path)  # type: ignore[attr-defined]


@contextlib.contextmanager
def served(root: Path) -> Iterator[ChannelServer]:
    """A :class:`ChannelServer` of ``root`` while the context lasts."""
    server = ChannelServer(root)
    try:
        yield server
    finally:
        server.close()


@contextlib.contextmanager
def stand_in_for_conda_forge(root: Path) -> Iterator[ChannelServer]:
    """The local stand-in for conda-forge, made at ``root/conda-forge`` and served:
    ``<server.url>/conda-forge``."""
    make_channel(root / "conda-forge")
    with served(root) as server:
        yield server


async def solve(url: str, specs: list[str]) -> list[object]:
    """rattler's solution of ``specs`` from the channel at ``url`` (for lock files)."""
    import rattler

    return list(await rattler.solve([url], specs, platforms=[SUBDIR, "noarch"]))


#: six 1.16.0's wheel on PyPI (a lock file's PyPI package)
SIX_WHEEL = (
    "https://files.pythonhosted.org/packages/d9/5a/"
    "e7c31adbe875f2abbb91bd84cf2dc52d792b5a01506781dbcf25c91daf11/six-1.16.0-py2.py3-none-any.whl"
)


def pixi_lock(records: list[object], served_as: str, published_as: str) -> str:
    """A real ``pixi.lock`` (written by rattler) of ``records`` plus six from PyPI, its URLs
    those of the channel ``published_as`` (conda-forge's) instead of ``served_as``."""
    import tempfile

    import rattler

    platform = rattler.LockPlatform(SUBDIR)
    lock = rattler.LockFile([platform])
    lock.set_channels("default", [rattler.LockChannel(published_as)])
    for record in records:
        lock.add_conda_package("default", platform, record)  # type: ignore[arg-type]
    lock.add_pypi_package("default", platform, "six", "1.16.0", SIX_WHEEL)
    with tempfile.TemporaryDirectory() as tmp:
        lock.to_path(Path(tmp) / "pixi.lock")
        text = (Path(tmp) / "pixi.lock").read_text()
    return text.replace(served_as.rstrip("/"), published_as.rstrip("/"))


def conda_lock(records: list[object], served_as: str, published_as: str) -> str:
    """A ``conda-lock.yml`` (version 1, conda-lock's documented fields) of ``records``."""
    import yaml

    packages = []
    for record in records:
        r: Any = record
        packages.append(
            {
                "name": r.name.normalized,
                "version": str(r.version),
                "manager": "conda",
                "platform": SUBDIR,
                "dependencies": {},
                "url": r.url.replace(served_as.rstrip("/"), published_as.rstrip("/")),
                "hash": {"md5": r.md5.hex(), "sha256": r.sha256.hex()},
                "category": "main",
                "optional": False,
            }
        )
    packages.append(
        {"name": "six", "version": "1.16.0", "manager": "pip", "platform": SUBDIR,
         "dependencies": {}, "url": SIX_WHEEL, "hash": {"sha256": "0" * 64},
         "category": "main", "optional": False}
    )  # fmt: skip
    metadata = {
        "channels": [{"url": "conda-forge", "used_env_vars": []}],
        "platforms": [SUBDIR],
        "sources": ["environment.yml"],
        "content_hash": {SUBDIR: "0" * 64},
    }
    return str(yaml.safe_dump({"version": 1, "metadata": metadata, "package": packages}))
