"""What goes into an environment's image: the layers, bottom first, as tar entries.

1. **base** (one for every environment of this host): the minimal root a session needs,
   the files of the Debian packages :data:`BASE_PACKAGES` and what they depend on, as the
   host has them installed (``dpkg``'s lists; documentation, manual pages and
   translations left out), in Debian's merged-``/usr`` layout (``/bin``, ``/lib``,
   ``/lib64``, ``/sbin`` links into ``/usr``), plus what the session expects of
   ``/etc`` (``passwd`` and ``group`` with ``jovyan``, uid 1000; the host's CA bundle
   in ``/etc/ssl/certs``; ``nsswitch.conf``), ``/home/jovyan`` owned by 1000, ``/tmp``.
   The package set is the C and C++ runtime, the libraries CPython's standard modules
   link to, a shell with coreutils and grep (the home init container of a Kubernetes
   session uses them), and CA certificates: what environments built here
   use from the host's ``/usr`` (manylinux wheels bring every other library they need).
   An environment whose programs need more of the host's ``/usr`` names it in
   ``apt.txt``, which is a layer of its own.
2. **interpreters** (one per interpreter, shared by the environments built on it): each
   of the environment's ``interpreter_mounts`` (``build.json``) at the path the
   environment knows it by, without the interpreter's own ``site-packages`` (an
   environment is a virtual environment that does not see them) and test suite;
3. **system layers** (apt.txt; one per layer, shared): each layer's ``usr/`` and
   ``etc/`` at ``/usr`` and ``/etc``;
4. **the environment**: its tree at :data:`~binderbox.environments.ENV_PREFIX`
   (``/srv/env``), where it was built and where sessions see it.

Every entry is owned by root and read-only to the session user but ``/home/jovyan``
and ``/tmp``.
"""

from __future__ import annotations

import functools
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

from ..environments import ENV_PREFIX, HOME
from ..runtime.layout import env_interpreter_mounts, env_layers
from ..runtime.sandbox import GID, UID, USER
from .tarlayer import Entry, host_entry, parents, tree_entries

#: the base layer's Debian packages (with their dependencies; see the module docstring)
BASE_PACKAGES = (
    "base-files", "libc6", "libgcc-s1", "libstdc++6", "zlib1g", "libbz2-1.0", "liblzma5",
    "libzstd1", "libexpat1", "libffi8", "libssl3", "libsqlite3-0", "libuuid1",
    "libreadline8", "libncursesw6", "libtinfo6", "libgdbm6", "libcrypt1", "libtirpc3",
    "libnsl2", "libmpdec3", "bash", "dash", "coreutils", "grep", "ca-certificates", "netbase",
)  # fmt: skip
#: dpkg-listed paths left out of the base layer
SKIPPED = ("/usr/share/doc/", "/usr/share/man/", "/usr/share/info/", "/usr/share/locale/",
           "/usr/share/lintian/", "/etc/init.d/", "/etc/cron.daily/")  # fmt: skip
#: Debian's merged-/usr links
USR_LINKS = {"bin": "usr/bin", "lib": "usr/lib", "lib64": "usr/lib64", "sbin": "usr/sbin"}
#: the host files copied into the base's /etc as they are
ETC_FILES = ("/etc/ssl/certs/ca-certificates.crt", "/etc/nsswitch.conf", "/etc/host.conf")
#: what an interpreter layer leaves out (paths relative to the interpreter prefix)
INTERPRETER_SKIP = re.compile(r"lib/python[0-9.]+/(site-packages/.+|test|idlelib)$")


class BaseUnavailable(RuntimeError):
    """This host has no dpkg database to make the base layer from."""


def _dpkg(*args: str) -> str:
    try:
        done = subprocess.run(
            ["dpkg-query", *args], capture_output=True, text=True, check=False, timeout=60
        )
    except FileNotFoundError:
        raise BaseUnavailable("dpkg-query is missing: the base layer needs Debian") from None
    return done.stdout


