"""System layers: the packages of apt.txt as a read-only tree shown over ``/usr``.

repo2docker installs apt.txt into its image with ``apt-get install``; binderbox has
no image and never runs a package's scripts as root, so a layer is made instead:

1. **closure**: ``apt-get install -s --no-install-recommends`` of the list against
   the host's installed package set and apt sources (``apt-get update`` first when
   the host has no package lists and binderbox is root): the packages the host lacks,
   with exact versions (:mod:`binderbox.builders.aptget`).  An unknown name is one
   plain BuildError naming every unknown name (Ubuntu's names differ);
2. **download** with apt's own client, unprivileged in a sandbox under the build
   network (:mod:`binderbox.builders.aptdownload`), into a ``.deb`` cache shared by
   all layers (:attr:`AptLayers.debs_dir`), each file checked against the signed
   index by the service before it joins the cache;
3. **unpack** each into a private temporary tree with no set-uid/set-gid bit,
   archive owner or device node ever written (:func:`aptget.extract_one`);
   maintainer scripts are read, never run;
4. **replay** what the scripts would have done that programs rely on
   (:mod:`binderbox.builders.aptreplay`): alternatives links, the host's ``/etc``
   files of installed dependencies, generated registries (those commands run in a
   build sandbox as a leased uid with the layer shown);
5. **publish**: the tree is made the service's, readable by all, writable by no
   sandbox uid (:func:`~binderbox.runtime.ownership.take_back`), then renamed into
   ``<root>/<key>``: a layer is complete or absent, never half-written.

The key is ``(the host's installed package set, the sorted list, LAYER_VERSION)``:
one layer serves every environment with that list on this host, and a host whose
packages changed makes new ones (the environment key covers the same pair through
:meth:`AptLayers.identity`).  Builds of one key wait for each other (a lock per
key); downloads into the shared cache are one at a time.  Environments record the
layer's path in their ``build.json`` (``system_layers``) and sessions show it with
:func:`~binderbox.runtime.layout.show_layers`.

Layers are evicted least recently used first while they take more than
:attr:`AptLayers.budget` (:meth:`AptLayers.gc`, the store's scheme:
:class:`~binderbox.store.lru.KeyedFolders`).  A build holds its layer's
``locks/<key>.use`` shared from before it is made until the build ends
(:meth:`AptLayers.hold`), and a session for as long as it runs (the pipeline
passes the lock file, :func:`~binderbox.runtime.layout.layer_use_lock`, to the
spawner): a layer in use is never evicted.  An
environment whose layer was evicted is built again at its next launch.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
from collections.abc import AsyncIterator, Iterable, Sequence
from pathlib import Path
from typing import Any

from traitlets import Bool, Float, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from ..errors import BuildError
from ..runtime.host import SandboxHost
from ..runtime.ownership import take_back
from ..runtime.provision import make_reachable
from ..runtime.sandbox import require_overlays
from ..store.files import new_temp, remove_temps, remove_tree
from ..store.locks import FileLock
from ..store.lru import KeyedFolders
from ..util.sizes import human, parse_size, valid_size
from . import aptdownload, aptget, aptreplay

#: bump when the same packages would give a different tree (the replay steps)
LAYER_VERSION = "3"
DPKG_STATUS = Path("/var/lib/dpkg/status")
APT_LISTS = Path("/var/lib/apt/lists")
#: seconds between two tries of a lock another build holds
LOCK_INTERVAL = 0.5
#: the installed package set, by the status file's (mtime, size)
_installed: dict[tuple[int, int], tuple[str, ...]] = {}


class AptLayers(LoggingConfigurable):
    """Makes and caches system layers.  See the module docstring."""

    root = Unicode(
        help="""Where layers, their locks and the shared .deb cache live.  Default: a
        'layers' folder beside the builder's cache_dir (the data directory's)."""
    ).tag(config=True)
    debs_dir = Unicode(
        help="""Where downloaded .deb files are kept, shared by every layer (a layer made
        again downloads only what is missing).  Default: 'debs' in root."""
    ).tag(config=True)
    apt_get = Unicode("apt-get", help="apt-get, run on the host.").tag(config=True)
    apt_cache = Unicode("apt-cache", help="apt-cache, run on the host.").tag(config=True)
    update_lists = Bool(
        True,
        help="""Run `apt-get update` (as root) before the first layer when the host has no
        package lists.  Lists older than that are used as they are: refreshing them is the
        operator's (apt's own timers), and a refresh changes no existing layer.""",
    ).tag(config=True)
    size_limit = Unicode(
        "4G",
        help="""The most the packages of one layer may take once unpacked ('' = no limit);
        a list over it fails before anything is downloaded.""",
    ).tag(config=True)

    budget = Unicode(
        "20G",
        help="""Disk the published layers may take together ('' or 0 = no limit).  Over
        it, the periodic clean-up deletes least-recently-used layers that no running
        build or session uses; an environment whose layer was deleted is built again
        when it is next launched.""",
    ).tag(config=True)
    min_idle = Float(
        600.0, help="Seconds after its last use during which a layer is never evicted."
    ).tag(config=True)

    @default("root")
    def _default_root(self) -> str:
        base = os.environ.get("XDG_CACHE_HOME") or str(Path("~/.cache").expanduser())
        return str(Path(base) / "binderbox" / "layers")

    @default("debs_dir")
    def _default_debs_dir(self) -> str:
        return str(Path(self.root) / "debs")

    @validate("size_limit", "budget")
    def _valid_size(self, proposal: dict[str, Any]) -> str:
        return valid_size(proposal)

    # -- keys -----------------------------------------------------------------

    def installed(self) -> tuple[str, ...]:
        """The host's installed packages, ``name:arch=version`` (blocking; cached while
        dpkg's status file is unchanged)."""
        try:
            info = DPKG_STATUS.stat()
            mark = (info.st_mtime_ns, info.st_size)
        except OSError:
            mark = (0, 0)
        if mark not in _installed:
            _installed.clear()
            _installed[mark] = aptget.installed_text()
        return _installed[mark]

    def identity(self) -> str:
        """What layers depend on besides their list: the host's installed package set
        (part of an environment's key, blocking)."""
        return f"apt-{aptget.digest(self.installed())}-{LAYER_VERSION}"

    def key(self, names: Iterable[str]) -> str:
        """The key of the layer of ``names`` on this host."""
        material = {"host": self.identity(), "packages": aptget.check_names(names)}
        blob = json.dumps(material, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    @property
    def path(self) -> Path:
        """:attr:`root`, created on first use."""
        root = Path(self.root).resolve()
        if os.geteuid() == 0:  # the registries' sandboxes run as other uids
            make_reachable(root)
        for sub in ("tmp", "locks"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        Path(self.debs_dir).mkdir(parents=True, exist_ok=True)
        return root

    def tree(self, names: Iterable[str]) -> Path | None:
        """The published tree of ``names`` (``None``: the host has them all, or not
        made yet: see :meth:`ensure`)."""
        folder = self.path / self.key(names)
        try:
            info = json.loads((folder / "layer.json").read_text())
        except (OSError, ValueError):
            return None
        return folder / "tree" if info.get("packages") else None

    @property
    def folders(self) -> KeyedFolders:
        """The layers as the store's keyed folders (their last use: ``layer.json``)."""
        root = self.path
        return KeyedFolders(root, root, stamp=lambda key: root / key / "layer.json")

    def hold(self, names: Iterable[str]) -> FileLock:
        """The use lock of the layer of ``names`` (made or not yet), shared: it is not
        evicted while held (blocking)."""
        return self.folders.use(self.key(names))

    def gc(self) -> list[str]:
        """Evict least-recently-used layers over :attr:`budget`; their keys (blocking)."""
        budget = parse_size(self.budget)
        if not budget or not Path(self.root).is_dir():
            return []
        removed = self.folders.evict(budget, self.min_idle)
        for entry in removed:
            self.log.info("Evicted system layer %s (%s)", entry.key, human(entry.size))
        return [entry.key for entry in removed]

    def published(self, names: Iterable[str]) -> bool:
        """Whether the layer of ``names`` is made (an empty one included)."""
        return (self.path / self.key(names) / "layer.json").is_file()

    # -- making ---------------------------------------------------------------

    async def ensure(self, names: Sequence[str], host: SandboxHost) -> AsyncIterator[str]:
        """Make the layer of ``names`` unless it is published; yields log lines.  Then
        :meth:`tree` names it.  Failures are BuildErrors; nothing half-made is left."""
        names = aptget.check_names(names)
        key = await asyncio.to_thread(self.key, names)
        if await asyncio.to_thread(self.published, names):
            await asyncio.to_thread(self.folders.touch, key)
            yield f"Reusing the system packages layer for: {' '.join(names)}"
            return
        root = self.path
        lock = await FileLock.wait(root / "locks" / f"{key}.lock", LOCK_INTERVAL)
        try:
            if self.published(names):  # made meanwhile by whoever held the lock
                yield f"Reusing the system packages layer for: {' '.join(names)}"
                return
            await asyncio.to_thread(remove_temps, root / "tmp", key)
            tmp = new_temp(root / "tmp", key)
            try:
                async for line in self._make(names, tmp, host):
                    yield line
                tmp.rename(root / key)
            except BaseException:
                await asyncio.shield(asyncio.to_thread(remove_tree, tmp))
                raise
        finally:
            lock.release()

    @property
    def apt(self) -> aptget.Apt:
        """apt's clients as layers run them: with a package cache file of their own in
        ``<root>/apt`` (hosts made from container images keep none)."""
        cache = self.path / "apt"
        cache.mkdir(exist_ok=True)
        options = ["-o", f"Dir::Cache::pkgcache={cache / 'pkgcache.bin'}"]
        options += ["-o", f"Dir::Cache::srcpkgcache={cache / 'srcpkgcache.bin'}"]
        return aptget.Apt(self.apt_get, self.apt_cache, tuple(options))

    async def _make(self, names: list[str], tmp: Path, host: SandboxHost) -> AsyncIterator[str]:
        apt = self.apt
        await self._ensure_lists(apt)
        yield f"Resolving system packages: {' '.join(names)}"
        packages = await aptget.closure(apt, names)
        if not packages:
            yield "This server has every one of them installed: no layer needed."
            self._write_info(tmp, names, packages, [])
            return
        await asyncio.to_thread(require_overlays)
        yield f"{len(packages)} package(s) to add: {' '.join(p.pin for p in packages)}"
        installed = frozenset(line.split("=", 1)[0] for line in self.installed())
        roots = sorted({*names, *(p.name for p in packages)})
        deps = asyncio.ensure_future(aptget.installed_dependencies(apt, roots, installed))
        download = asyncio.ensure_future(self._download(apt, packages, host))
        try:  # the size is known long before a download too big could end
            await self._check_size(apt, packages)
            debs = await download
            tree = tmp / "tree"
            tree.mkdir()
            await aptget.extract(debs, tree)
            yield f"Unpacked {len(debs)} package(s)"
            async for line in self._replay(debs, await deps, tree, host):
                yield line
        finally:
            await _cancel(deps, download)
        await asyncio.to_thread(take_back, tree)
        self._write_info(tmp, names, packages, debs)

    async def _replay(
        self, debs: list[Path], deps: list[str], tree: Path, host: SandboxHost
    ) -> AsyncIterator[str]:
        await asyncio.to_thread(aptreplay.merge_usr, tree)
        scripts = await asyncio.to_thread(lambda: [aptget.postinst(deb) for deb in debs])
        made = await asyncio.to_thread(aptreplay.alternatives, tree, scripts)
        if made:
            yield f"Alternatives: {' '.join(made)}"
        files = await asyncio.to_thread(aptreplay.generated, tree)
        if files:
            yield f"Configuration made from the packages' templates: {' '.join(files)}"
        copied = await asyncio.to_thread(aptreplay.host_etc, tree, deps)
        if copied:
            yield f"Configuration of {len(deps)} installed dependencies: {copied} entries"
        await asyncio.to_thread(take_back, tree)  # what the registries' sandboxes read
        todo = aptreplay.needed(tree)
        async for line in aptreplay.registries(host, tree, todo):
            yield line

    async def _download(
        self, apt: aptget.Apt, packages: list[aptget.Package], host: SandboxHost
    ) -> list[Path]:
        debs_dir = Path(self.debs_dir)
        lock = await FileLock.wait(debs_dir / ".lock", LOCK_INTERVAL)
        try:
            return await aptdownload.download(apt, packages, debs_dir, host)
        finally:
            lock.release()

    async def _check_size(self, apt: aptget.Apt, packages: Sequence[aptget.Package]) -> None:
        limit = parse_size(self.size_limit)
        if not limit:
            return
        size = await aptget.installed_size(apt, packages)
        if size > limit:
            raise BuildError(
                f"The packages of apt.txt take {human(size)} installed, more than this "
                f"service allows ({human(limit)}).",
                hint="Name fewer or smaller packages, or ask the operator for a larger limit.",
                reason="apt_size",
            )

    async def _ensure_lists(self, apt: aptget.Apt) -> None:
        if any(APT_LISTS.glob("*_Packages*")) or not self.update_lists or os.geteuid():
            return
        lock = await FileLock.wait(self.path / "locks" / "update.lock", LOCK_INTERVAL)
        try:  # one update at a time (apt's own lock would fail the second)
            if any(APT_LISTS.glob("*_Packages*")):
                return
            code, out = await aptget.run(apt.apt_get("update", "-q"))
        finally:
            lock.release()
        if code != 0:
            raise BuildError(
                "This server's package lists could not be updated (apt-get update failed).",
                reason="apt_failed",
                log_message=out,
            )

    def _write_info(
        self, tmp: Path, names: list[str], packages: list[aptget.Package], debs: list[Path]
    ) -> None:
        info = {
            "names": names,
            "packages": [p.pin for p in packages],
            "host": self.identity(),
            "layer_version": LAYER_VERSION,
            "download_bytes": sum(deb.stat().st_size for deb in debs),
        }
        (tmp / "layer.json").write_text(json.dumps(info, indent=1) + "\n")


async def _cancel(*tasks: asyncio.Future[Any]) -> None:
    """Cancel what of ``tasks`` still runs and wait until it has stopped (its processes
    killed)."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
