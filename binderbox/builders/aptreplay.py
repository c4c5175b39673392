"""The known effects of maintainer scripts, replayed on a layer without running them.

A layer holds the files of its packages (:mod:`binderbox.builders.aptget`); their
``postinst`` scripts never run (not as root on the host, nor anywhere).  First the
tree is made merged-/usr as the host is (:func:`merge_usr`: Debian 12 packages still
ship ``/bin``, ``/lib``; only the layer's ``usr/`` and ``etc/`` are shown).  What
the scripts would have done that programs rely on is replayed here:

* **alternatives** (:func:`alternatives`): ``update-alternatives --install LINK NAME
  PATH PRIORITY [--slave LINK NAME PATH]...`` lines of the scripts are read (not run;
  a line with shell variables or substitutions is skipped) and, for each name the host
  does not already have, the highest priority's links are made as dpkg would:
  ``LINK -> /etc/alternatives/NAME -> PATH`` (``libblas.so.3`` for ffmpeg, numpy, R);
* **the host's configuration of installed dependencies** (:func:`host_etc`): a layer
  package often uses a library the host already has, whose files under ``/etc``
  sandboxes do not see (``/etc/fonts`` for fontconfig, used by graphviz).  The files
  and links ``dpkg`` lists under ``/etc`` for those installed packages are copied into
  the layer's ``etc/`` -- only what every local user may read, never a folder whole
  (``/etc/ssh`` holds host keys no package lists);
* **generated configuration files** (:data:`GENERATED`, :func:`generated`): files
  a script makes from a template the package ships (``ucf``), copied as shipped:
  R's ``/etc/R/Renviron``, without which R finds none of its own packages;
* **generated registries** (:data:`REGISTRIES`): files a script or trigger generates
  from what was installed (graphviz's plugin list, ``dot -c``; gdk-pixbuf's loader
  cache).  Their commands run in a build sandbox as a leased uid, with the layer shown
  at ``/usr`` and the registry's folder a writable overlay (:func:`registries`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import shutil
import stat
import sys
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ..errors import BuildError
from ..runtime.host import SandboxHost, Step
from ..runtime.layout import base_sandbox
from ..runtime.ownership import give_tree
from ..runtime.sandbox import SYSTEM_DIRS, SYSTEM_FILES

#: the multiarch triplet of this host (x86_64-linux-gnu)
TRIPLET = getattr(sys.implementation, "_multiarch", "") or "x86_64-linux-gnu"
#: merged-/usr: paths under these name the same files under /usr
_MERGED = {"/bin/": "/usr/bin/", "/sbin/": "/usr/sbin/", "/lib/": "/usr/lib/"}


#: the top folders merged-/usr keeps under /usr (the host's are links there)
MERGED_TOPS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")


def merge_usr(tree: Path) -> None:
    """Move what packages put in ``/bin``, ``/sbin``, ``/lib``... of ``tree`` into its
    ``usr/`` (a file ``usr/`` has already wins), as merged /usr has it."""
    for top in MERGED_TOPS:
        source = tree / top
        if source.is_dir() and not source.is_symlink():
            _merge(source, tree / "usr" / top)
            shutil.rmtree(source)


def _merge(source: Path, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for entry in list(source.iterdir()):
        target = dest / entry.name
        if entry.is_dir() and not entry.is_symlink() and target.is_dir():
            _merge(entry, target)
        elif not os.path.lexists(target):
            entry.rename(target)


@dataclass(frozen=True)
class Alternative:
    """One ``update-alternatives --install``: the master and its slaves' links."""

    name: str
    priority: int
    #: (link, name, path) of the master, then of each slave
    links: tuple[tuple[str, str, str], ...]


