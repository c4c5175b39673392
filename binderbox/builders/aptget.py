"""What apt says: the host's installed packages, a list's closure, downloads, extraction.

The service runs apt's own clients against the host's apt sources and nothing else
(:mod:`binderbox.builders.aptlayer` says how the results become a layer):

* :func:`installed` -- the host's installed package set (``dpkg-query``), whose
  digest keys layers: a layer is valid for exactly the host it was made on;
* :func:`closure` -- ``apt-get install -s --no-install-recommends`` (repo2docker's
  flags) of the list: the packages the host lacks, with their exact versions.
  Names apt does not know are one :class:`~binderbox.errors.BuildError` naming them
  all (apt.txt files written for repo2docker use Ubuntu's names);
* the download (``apt-get download NAME=VERSION ...``, unprivileged, in a sandbox
  under the build network) is :mod:`binderbox.builders.aptdownload`'s;
* :func:`extract` -- each file's contents unpacked into the layer tree with no
  set-uid/set-gid bit, owner or special file kept (:func:`extract_one`), and
  :func:`postinst` reads a package's script (read, never run).

Nothing here runs a maintainer script; files are unpacked only.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import io
import os
import re
import subprocess
import tarfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import BuildError

#: a Debian package name (Debian policy 5.6.1), optionally with an architecture
NAME = re.compile(r"[a-z0-9][a-z0-9+.-]+(?::[a-z0-9-]+)?")
#: ``Inst name [old] (version release [arch])`` lines of a simulated install
_INST = re.compile(r"^Inst (\S+) (?:\[\S+\] )?\((\S+) .*\[(\S+)\]\)", re.MULTILINE)
_REMOVE = re.compile(r"^Remv (\S+)", re.MULTILINE)
_UNKNOWN = (
    re.compile(r"Unable to locate package (\S+)"),
    re.compile(r"Package '?([^' ]+)'? has no installation candidate"),
    re.compile(r"Couldn't find any package by (?:glob|regex) '([^']+)'"),
)
_ENV = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}
#: seconds any one apt or dpkg command may take
TIMEOUT = 600.0
UBUNTU_HINT = (
    "apt.txt names Debian packages on this server; files written for repo2docker use "
    "Ubuntu's names, and some differ on Debian."
)


@dataclass(frozen=True)
class Apt:
    """How apt's clients are run: the programs, and options given to each (apt's own
    package cache file where the host keeps none: each run would parse every list)."""

    get: str = "apt-get"
    cache: str = "apt-cache"
    options: tuple[str, ...] = ()

    def apt_get(self, *args: str) -> list[str]:
        return [self.get, *self.options, *args]

    def apt_cache(self, *args: str) -> list[str]:
        return [self.cache, *self.options, *args]


@dataclass(frozen=True)
class Package:
    """One package of a closure: its name (with ``:arch`` when foreign) and version."""

    name: str
    version: str
    arch: str

    @property
    def pin(self) -> str:
        """``name=version`` for apt-get."""
        return f"{self.name}={self.version}"


async def run(argv: Sequence[str], *, cwd: Path | None = None) -> tuple[int, str]:
    """Run an apt/dpkg command on the host; its exit status and output (both streams)."""
    env = {**os.environ, **_ENV}
    proc = await asyncio.create_subprocess_exec(
        *argv,
        cwd=cwd,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), TIMEOUT)
    except BaseException:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        raise
    return proc.returncode or 0, out.decode(errors="replace")


def check_names(names: Iterable[str]) -> list[str]:
    """``names`` sorted and deduplicated; a BuildError naming what is no package name
    (nothing that could be an option ever reaches apt's command line)."""
    names = sorted(set(names))
    bad = [name for name in names if not NAME.fullmatch(name) or name[-1] in "+-"]
    if bad:
        raise BuildError(
            f"apt.txt names something that is not a package name: {', '.join(bad)}.",
            hint="apt.txt holds one Debian package name per line (# starts a comment).",
            reason="apt_unknown",
        )
    return names


def installed_text() -> tuple[str, ...]:
    """The host's installed packages as ``name:arch=version`` lines, sorted (blocking)."""
    import subprocess

    fmt = "${db:Status-Abbrev}\t${Package}:${Architecture}=${Version}\n"
    out = subprocess.run(
        ["dpkg-query", "-W", "-f", fmt],
        capture_output=True,
        text=True,
        env={**os.environ, **_ENV},
        timeout=120,
        check=False,
    ).stdout
    found = (line.split("\t", 1)[1] for line in out.splitlines() if line.startswith("ii"))
    return tuple(sorted(found))


def digest(lines: Iterable[str]) -> str:
    """A short stable digest of an installed package set."""
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:24]


