"""The conda builder: rattler solves and installs a conda environment at ``/srv/env``.

Kinds: ``conda`` (``environment.yml``), ``pixi`` (``pixi.toml`` and its
``pixi.lock``) and ``conda-lock`` (``conda-lock.yml``); ``EnvSpec.base`` holds
what they install (canonical JSON, see ``environments/conda.py``).  A
:class:`~binderbox.builders.python.PythonBuilder` otherwise: the same build
sandbox, uv steps, pip layer, postBuild, size limits and bytecode finishing.

Steps:

1. **Plan, on the host, no sandbox, no repository code.**  ``conda``: the
   channels under the operator's rules (:mod:`.condasolve`: mirrors, aliases,
   ``defaults`` refused unless allowed, hosts checked against the destination
   policy), then rattler's solver for ``linux-64``, every connection of its
   fetches (redirects included) checked by the build's proxy
   (:mod:`.condaproxy`).  ``python`` is added as ``python <spec.python>.*``
   when no dependency names it, so the default is today's.  ``pixi`` with a
   lock and ``conda-lock``: exactly the locked packages (:mod:`.condalocks`),
   nothing solved; their PyPI packages join the pip layer pinned exactly.
   Then every archive is downloaded by the service into one cache keyed by
   hash (:mod:`.condafetch`), each URL checked.
2. **Link, in the build sandbox, as the builder uid.**  rattler runs inside
   the sandbox (``conda_link.py``, the service's interpreter and rattler
   shown read-only) and installs the archives: it extracts them into the
   shared package cache (:attr:`CondaBuilder.pkgs_dir`, owned by the builder
   uid like uv's) and links the files into the environment, no link scripts.
   It runs *in place*: the environment is seen at ``/srv/env`` (rattler is
   told so with ``alternative_target_prefix``, which it writes into the files
   that carry a prefix placeholder), and the same path is where sessions see
   it, so nothing is relocated afterwards.  Why inside: conda archives come
   from channels a repository names, and extracting and linking them as the
   service (root) would let a crafted archive (a link planted by one package
   and written through by the next) reach the host.  Inside, a crafted
   package reaches only what the sandbox shows writable.  binderbox's own
   files (JupyterLab's overrides, the startup hook) are written by the same
   step, before any repository code, for the same reason.
3. **Hard links.**  Files are hard-linked from the package cache when no
   repository code will run in this build (no postBuild, nothing built from
   the repository), as uv does with its cache (:mod:`.caches`), and the
   cache and environment share one mount; otherwise they are copied, so no
   code of a repository can ever write a file another environment shares.
4. **pip layer, with uv** into the conda Python: the Jupyter server packages,
   ``pip:`` lines, a lock's PyPI packages (PythonBuilder's one install).

The interpreter identity (the key) of a conda environment is
``conda-linux-64`` with this machine's glibc and the default channels (which
decide what a file naming none gets); the Python inside is whatever the
solve or the lock gives.  Bytecode is compiled by this machine's interpreter
of the same ``X.Y`` (a trusted one, never the environment's own, which a
channel supplied); without one, the environment has no bytecode.
"""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
import sys
import tempfile
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

from traitlets import Bool, Dict, Float, List, Unicode, default, validate

from ..environments import ENV_PREFIX, EnvSpec
from ..errors import BuildError, EnvironmentConfigError
from ..runtime.destinations import Destinations
from ..runtime.host import Step
from ..runtime.layout import Mount, base_sandbox
from ..runtime.ownership import give_tree
from ..runtime.process import last_line
from ..runtime.provision import provision
from ..util.sizes import human, parse_size, valid_size
from . import caches, condasolve
from .buildrun import BasePlan, BuildRun, too_big
from .conda_pypi import PypiCondaBuilder
from .condafetch import Archive, fetch_all, package_cache
from .condalocks import Locked, read_conda_lock, read_pixi_lock
from .condaproxy import PolicyProxy
from .interpreters import Interpreter
from .python import PythonBuilder
from .seed import LAB_OVERRIDES, STARTUP_HOOK

#: where the conda step sees its parts
RUNNER = Path(__file__).with_name("conda_link.py")
INSIDE = "/run/binderbox/conda"
_LAB = "share/jupyter/lab/settings/overrides.json"