def parse_alternatives(script: str) -> list[Alternative]:
    """The ``update-alternatives --install`` commands of a maintainer script."""
    found = []
    for line in script.replace("\\\n", " ").splitlines():
        if "update-alternatives" not in line or "--install" not in line:
            continue
        if "$" in line or "`" in line:  # computed at run time: not replayed
            continue
        with contextlib.suppress(ValueError):
            words = shlex.split(line, comments=True)
            start = words.index("--install")
            link, name, path, priority = words[start + 1 : start + 5]
            links, rest = [(link, name, path)], words[start + 5 :]
            while len(rest) >= 4 and rest[0] == "--slave":
                links.append((rest[1], rest[2], rest[3]))
                rest = rest[4:]
            found.append(Alternative(name, int(priority), tuple(links)))
    return found


def alternatives(tree: Path, scripts: Iterable[str]) -> list[str]:
    """Make the alternatives links of the packages in ``tree`` (see the module
    docstring) from their ``postinst`` ``scripts``.  Returns the names."""
    best: dict[str, Alternative] = {}
    for script in scripts:
        for alt in parse_alternatives(script):
            if alt.name not in best or alt.priority > best[alt.name].priority:
                best[alt.name] = alt
    made = []
    for name, alt in sorted(best.items()):
        if os.path.lexists(f"/etc/alternatives/{name}"):
            continue  # the host has this alternative: its choice stands
        if not _exists(tree, alt.links[0][2]):
            continue
        for link, slave, path in alt.links:
            if _exists(tree, path):
                _link(tree, _usr(link), f"/etc/alternatives/{slave}")
                _link(tree, f"/etc/alternatives/{slave}", path)
        made.append(name)
    return made


def _usr(path: str) -> str:
    for old, new in _MERGED.items():
        if path.startswith(old):
            return new + path[len(old) :]
    return path


def _exists(tree: Path, path: str) -> bool:
    inside = _usr(path)
    return os.path.lexists(tree / inside.lstrip("/")) or os.path.lexists(inside)


def _link(tree: Path, at: str, target: str) -> None:
    """A link ``at`` (a path inside, under /usr or /etc) in the layer, unless a file of a
    package is there already."""
    if not at.startswith(("/usr/", "/etc/")):
        return
    path = tree / at.lstrip("/")
    if os.path.lexists(path):
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.symlink_to(target)


def host_etc(tree: Path, packages: Iterable[str], info: Path = Path("/var/lib/dpkg/info")) -> int:
    """Copy what ``dpkg`` lists under ``/etc`` for the installed ``packages`` into the
    layer (see the module docstring); returns how many entries."""
    shown = {Path(p) for p in (*SYSTEM_DIRS, *SYSTEM_FILES)}
    copied = 0
    for package in sorted(set(packages)):
        listing = _listing(info, package)
        for line in listing:
            path = Path(line)
            if path.parts[:2] != ("/", "etc") or len(path.parts) < 3:
                continue
            if any(path == s or path.is_relative_to(s) for s in shown):
                continue
            copied += _copy_one(path, tree / line.lstrip("/"))
    return copied


def _listing(info: Path, package: str) -> list[str]:
    for name in (f"{package}.list", f"{package.split(':')[0]}.list"):
        with contextlib.suppress(OSError):
            return (info / name).read_text(errors="replace").splitlines()
    return []


def _copy_one(path: Path, dest: Path) -> int:
    """A world-readable file or a link from the host's /etc, not followed; 1 if copied."""
    try:
        info = path.lstat()
    except OSError:
        return 0
    link = stat.S_ISLNK(info.st_mode)
    if os.path.lexists(dest) or not (link or info.st_mode & stat.S_IROTH):
        return 0
    if not all(_readable(parent) for parent in path.parents if parent != Path("/")):
        return 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    if link:
        dest.symlink_to(path.readlink())
    elif stat.S_ISREG(info.st_mode):
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return 0
        with os.fdopen(fd, "rb") as src, dest.open("xb") as out:
            shutil.copyfileobj(src, out)
    else:
        return 0
    return 1


def _readable(folder: Path) -> bool:
    try:
        mode = folder.lstat().st_mode
    except OSError:
        return False
    return stat.S_ISDIR(mode) and bool(mode & stat.S_IXOTH)