async def closure(apt: Apt, names: Sequence[str]) -> list[Package]:
    """The packages ``names`` need that the host lacks; see the module docstring."""
    code, out = await run(apt.apt_get("install", "-s", "--no-install-recommends", "-q", *names))
    unknown = sorted({m for pattern in _UNKNOWN[::2] for m in pattern.findall(out)})
    virtual = sorted(set(_UNKNOWN[1].findall(out)))
    if unknown or virtual:
        said = [f"packages this server's package sources do not have: {', '.join(unknown)}"]
        said = said if unknown else []
        if virtual:
            said.append(f"names with no installable package (virtual): {', '.join(virtual)}")
        raise BuildError(
            f"apt.txt names {'; '.join(said)}.",
            hint=UBUNTU_HINT,
            reason="apt_unknown",
        )
    removed = _REMOVE.findall(out)
    if removed:
        raise BuildError(
            f"The packages of apt.txt conflict with this server's own: installing them "
            f"would remove {', '.join(sorted(removed))}.",
            reason="apt_conflict",
        )
    if code != 0:
        last = [line for line in out.splitlines() if line.startswith("E:")] or [out.strip()]
        raise BuildError(
            f"apt cannot install the packages of apt.txt: {last[-1][:300]}",
            reason="apt_failed",
            log_message=f"apt-get install -s {' '.join(names)} failed:\n{out}",
        )
    packages = [Package(name, version, arch) for name, version, arch in _INST.findall(out)]
    await _literally(names, packages)
    return packages


async def _literally(names: Sequence[str], packages: Sequence[Package]) -> None:
    """Every name is a package of the closure or of the host: apt reads a name that is
    no package as a pattern (``graphvi.`` selects every package it matches)."""
    host = await asyncio.to_thread(installed_text)
    known = {p.name.split(":")[0] for p in packages}
    known |= {line.split(":", 1)[0].split("=", 1)[0] for line in host}
    missing = [name for name in names if name.split(":")[0] not in known]
    if missing:
        raise BuildError(
            f"apt.txt names packages this server's package sources do not have: "
            f"{', '.join(missing)} (apt would read them as patterns).",
            hint=UBUNTU_HINT,
            reason="apt_unknown",
        )


def deb_name(package: Package) -> str:
    """The file name apt gives a downloaded package (an epoch's ``:`` as ``%3a``)."""
    name = package.name.split(":", 1)[0]
    return f"{name}_{package.version.replace(':', '%3a')}_{package.arch}.deb"


def find_deb(debs: Path, package: Package) -> Path:
    name = package.name.split(":", 1)[0]
    for path in debs.glob(f"{name}_*_{package.arch}.deb"):
        return path
    raise BuildError(f"apt did not download {package.pin}.", reason="apt_download")


async def extract(debs: Sequence[Path], tree: Path, workers: int = 2) -> None:
    """Unpack each ``.deb`` into ``tree`` (:func:`extract_one`, two at a time)."""
    limit = asyncio.Semaphore(workers)

    async def one(deb: Path) -> None:
        async with limit:
            await asyncio.to_thread(extract_one, deb, tree)

    await asyncio.gather(*(one(deb) for deb in debs))


