"""``apt-get download`` of a layer's packages, unprivileged, under the build network.

The download is the part of a system layer that talks to the network, so it
runs as a build step does (:meth:`SandboxHost.run_step
<binderbox.runtime.host.SandboxHost.run_step>`): in a bubblewrap sandbox as a
leased host uid (never root), in a network namespace of its own whose nftables
rules refuse private, link-local and this machine's own addresses unless
``c.Destinations.allowed`` lists them (an apt mirror on a private network goes
there).  The sandbox shows apt's configuration and the host's package lists
read-only (``/etc/apt``, ``/var/lib/apt/lists``, dpkg's status, what apt's
``-o Dir::...`` options name: its package cache file) and one fresh folder
writable, where apt writes the files.

apt checks every file against the signed index, but that apt ran as a uid the
service does not trust afterwards, so the service checks again before a file
joins the shared cache: a regular file (looked at without following links,
one link only) whose SHA256 is the one the host's index gives for that
package and version (``apt-cache show``).  Anything else fails the build.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from ..errors import BuildError
from ..runtime.host import SandboxHost, Step
from ..runtime.layout import base_sandbox
from ..runtime.ownership import give_tree, take_back
from .aptget import Apt, Package, deb_name, find_deb, run

#: where the sandbox sees the fresh folder
INSIDE = "/run/binderbox/apt-download"
#: what apt reads, shown read-only when they exist
APT_READS = ("/etc/apt", "/var/lib/apt/lists", "/var/lib/dpkg", "/usr/share/keyrings")
_ENV = {"LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}


async def download(
    apt: Apt, packages: Sequence[Package], debs: Path, host: SandboxHost
) -> list[Path]:
    """The ``.deb`` files of ``packages`` in ``debs``, downloaded when missing; see the
    module docstring."""
    wanted = {deb_name(package): package for package in packages}
    missing = [p for name, p in wanted.items() if not (debs / name).is_file()]
    if missing:  # into a fresh folder: only files checked here reach ``debs``
        fresh = Path(tempfile.mkdtemp(prefix=".download-", dir=debs))
        try:
            await _fetch(apt, missing, fresh, host)
            hashes = await published_hashes(apt, missing)
            await asyncio.to_thread(_adopt, fresh, debs, missing, hashes)
        finally:
            await asyncio.to_thread(shutil.rmtree, fresh, True)
    found = {name: debs / name for name in wanted if (debs / name).is_file()}
    if len(found) != len(wanted):  # apt named a file otherwise: find it by its package
        for name, package in wanted.items():
            found.setdefault(name, find_deb(debs, package))
    return [found[name] for name in wanted]


async def _fetch(apt: Apt, missing: Sequence[Package], fresh: Path, host: SandboxHost) -> None:
    lease = host.lease_uid()
    uid = lease.value if lease is not None else None
    try:
        if uid is not None:
            await asyncio.to_thread(give_tree, fresh, uid)
        box = base_sandbox([], None)
        for path in APT_READS:
            if Path(path).exists():
                box.ro_bind(path)
        inside, shown = _options_inside(apt)
        for folder, at in shown:
            box.ro_bind(folder, at)
        box.bind(fresh, INSIDE)
        box.cwd = INSIDE
        box.setenv(_ENV)
        step = Step()
        argv = inside.apt_get("download", "-q", *(p.pin for p in missing))
        async for _line in host.run_step(box, argv, uid=uid, step=step):
            pass
    finally:
        if lease is not None:
            lease.release()
        await asyncio.to_thread(take_back, fresh)
    errors = [line for line in step.output.tail if line.startswith("E:")]
    if step.output.code != 0 or errors:
        last = (errors or [line for line in step.output.tail if line.strip()] or ["?"])[-1]
        raise BuildError(
            "The packages of apt.txt could not be downloaded from this server's "
            f"package sources: {last[:300]}",
            reason="apt_download",
            log_message="apt-get download failed:\n" + "\n".join(step.output.tail),
        )


def _options_inside(apt: Apt) -> tuple[Apt, list[tuple[Path, str]]]:
    """``apt`` as the sandbox runs it, and what to show it read-only: each path an
    ``-o Dir::...=<path>`` option names (a package cache file's folder, another sources
    list or lists folder) shown under ``/run/binderbox/apt-N``, the option rewritten."""
    shown: list[tuple[Path, str]] = []
    options: list[str] = []
    for option in apt.options:
        key, _, value = option.partition("=")
        path = Path(value)
        if not key.startswith("Dir::") or not path.is_absolute() or not path.parent.is_dir():
            options.append(option)
            continue
        folder, name = (path, "") if path.is_dir() else (path.parent, path.name)
        inside = f"/run/binderbox/apt-{len(shown)}"
        shown.append((folder, inside))
        options.append(f"{key}={inside}/{name}".rstrip("/"))
    return replace(apt, options=tuple(options)), shown


async def published_hashes(apt: Apt, packages: Sequence[Package]) -> dict[str, str]:
    """``name=version`` -> the SHA256 the host's (signed) index gives its file."""
    code, out = await run(apt.apt_cache("show", "--no-all-versions", *(p.pin for p in packages)))
    found: dict[str, str] = {}
    if code != 0:
        return found
    for record in out.split("\n\n"):
        fields = dict(re.findall(r"^([A-Za-z0-9-]+): (.*)$", record, re.M))
        if {"Package", "Version", "SHA256"} <= fields.keys():
            found[f"{fields['Package']}={fields['Version']}"] = fields["SHA256"].strip()
    return found


def _adopt(fresh: Path, debs: Path, packages: Sequence[Package], hashes: dict[str, str]) -> None:
    """Move each downloaded file into ``debs`` once it is checked (module docstring)."""
    for package in packages:
        name = package.name.split(":", 1)[0]
        files = list(fresh.glob(f"{name}_*_{package.arch}.deb"))
        expected = hashes.get(f"{name}={package.version}") or hashes.get(package.pin)
        if len(files) != 1 or not expected or _sha256(files[0]) != expected.lower():
            raise BuildError(
                f"The downloaded package {package.pin} does not match this server's package index.",
                reason="apt_download",
                log_message=f"{package.pin}: files {files}, expected sha256 {expected}",
            )
        files[0].rename(debs / files[0].name)


def _sha256(path: Path) -> str:
    """The SHA256 of a regular file with one link, opened without following a link."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:  # a link (ELOOP), or gone
        return ""
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1:
            return ""
        digest = hashlib.sha256()
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