#: (template in the layer, the file made from it): configuration ``ucf`` installs
GENERATED = (("/usr/lib/R/etc/Renviron.ucf", "/etc/R/Renviron"),)


def generated(tree: Path, table: Sequence[tuple[str, str]] = GENERATED) -> list[str]:
    """Copy each template the layer has to the file its script would make (unless a
    package ships that file); returns the files made."""
    made = []
    for template, target in table:
        source, dest = tree / template.lstrip("/"), tree / target.lstrip("/")
        if source.is_file() and not source.is_symlink() and not os.path.lexists(dest):
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, dest)
            made.append(target)
    return made


@dataclass(frozen=True)
class Registry:
    """A file generated from what packages installed: when ``when`` is in the layer,
    ``command`` runs with the folder ``writes`` writable (paths inside, under /usr)."""

    name: str
    when: str
    command: tuple[str, ...]
    writes: str


REGISTRIES = (
    Registry(
        "graphviz plugins",
        f"/usr/lib/{TRIPLET}/graphviz",
        ("/usr/bin/dot", "-c"),
        f"/usr/lib/{TRIPLET}/graphviz",
    ),
    Registry(
        "gdk-pixbuf loaders",
        f"/usr/lib/{TRIPLET}/gdk-pixbuf-2.0/2.10.0/loaders",
        (f"/usr/lib/{TRIPLET}/gdk-pixbuf-2.0/gdk-pixbuf-query-loaders", "--update-cache"),
        f"/usr/lib/{TRIPLET}/gdk-pixbuf-2.0/2.10.0",
    ),
)


def needed(tree: Path, table: Sequence[Registry] = REGISTRIES) -> list[Registry]:
    """The registries whose packages are in the layer and whose command exists."""
    return [
        r for r in table if (tree / r.when.lstrip("/")).exists() and _exists(tree, r.command[0])
    ]


async def registries(host: SandboxHost, tree: Path, todo: Sequence[Registry]) -> AsyncIterator[str]:
    """Run each registry's command in a sandbox as a leased uid, the layer shown; its
    folder is a writable overlay of the host's and the layer's (the command sees every
    plugin), and the files it wrote are copied into the layer.  A failure is a
    BuildError naming the registry."""
    for number, registry in enumerate(todo):
        folder = tree / registry.writes.lstrip("/")
        folder.mkdir(parents=True, exist_ok=True)
        upper, work = tree.parent / f"registry-{number}", tree.parent / f"registry-{number}.work"
        upper.mkdir()
        work.mkdir()
        lease = host.lease_uid()
        uid = lease.value if lease is not None else None
        try:
            if uid is not None:
                give_tree(upper, uid)
                give_tree(work, uid)
            host_folder = [Path(registry.writes)] if Path(registry.writes).is_dir() else []
            box = base_sandbox([], None, [tree])
            box.overlay([*host_folder, folder], upper, work, registry.writes)
            step = Step()
            yield f"Generating the {registry.name} ({' '.join(registry.command)})"
            async for line in host.run_step(box, registry.command, uid=uid, step=step):
                yield line
            if step.output.code == 0:
                await asyncio.to_thread(_copy_written, upper, folder)
        finally:
            if lease is not None:
                lease.release()
            for mine in (upper, work):
                await asyncio.to_thread(shutil.rmtree, mine, True)
        if step.output.code != 0:
            raise BuildError(
                f"Generating the {registry.name} of the apt.txt packages failed "
                f"(exit status {step.output.code}).",
                reason="apt_failed",
                log_message="\n".join(step.output.tail),
            )


def _copy_written(upper: Path, folder: Path) -> None:
    """The regular files a registry command wrote (an overlay's upper folder, the
    leased uid's) into the layer's ``folder``, as the service's; nothing else."""
    for path in upper.iterdir():
        info = path.lstat()
        if stat.S_ISREG(info.st_mode):
            (folder / path.name).unlink(missing_ok=True)
            _copy_one(path, folder / path.name)