def extract_one(deb: Path, tree: Path) -> None:
    """Unpack ``deb``'s files into ``tree`` (blocking), safely: ``dpkg-deb
    --fsys-tarfile`` decompresses, Python's tarfile writes each member through
    :func:`_layer_member`, so no set-uid, set-gid or sticky bit and no group or
    other write bit is ever set, files belong to the service (not to the archive's
    owners), device nodes, FIFOs and sockets are refused, and nothing is written
    outside ``tree`` (no ``..``, no hard link out, no write through a link).  A
    refusal is a BuildError naming the package and the entry."""
    proc = subprocess.Popen(
        ["dpkg-deb", "--fsys-tarfile", str(deb)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, **_ENV},
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        with tarfile.open(fileobj=proc.stdout, mode="r|") as tar:
            tar.extractall(tree, filter=functools.partial(_layer_member, deb))
    except (tarfile.TarError, OSError) as err:
        raise BuildError(
            f"The package file {deb.name} could not be unpacked safely: {err}"[:400],
            reason="apt_failed",
            log_message=f"extracting {deb} failed: {err!r}",
        ) from None
    finally:
        proc.stdout.close()
        error = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        code = proc.wait(timeout=TIMEOUT)
    if code != 0:
        raise BuildError(
            f"The package file {deb.name} could not be unpacked.",
            reason="apt_failed",
            log_message=f"dpkg-deb --fsys-tarfile {deb} failed:\n{error}",
        )


def _layer_member(deb: Path, member: tarfile.TarInfo, dest: str) -> tarfile.TarInfo:
    """``member`` as a layer may hold it (see :func:`extract_one`)."""
    if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
        raise BuildError(
            f"The package file {deb.name} holds a device or special file "
            f"({member.name[:200]}): refused.",
            reason="apt_failed",
        )
    member = tarfile.tar_filter(member, dest)  # the path stays inside; mode & 0o755
    if member.islnk():
        root = Path(dest).resolve()
        target = (root / member.linkname).resolve()
        if not target.is_relative_to(root):
            raise tarfile.LinkOutsideDestinationError(member, str(target))
    # None: tarfile changes no owner (as its own data_filter does; typeshed says str)
    unowned: Any = None
    return member.replace(uid=unowned, gid=unowned, uname=unowned, gname=unowned, deep=False)


def postinst(deb: Path) -> str:
    """The ``postinst`` script of a ``.deb`` ('' when it has none), read from its
    control archive (an ``ar`` member, tar compressed with gzip, xz or none)."""
    with deb.open("rb") as handle:
        if handle.read(8) != b"!<arch>\n":
            return ""
        while header := handle.read(60):
            if len(header) < 60:
                return ""
            name, size = header[:16].strip().decode(), int(header[48:58])
            data = handle.read(size)
            handle.read(size % 2)  # members are 2-aligned
            if name.rstrip("/").startswith("control.tar"):
                return _member(data, "postinst")
    return ""


def _member(archive: bytes, wanted: str) -> str:
    try:
        with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
            for member in tar:
                if member.isfile() and member.name.lstrip("./") == wanted:
                    found = tar.extractfile(member)
                    return found.read().decode(errors="replace") if found else ""
    except (tarfile.TarError, OSError, EOFError):  # zstd and the like: not read
        return ""
    return ""


async def installed_size(apt: Apt, packages: Sequence[Package]) -> int:
    """Bytes ``packages`` take once unpacked (their ``Installed-Size``), before any
    download."""
    if not packages:
        return 0
    code, out = await run(apt.apt_cache("show", "--no-all-versions", *(p.pin for p in packages)))
    if code != 0:
        return 0  # what is unpacked is measured as well
    return 1024 * sum(int(size) for size in re.findall(r"^Installed-Size: (\d+)", out, re.M))


async def installed_dependencies(
    apt: Apt, names: Sequence[str], installed: frozenset[str]
) -> list[str]:
    """Every installed package (``name:arch`` as in ``installed``) that ``names`` depend
    on, directly or not (``apt-cache depends --recurse --installed``)."""
    argv = apt.apt_cache("depends", "--recurse", "--installed", "--no-recommends")
    argv += ["--no-suggests", "--no-conflicts", "--no-breaks", "--no-replaces"]
    _code, out = await run([*argv, "--no-enhances", *names])  # what it found counts
    found = set()
    for line in out.splitlines():
        word = line.split(":", 1)[1] if line.startswith(" ") and ":" in line else line
        word = word.strip().strip("<>|").strip()
        found.add(word)
    plain = {entry.split(":", 1)[0]: entry for entry in installed}
    return sorted({plain[name] for name in found if name in plain})