@dataclass
class CondaPlan:
    """The packages a conda build installs (``BasePlan.extra``)."""

    archives: list[Archive]
    paths: list[Path] = field(default_factory=list)
    specs: list[str] = field(default_factory=list)
    #: a lock's PyPI packages (requirement lines, pinned), under the pip layer's own
    pypi: list[str] = field(default_factory=list)


class CondaBuilder(PythonBuilder):
    """Builds ``conda``, ``pixi`` and ``conda-lock`` specs.  See the module docstring."""

    kinds: ClassVar[tuple[str, ...]] = ("conda", "pixi", "conda-lock")
    version: ClassVar[str] = "1"

    default_channels = List(
        Unicode(),
        ["conda-forge"],
        help="Channels of an environment file that names none (names or URLs).",
    ).tag(config=True)
    channel_alias = Unicode(
        "https://conda.anaconda.org",
        help="Where a channel given by name is: <channel_alias>/<name>.",
    ).tag(config=True)
    mirrors = Dict(
        Unicode(),
        help="""Channels fetched from elsewhere: a channel's name or URL -> the mirror's
        URL, e.g. {'conda-forge': 'https://mirror.example.org/conda-forge'}.  Package URLs
        in lock files under a mirrored channel are fetched from the mirror too.  Mirrors
        are the operator's: their hosts are not checked against the destination policy.""",
    ).tag(config=True)
    allow_defaults = Bool(
        False,
        help="""Allow the 'defaults' channel (Anaconda's repository, whose terms of service
        bind large organisations), as repo2docker refuses it by default.""",
    ).tag(config=True)
    defaults_channels = List(
        Unicode(),
        ["https://repo.anaconda.com/pkgs/main", "https://repo.anaconda.com/pkgs/r"],
        help="What 'defaults' stands for when allow_defaults is on.",
    ).tag(config=True)
    allow_private_channels = Bool(
        False,
        help="""Fetch from channels a repository names on private, loopback or this
        machine's own networks.  Off for a public service (the service itself fetches
        them).  Networks in Destinations.allowed pass either way.""",
    ).tag(config=True)
    pypi_fallback = Bool(
        False,
        help="""Build environment.yml files from PyPI with uv instead of conda channels,
        each conda spec mapped to its PyPI name (binderbox/builders/conda_pypi.py): for
        sites with a PyPI mirror and no conda channel.  pixi and conda-lock files are
        still installed from their channels.""",
    ).tag(config=True)
    pkgs_dir = Unicode(
        help="""rattler's package cache (extracted packages, shared by all builds, owned by
        the builder uid) and the downloaded archives beside it.  Default: a 'conda'
        folder beside cache_dir.  Keep it on the store's filesystem: files are
        hard-linked from it.""",
    ).tag(config=True)

    download_limit = Unicode(
        "5G",
        help="""The most one build may download of conda packages ('' or 0 = no limit),
        summed from the sizes the channels give before anything is downloaded (and
        counted while downloading): a build over it fails naming the size.""",
    ).tag(config=True)
    pkgs_budget = Unicode(
        "20G",
        help="""Disk the conda package cache (pkgs_dir: archives and what was extracted
        from them) may take ('' or 0 = no limit).  Over it, the periodic clean-up deletes
        least-recently-used packages that no running build uses; environments keep
        their files (hard links or copies).""",
    ).tag(config=True)
    pkgs_min_idle = Float(
        600.0, help="Seconds after its last use during which a conda package is kept."
    ).tag(config=True)

    @validate("download_limit", "pkgs_budget")
    def _valid_sizes(self, proposal: dict[str, Any]) -> str:
        return valid_size(proposal)

    @default("pkgs_dir")
    def _default_pkgs_dir(self) -> str:
        return str(Path(self.cache_dir).parent / "conda")

    # -- the PyPI fallback -----------------------------------------------------

    @functools.cached_property
    def fallback(self) -> PypiCondaBuilder:
        """The builder of ``conda`` specs from PyPI, when :attr:`pypi_fallback` is on."""
        builder = PypiCondaBuilder(parent=self)
        builder.host = self.host
        return builder

    def _from_pypi(self, spec: EnvSpec) -> bool:
        return self.pypi_fallback and spec.kind == "conda"

    def key_version(self, spec: EnvSpec) -> str:
        return self.fallback.key_version(spec) if self._from_pypi(spec) else self.version

    def build(self, spec: EnvSpec, content: Path | None, prefix: Path) -> AsyncGenerator[str, None]:
        """Build ``spec`` (from PyPI when :attr:`pypi_fallback` applies)."""
        if self._from_pypi(spec):
            return self.fallback.build(spec, content, prefix)
        return super().build(spec, content, prefix)

    # -- the key ------------------------------------------------------------

    def interpreter(self, spec: EnvSpec) -> str:
        """``conda-linux-64`` with this machine's glibc and the default channels."""
        if self._from_pypi(spec):
            return self.fallback.interpreter(spec)
        generic = [v.into_generic() for v in _virtual_packages()]
        libc = next((f"glibc-{g.version}" for g in generic if g.name.normalized == "__glibc"), "")
        identity = f"conda-linux-64 {libc} [{','.join(self.default_channels)}]"
        if self.system_packages(spec):  # the layer under it: the host's package set
            identity += f"+{self.layers.identity()}"
        return identity

    # -- planning (host) ----------------------------------------------------

    def rules(self) -> condasolve.ChannelRules:
        """The operator's channel settings."""
        return condasolve.ChannelRules(
            channel_alias=self.channel_alias,
            mirrors=dict(self.mirrors),
            allow_defaults=self.allow_defaults,
            defaults_channels=list(self.defaults_channels),
            allow_private_channels=self.allow_private_channels,
            destinations=Destinations(parent=self),
        )

    async def _prepare(self, plan: BasePlan) -> AsyncIterator[str]:
        rules = self.rules()
        async with PolicyProxy(rules) as proxy:  # every connection checked (condaproxy.py)
            async for line in self._plan(plan, rules, proxy):
                yield line

    async def _plan(
        self, plan: BasePlan, rules: condasolve.ChannelRules, proxy: PolicyProxy
    ) -> AsyncIterator[str]:
        spec = plan.spec
        base = json.loads(spec.base or "{}")
        if spec.kind == "conda" or (spec.kind == "pixi" and not base.get("lock")):
            channels, specs = self._conda_request(spec, base)
            chosen = rules.resolve(channels, self.default_channels)
            specs, chosen = rules.spec_channels(specs, chosen)
            for channel in chosen:
                await rules.check_url(channel.url)
            yield f"Solving {' '.join(specs)} from {', '.join(c.written for c in chosen)}"
            records = await condasolve.solve(
                chosen,
                specs,
                cache_dir=self._pkgs / "repodata",
                virtual_packages=_virtual_packages(),
                proxy=proxy,
            )
            archives = [_archive(r) for r in records]
            conda = CondaPlan(archives, specs=specs)
        else:
            locked = await asyncio.to_thread(_read_lock, spec.kind, base)
            archives = [replace(a, url=rules.mirrored(a.url)) for a in locked.archives]
            conda = CondaPlan(archives, pypi=locked.pypi)
            yield f"Installing the {len(archives)} conda packages of the lock file, as locked"
            if locked.pypi:
                yield f"and its PyPI packages: {' '.join(locked.pypi)}"
        plan.interp = _python_of(conda.archives)
        yield "Conda packages: " + " ".join(a.name for a in conda.archives)
        plan.holds += await asyncio.to_thread(self._hold, conda.archives)
        conda.paths, fetched = await fetch_all(
            conda.archives,
            self._pkgs / "archives",
            rules.check_url,
            self.host.env_size_bytes,
            proxy.url,
            parse_size(self.download_limit),
        )
        yield f"Downloaded {fetched} of {len(conda.archives)} packages (the rest were cached)"
        plan.extra = conda

    def _conda_request(self, spec: EnvSpec, base: dict[str, Any]) -> tuple[list[str], list[str]]:
        if spec.kind == "pixi":
            from ..environments.detectors.conda import pixi_request

            channels, specs = pixi_request(base.get("manifest") or "")
        else:
            channels = [str(c) for c in base.get("channels", [])]
            specs = [str(s) for s in base.get("dependencies", [])]
        if not any(condasolve.spec_name(s) == "python" for s in specs):
            specs.append(f"python {spec.python}.*")  # the default, as for Python kinds
        return channels, specs

    def _hold(self, archives: list[Archive]) -> list[Any]:
        """Use locks on ``archives`` in the package cache until the build ends: not
        evicted while it downloads and links them (blocking)."""
        cache = package_cache(self._pkgs)
        return [cache.use(a.sha256.lower()) for a in archives if a.sha256]

    @property
    def _pkgs(self) -> Path:
        """The conda cache folder (made on first use; extracted packages owned by the
        builder uid, as uv's cache)."""
        path = Path(self.pkgs_dir).resolve()
        (path / "pkgs").mkdir(parents=True, exist_ok=True)
        (path / "archives").mkdir(exist_ok=True)
        path.chmod(0o755)
        uid = self.host.builder_uid
        if uid is not None and (path / "pkgs").stat().st_uid != uid:
            give_tree(path / "pkgs", uid)
        return path

    # -- linking (sandbox) --------------------------------------------------

    def interpreter_mounts(self, interp: Interpreter, server: Interpreter | None) -> list[Mount]:
        """None: the interpreter is inside the environment."""
        return []

    def pip_spec(self, spec: EnvSpec, run: BuildRun) -> EnvSpec:
        """The pip layer: a lock's PyPI packages first, then the spec's own lines."""
        assert run.plan is not None
        conda: CondaPlan = run.plan.extra
        return replace(spec, requirements=(*conda.pypi, *spec.requirements))

    async def rebuild_base(
        self, spec: EnvSpec, run: BuildRun, cache: caches.CacheUse
    ) -> AsyncIterator[str]:
        """Link the planned conda packages into the prefix (see the module docstring);
        copies when retried with a private ``cache``."""
        assert run.plan is not None
        conda: CondaPlan = run.plan.extra
        own_code = caches.installs_own_code(spec.install_repo, spec.requirements)
        hard = cache.path == self.cache and not self.code_runs_later(spec) and not own_code
        pkgs = self._pkgs / "pkgs"
        root = caches.shared_root(pkgs, run.prefix) if hard else None
        uid = await asyncio.to_thread(run.hand_over, None, True)
        with tempfile.TemporaryDirectory(prefix="conda-plan-", dir=self._pkgs) as tmp:
            box, plan = self._link_sandbox(run, conda, Path(tmp), pkgs, root)
            (Path(tmp) / "plan.json").write_text(json.dumps(plan))
            Path(tmp).chmod(0o755)
            python = self._service_python()
            command = [str(python), "-I", f"{INSIDE}/conda_link.py", f"{INSIDE}/plan/plan.json"]
            yield f"Linking the conda packages ({'hard links' if root else 'copies'})"
            step = Step()
            async for line in self.host.run_step(
                box, command, uid=uid, step=step, trees=run.trees()
            ):
                yield line
        if step.over_limit:
            raise too_big(run, step.over_limit)
        if step.output.code != 0:
            tail = "\n".join(step.output.tail)
            raise BuildError(
                f"Installing the conda packages failed: {last_line(step.output.tail)[:300]}",
                log_message=f"conda link step failed:\n{tail}",
            )

    def _link_sandbox(
        self, run: BuildRun, conda: CondaPlan, tmp: Path, pkgs: Path, root: Path | None
    ) -> tuple[Any, dict[str, Any]]:
        """The link step's sandbox and its plan (see the module docstring)."""
        import rattler

        box = base_sandbox([], None)
        service = Path(sys.base_prefix)
        box.ro_bind(provision(service, Path(self.provision_dir)), service)
        lib = provision(Path(rattler.__file__).parent, Path(self.provision_dir))
        box.ro_bind(lib, f"{INSIDE}/lib/rattler").ro_bind(RUNNER, f"{INSIDE}/conda_link.py")
        box.ro_bind(self._pkgs / "archives", f"{INSIDE}/archives").ro_bind(tmp, f"{INSIDE}/plan")
        if root is not None:  # one mount: hard links work across it
            box.bind(root).symlink(run.prefix.resolve(), ENV_PREFIX)
            target, cache = str(run.prefix.resolve()), str(pkgs)
        else:
            box.bind(pkgs, f"{INSIDE}/pkgs").bind(run.prefix.resolve(), ENV_PREFIX)
            target, cache = ENV_PREFIX, f"{INSIDE}/pkgs"
        archives_root = self._pkgs / "archives"
        archives = [
            {
                "path": f"{INSIDE}/archives/{path.relative_to(archives_root)}",
                "url": a.url,
                "channel": a.channel,
                "fn": a.file_name,
            }
            for a, path in zip(conda.archives, conda.paths, strict=True)
        ]
        assert run.interp is not None
        site = f"lib/python{run.interp.minor}/site-packages"
        seed = {
            _LAB: json.dumps(LAB_OVERRIDES, indent=1) + "\n",
            f"{site}/_binderbox_startup.py": STARTUP_HOOK.read_text(),
            f"{site}/_binderbox_startup.pth": "import _binderbox_startup\n",
        }
        plan = {
            "rattler": f"{INSIDE}/lib",
            "archives": archives,
            "target": target,
            "prefix": ENV_PREFIX,
            "cache": cache,
            "hard_links": root is not None,
            "specs": conda.specs,
            "seed": seed,
        }
        return box, plan

    def _service_python(self) -> Path:
        """The service's own interpreter (its base, not its virtualenv's link)."""
        return Path(sys.base_prefix) / "bin" / f"python{sys.version_info[0]}.{sys.version_info[1]}"

    # -- after the build ------------------------------------------------------

    def _metadata(self, spec: EnvSpec, run: BuildRun) -> dict[str, Any]:
        assert run.plan is not None
        conda: CondaPlan = run.plan.extra
        packages = [
            {"file_name": a.file_name, "url": a.url, "channel": a.channel, "sha256": a.sha256}
            for a in conda.archives
        ]
        return {"conda_packages": packages, "interpreter_prefixes": []}

    def compiler(self, identity: str, found: list[Interpreter]) -> Interpreter | None:
        """This machine's interpreter of the environment's ``X.Y`` (see the docstring)."""
        version = identity.split("-")[1] if identity.count("-") >= 2 else ""
        minor = ".".join(version.split(".")[:2])
        return next((i for i in found if i.minor == minor and i.implementation == "cpython"), None)

    def gc(self) -> None:
        """uv's clean-up, the conda plan folders a crash left, and least-recently-used
        packages of the conda cache over :attr:`pkgs_budget`."""
        super().gc()
        for leftover in Path(self.pkgs_dir).glob("conda-plan-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        budget = parse_size(self.pkgs_budget)
        if budget and (Path(self.pkgs_dir) / "archives").is_dir():
            removed = package_cache(self._pkgs).evict(budget, self.pkgs_min_idle)
            for entry in removed:
                self.log.info("Evicted conda package %s (%s)", entry.key, human(entry.size))


def _virtual_packages() -> list[Any]:
    import rattler

    return list(rattler.VirtualPackage.detect())


def _archive(record: Any) -> Archive:
    return Archive(
        url=record.url,
        file_name=record.file_name,
        channel=record.channel or "",
        sha256=record.sha256.hex() if record.sha256 else "",
        md5=record.md5.hex() if record.md5 else "",
        size=int(record.size or 0),
    )


def _read_lock(kind: str, base: dict[str, Any]) -> Locked:
    if kind == "pixi":
        return read_pixi_lock(base["lock"], base.get("environment") or "default")
    return read_conda_lock(base.get("lock") or "")


def _python_of(archives: list[Archive]) -> Interpreter:
    """The environment's interpreter, from its ``python`` package."""
    for archive in archives:
        parts = archive.name.rsplit("-", 2)
        if len(parts) == 3 and parts[0] == "python":
            version = parts[1]
            minor = ".".join(version.split(".")[:2])
            path = Path(ENV_PREFIX) / "bin" / f"python{minor}"
            env = Path(ENV_PREFIX)
            return Interpreter(path, "cpython", version, "linux-x86_64", env, env)
    raise EnvironmentConfigError(
        "The conda environment has no python package.",
        hint="Add python to its dependencies: a Jupyter server runs on it.",
    )