def installed_closure(wanted: tuple[str, ...] = BASE_PACKAGES) -> list[str]:
    """The installed packages among ``wanted`` and everything they depend on (Depends and
    Pre-Depends, the installed one of each alternative), as ``name:arch=version``, sorted."""
    fields = "${binary:Package}\t${Version}\t${db:Status-Abbrev}\t${Depends}, ${Pre-Depends}\n"
    table: dict[str, tuple[str, list[list[str]]]] = {}
    for line in _dpkg("-W", "-f", fields).splitlines():
        name, version, status, depends = [*line.split("\t"), "", "", ""][:4]
        if not status.startswith("ii"):
            continue
        groups = [
            [alt.split()[0].split(":")[0] for alt in group.split("|") if alt.strip()]
            for group in depends.split(",")
            if group.strip()
        ]
        table[name.split(":")[0]] = (f"{name}={version}", groups)
    todo, seen = [name for name in wanted if name in table], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for group in table[name][1]:
            chosen = next((alt for alt in group if alt in table), None)
            if chosen is not None:
                todo.append(chosen)
    return sorted(table[name][0] for name in seen)


def _merged(path: str) -> str:
    """A dpkg path in the merged-/usr layout, relative: ``/lib/x.so`` -> ``usr/lib/x.so``."""
    rel = path.strip("/")
    head, _, rest = rel.partition("/")
    if head in USR_LINKS and Path("/", head).is_symlink():
        return f"{USR_LINKS[head]}/{rest}" if rest else USR_LINKS[head]
    return rel


@functools.cache
def _package_paths(packages: tuple[str, ...]) -> tuple[str, ...]:
    names = [package.split("=")[0] for package in packages]
    listed = _dpkg("-L", *names).splitlines() if names else []
    keep = {
        _merged(path)
        for path in listed
        if path.startswith("/") and not path.startswith(SKIPPED) and path not in ("/.",)
    }
    return tuple(sorted(keep - {link for link in USR_LINKS if Path("/", link).is_symlink()}))


def base_entries(packages: tuple[str, ...]) -> list[Entry]:
    """The base layer's entries for ``packages`` (:func:`installed_closure`), sorted."""
    found: dict[str, Entry] = {}
    for rel in _package_paths(packages):
        for parent in parents(rel):
            found.setdefault(parent.name, parent)
        entry = host_entry(Path("/", rel), rel)
        if entry is not None:
            found[rel] = entry
    for link, target in USR_LINKS.items():
        if Path("/", link).is_symlink():  # a host without merged /usr keeps its folders
            found[link] = Entry(link, "symlink", 0o777, target=target)
    for path in ETC_FILES:
        entry = host_entry(Path(path), path.strip("/"))
        if entry is not None and entry.kind == "file":
            found.update({p.name: p for p in parents(entry.name) if p.name not in found})
            found[entry.name] = entry
    passwd = f"root:x:0:0:root:/root:/bin/bash\n{USER}:x:{UID}:{GID}::{HOME}:/bin/bash\n"
    group = f"root:x:0:\n{USER}:x:{GID}:\n"
    home = HOME.strip("/")
    made = [
        Entry("etc", "dir"),
        Entry("etc/passwd", "data", 0o644, data=passwd.encode()),
        Entry("etc/group", "data", 0o644, data=group.encode()),
        Entry("tmp", "dir", 0o1777),
        Entry("root", "dir", 0o700),
        *(Entry(p, "dir") for p in ("proc", "sys", "dev", "run", "srv", "home")),
        Entry(home, "dir", 0o755, uid=UID, gid=GID),
    ]
    found.update({entry.name: entry for entry in made})
    return [found[name] for name in sorted(found)]


def interpreter_entries(host: Path, inside: Path) -> Iterator[Entry]:
    """An interpreter layer: the interpreter copy ``host`` shown at ``inside``."""
    yield from parents(str(inside))
    yield from tree_entries(host, str(inside), skip=_interpreter_skip)


def _interpreter_skip(rel: str) -> bool:
    return INTERPRETER_SKIP.match(rel) is not None


def system_layer_entries(tree: Path) -> Iterator[Entry]:
    """An apt.txt layer: its ``usr/`` and ``etc/`` at ``/usr`` and ``/etc``."""
    for top in ("etc", "usr"):
        if (tree / top).is_dir():
            yield from tree_entries(tree / top, top)


def env_entries(env_path: Path) -> Iterator[Entry]:
    """The environment layer: the tree at ``/srv/env``."""
    yield from parents(ENV_PREFIX)
    yield from tree_entries(env_path, ENV_PREFIX)


def env_parts(env_path: Path) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """The interpreter mounts and system layers a built environment names."""
    return env_interpreter_mounts(env_path), env_layers(env_path)
