"""The launch flow in one place: spec -> resolved -> environment -> session.

:class:`LaunchPipeline` yields typed events (``binderbox.events``) and knows
nothing about HTTP.  The web handler streams them as server-sent events, the
CLI renders them, tests consume them directly::

    spec ─ provider.resolve ─ content.ensure ─ detect ─ key ─ store
           (fetching)         (fetching)                      │ cached ─ built
                                                              │ else build ─ waiting… ─
                                                              │   building… ─ built
         ─ datasets (fetching) ─ launcher.launch (launching…) ─ ready

A build waits for a slot when :attr:`Store.concurrent_builds` are running: its
visitors get ``waiting`` events saying how many builds are ahead, each time that
changes.  The build's time limit (:attr:`LaunchPipeline.build_timeout`) starts
when it runs.

A launch never raises a :class:`~binderbox.errors.BinderboxError`: it ends
with a ``failed`` event carrying the user message and status code.  Its
session is the consumer's once the consumer iterates past ``ready`` (to the
end); one that stops iterating before (a visitor who left) abandons the
launch, and the launcher removes the session again (see
:mod:`binderbox.sessions.launcher`).  A build it had started or joined goes
on for whoever launches the same environment next -- unless it was still waiting
for a slot and all its visitors left: then it gives up its place in the queue.  Anything
else escaping a stage is a bug: it is logged with its traceback and the user
gets a generic ``failed`` event.

The first two stages are public, for ``binderbox data fetch``: it runs
:meth:`LaunchPipeline.resolve_and_fetch`, and :meth:`LaunchPipeline.environment`
on the same state when a dataset needs the environment.  What is read from a
fetched tree (its spec, its ``data_requirement.json``) is read once per tree
(:class:`TreeFacts`), not once per launch; so are its datasets' cache keys,
once per tree and environment.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import shutil
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from traitlets import Bool, Dict, Float, Instance, Unicode, default
from traitlets.config import LoggingConfigurable

from . import metrics
from .builders.base import Builder
from .content import ContentCache
from .data import DataCache, DataEntry, DatasetFolder, read_requirements
from .environments import EnvSpec
from .environments.detect import default_environment_notice, detect
from .errors import BinderboxError, BuildError, BuildTimeout, DataError, LaunchError
from .events import Building, Built, Event, Failed, Fetching, Ready, Waiting
from .images import ImageTarget
from .images.stage import found_in_registry, push_built
from .providers import make_provider
from .providers.base import RepoProvider, Resolved
from .providers.gitutil import loggable
from .providers.policy import enforce_policy
from .runtime.layout import env_layers, layer_use_lock
from .sessions import SessionLauncher, SessionRequest
from .sessions.credentials import with_git_tokens
from .sessions.identity import ANONYMOUS, Visitor
from .sessions.sizes import SessionSizes
from .store import Env, Finisher, SharedBuild, Store
from .store.locks import FileLock

#: how many fetched trees the pipeline remembers what it read from (:class:`TreeFacts`)
TREE_MEMORY = 512


@dataclass(frozen=True)
class LaunchRequest:
    """One request to build (and launch) a repository.

    ``provider``
        the BinderHub prefix (``gh``, ``git``...)
    ``spec``
        the spec as asked, e.g. ``owner/repo/main``
    ``launch_host``
        the public base URL of the service, e.g. ``http://host:8000/``
    ``build_only``
        build without launching (``/build?build_only=true``)
    ``client_ip``
        the requester's address (logs, rate limits)
    ``ref``
        a ref given apart from the spec (the CLI's ``--ref``)
    ``visitor``
        who asks (:mod:`binderbox.sessions.identity`; anonymous by default)
    ``size``
        the operator's session size asked for, by name ('' = the default;
        :mod:`binderbox.sessions.sizes`)
    """

    provider: str
    spec: str
    launch_host: str = ""
    build_only: bool = False
    client_ip: str = ""
    ref: str | None = None
    visitor: Visitor = ANONYMOUS
    size: str = ""


@dataclass
class TreeFacts:
    """What the pipeline reads from a fetched tree, once: trees never change once
    fetched (their path names the version)."""

    #: the environment spec (detection)
    spec: EnvSpec
    #: the ``data_requirement.json`` datasets, read by the first launch that needs them
    datasets: tuple[DataEntry, ...] | None = None
    #: those datasets grouped and keyed (:meth:`DataCache.folders`), per environment key
    folders: dict[str, tuple[DatasetFolder, ...]] = field(default_factory=dict)


@dataclass
class LaunchState:
    """What one run of the pipeline has learnt so far (for the later stages)."""

    provider: RepoProvider
    resolved: Resolved | None = None
    content: Path | None = None
    tree: TreeFacts | None = None
    env: Env | None = None
    #: the environment's key, once known (``env`` may stay None: image sessions)
    env_key: str = ""
    #: image sessions: the environment's image in the registry, which the session runs
    image: str = ""
    data_mounts: dict[str, Path] = field(default_factory=dict)
    data_folders: tuple[DatasetFolder, ...] = ()
    #: a session follows the build (not ``build_only``): what ``built`` says next
    launching: bool = True

    @property
    def spec(self) -> EnvSpec | None:
        """The environment spec of the content, once detected."""
        return self.tree.spec if self.tree is not None else None

    @property
    def mounted_env(self) -> Env | None:
        """The store's environment the session mounts (None: it runs the image)."""
        return None if self.image else self.env


class LaunchPipeline(LoggingConfigurable):
    """Resolve, fetch, detect, build or reuse, then launch.  See the module docstring."""

    allow_local = Bool(
        False,
        help="""Accept local paths and file:// URLs as repositories.

        Off for the web service: they would let any visitor read repositories
        on the server's disk.  The CLI, run by the operator, turns it on.""",
    ).tag(config=True)
    build_timeout = Float(
        900.0,
        help="""Seconds a build may run before it is stopped and fails (time waiting in the
        build queue, Store.concurrent_builds, does not count).  uv builds take seconds to
        a few minutes, even large ones; a build slot held longer keeps every build behind
        it waiting.""",
    ).tag(config=True)
    default_python = Unicode(
        "3.10", help="Python version for repositories that name none (repo2docker's default)."
    ).tag(config=True)
    allow_default_environment = Bool(
        True, help="Build a default environment for repositories with no environment files."
    ).tag(config=True)

    work_dir = Unicode(
        "", help="Scratch directory for build copies of repository content (default: system temp)."
    ).tag(config=True)

    build_home = Unicode(
        "",
        help="""Where a build's copy of the repository goes ('' = a new folder under
        work_dir).  A build pod (`binderbox build --in-pod`) copies it into its home
        folder, where the build sees it without mounts.""",
    ).tag(config=True)

    store = Instance(Store)
    builder = Instance(Builder)
    content = Instance(ContentCache)
    data = Instance(DataCache, allow_none=True)
    launcher = Instance(SessionLauncher, allow_none=True)
    images = Instance(ImageTarget, allow_none=True, help="Image mode's registry, if any.")
    image_sessions = Bool(
        False,
        help="""Sessions run each environment's image from the registry (``images``), not
        its folder of the store: the registry is asked first, and an environment only the
        store has is pushed before its launch.  binderbox serve sets it from
        c.KubernetesSessions.mode.""",
    )
    sizes = Instance(SessionSizes, help="The session sizes the operator offers.")
    git_tokens = Dict(
        Unicode(), help="{git host: auth_state key} of logins (binderbox serve sets it)."
    )

    @default("sizes")
    def _default_sizes(self) -> SessionSizes:
        return SessionSizes(parent=self)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._trees: dict[Path, TreeFacts] = {}
        #: the builder's work on published environments (bytecode), in the background
        self.finisher = Finisher(
            self.store, self.builder.finish, self.builder.finished, parent=self
        )

    def launch(self, request: LaunchRequest) -> AsyncGenerator[Event, None]:
        """Run the whole flow for ``request``; ends with ``built``/``ready`` or ``failed``."""
        return self._guarded(request, self._flow)

    async def _guarded(
        self,
        request: LaunchRequest,
        flow: Callable[[LaunchRequest], AsyncGenerator[Event, None]],
    ) -> AsyncGenerator[Event, None]:
        try:
            async with contextlib.aclosing(flow(request)) as events:  # closing this closes it
                async for event in events:
                    yield event
        except BinderboxError as exc:
            self.log.info(
                "launch of %s/%s failed: %s",
                request.provider,
                loggable(request.spec),
                loggable(exc.log_message),
            )
            yield exc.to_event()
        except Exception:
            self.log.exception(
                "unexpected error launching %s/%s", request.provider, loggable(request.spec)
            )
            yield Failed(
                message="Internal error: the launch failed unexpectedly."
                " The operator's log has the details.",
                status_code=500,
                reason="internal",
            )

    async def _flow(self, request: LaunchRequest) -> AsyncGenerator[Event, None]:
        state = LaunchState(provider=self.provider_for(request), launching=not request.build_only)
        if self.launcher is not None:  # their own git tokens: private repositories
            visitor = await with_git_tokens(self.launcher.hub, request.visitor, self.git_tokens)
            request = dataclasses.replace(request, visitor=visitor)
        state.provider.use_visitor(request.visitor)
        if not request.build_only:  # refused before anything is built (SizeRefused)
            visitor = request.visitor
            self.sizes.choose(request.size, visitor.logged_in, visitor.groups)
        async for event in self.resolve_and_fetch(state):
            yield event
        async with contextlib.aclosing(self.environment(state)) as stage:  # a visitor who
            async for event in stage:  # leaves a queued build frees its place at once
                yield event
        if request.build_only:
            return
        if state.env is None and not state.image:  # found in the registry, not in the store
            raise LaunchError("Sessions from registry images need a backend that runs images.")
        async for event in self._datasets(state):
            yield event
        async with contextlib.aclosing(self._launch(state, request)) as launch:
            async for event in launch:
                yield event

    def fetch(self, request: LaunchRequest) -> AsyncIterator[Event]:
        """Only the first stage, as the request's visitor (their git tokens): resolve and
        fetch into the content cache; ``fetching`` events, or ``failed``.  A build Job's
        fetch init container (:mod:`binderbox.builders.kube`) runs it for a private
        repository, so that the build after it needs no token."""
        return self._guarded(request, self._flow_fetch)

    async def _flow_fetch(self, request: LaunchRequest) -> AsyncGenerator[Event, None]:
        state = LaunchState(provider=self.provider_for(request))
        state.provider.use_visitor(request.visitor)
        async for event in self.resolve_and_fetch(state):
            yield event

    def provider_for(self, request: LaunchRequest) -> RepoProvider:
        """The provider for the request (raises SpecError/UnknownProvider/SpecNotAllowed)."""
        spec = f"{request.provider}/{request.spec}" if request.provider else request.spec
        return make_provider(spec, request.ref, parent=self, allow_local=self.allow_local)

    async def resolve_and_fetch(self, state: LaunchState) -> AsyncIterator[Event]:
        """The first stage: the operator's policy, then resolve the spec and fetch its content.

        Sets ``state.resolved`` and ``state.content``.  Raises
        :class:`~binderbox.errors.BinderboxError`, as every stage does
        (:meth:`launch` turns it into the ``failed`` event).
        """
        await enforce_policy(state.provider)
        yield Fetching(message=f"Resolving {unquote(state.provider.spec)}")
        state.resolved = resolved = await state.provider.resolve()
        if self.content.may_be_private(resolved):  # e.g. a commit named in full: the
            await state.provider.check_access()  # resolve may not have asked the server
        yield Fetching(message=f"Resolved to {resolved.version}")
        for notice in state.provider.notices():
            yield Fetching(message=notice)
        async for event in self.content.ensure(state.provider, resolved):
            yield event
        state.content = self.content.path_for(resolved)

    async def _detect(self, content: Path) -> TreeFacts:
        """What the pipeline knows of a fetched tree, its spec detected once: trees
        never change once fetched, and detection hashes the repository when the
        environment depends on it -- work every later launch would repeat."""
        found = self._trees.get(content)
        if found is None:
            spec = await asyncio.to_thread(
                detect,
                content,
                default_python=self.default_python,
                allow_default=self.allow_default_environment,
            )
            if len(self._trees) >= TREE_MEMORY:
                self._trees.pop(next(iter(self._trees)))
            found = self._trees[content] = TreeFacts(spec)
        return found

    async def environment(self, state: LaunchState) -> AsyncGenerator[Event, None]:
        """The second stage: detect the content's spec, reuse or build its environment.

        Needs :meth:`resolve_and_fetch` done on ``state``; sets ``state.tree``
        and ``state.env``; ends with ``built``.
        """
        assert state.content is not None and state.resolved is not None
        state.tree = await self._detect(state.content)
        spec = state.tree.spec
        if not spec.sources and spec.kind == "python":  # nothing in the repository says
            yield Fetching(message=default_environment_notice(spec.python))
        state.env_key = key = await self._key(spec)
        if self.image_sessions:  # the session runs the image: the registry is asked first
            assert self.images is not None
            state.image = self.images.image_name(key)
            found = await found_in_registry(self.images, key)
            if found is not None:
                yield found
                return
        env = await asyncio.to_thread(self.store.get, key)  # SQLite and a lock
        if env is not None and not await asyncio.to_thread(_layers_present, env.path):
            await self._without_layers(key)
            env = None
        if env is not None:
            metrics.CACHE_HITS.inc()
            state.env = env
            self.finisher.ensure(env)  # when a crash or shutdown stopped it
            if self.image_sessions:  # built before: the registry lacks its image
                async for event in push_built(self.images, self.finisher, self.store, env):
                    yield event
            yield Built(
                message="Found built environment" + (", launching..." if state.launching else "."),
                image_name=key,
                path=str(env.path),
                cached=True,
            )
            return
        found = None if self.image_sessions else await found_in_registry(self.images, key)
        if found is not None:  # image mode: the registry has it (state.env stays None)
            yield found
            return
        async with contextlib.aclosing(self._build(state, key)) as building:
            async for event in building:
                yield event

    async def _without_layers(self, key: str) -> None:
        """An environment whose system layer was evicted: removed, to be built again;
        LaunchError while something still uses it (its bytecode being compiled)."""
        if not await asyncio.to_thread(self.store.remove, key):
            raise LaunchError(
                "This environment's system packages were cleaned up while it is busy.",
                hint="Launch again in a minute: it will be rebuilt.",
                log_message=f"environment {key} lost a system layer and is in use",
            )

    async def _key(self, spec: EnvSpec) -> str:
        interpreter = await asyncio.to_thread(self.builder.interpreter, spec)  # may probe
        return spec.key(interpreter=interpreter, builder_version=self.builder.key_version(spec))

    def build_into(self, request: LaunchRequest, output: Path) -> AsyncIterator[Event]:
        """Build the request's environment into the empty folder ``output`` itself, not
        into the store: a build pod's output, which the service that started the pod
        publishes (:mod:`binderbox.builders.kube`).  Its bytecode is compiled before
        the last event, ``built`` (the key, ``output``), or ``failed``."""
        return self._guarded(request, functools.partial(self._flow_into, output=output))

    async def _flow_into(
        self, request: LaunchRequest, *, output: Path
    ) -> AsyncGenerator[Event, None]:
        state = LaunchState(provider=self.provider_for(request))
        async for event in self.resolve_and_fetch(state):
            yield event
        assert state.content is not None and state.resolved is not None
        state.tree = await self._detect(state.content)
        spec = state.tree.spec
        if not spec.sources and spec.kind == "python":  # nothing in the repository says
            yield Fetching(message=default_environment_notice(spec.python))
        key = await self._key(spec)
        if not output.is_dir() or any(output.iterdir()):
            raise BuildError(f"The build's output folder {output} is not an empty folder.")
        content = state.content if spec.needs_content else None
        lines = self._run_builder(spec, content, output, key=key, source=state.resolved)
        async for line in lines:
            yield Building(message=line)
        yield Building(message=f"Bytecode: {await self.builder.finish(output)}")
        yield Built(message="Built environment.", image_name=key, path=str(output))

    async def _build(self, state: LaunchState, key: str) -> AsyncGenerator[Event, None]:
        assert state.spec is not None and state.resolved is not None
        spec = state.spec
        # only an environment whose key covers the content may see it while building
        content = state.content if spec.needs_content else None
        resolved, tokens = state.resolved, state.provider.credentials()
        shared = self.store.build(
            key,
            lambda prefix: self._run_builder(
                spec, content, prefix, key=key, source=resolved, tokens=tokens
            ),
            spec=spec.to_json(),
            source=state.resolved.binder_persistent_request,
            publish=not self.builder.pushes_images,
        )
        try:
            if shared.joined:
                yield Waiting(message="Joining a build of the same environment already running")
            async for ahead in shared.queued():
                yield Waiting(message=self._queue_message(ahead))
            async for event in self._follow(state, shared):
                yield event
        finally:
            shared.leave()  # a build still queued whose visitors all left gives up its place
        if state.env is not None:  # else the build pushed its image itself
            async for event in push_built(self.images, self.finisher, self.store, state.env):
                yield event
        then = ", launching..." if state.launching else "."
        path = str(state.env.path) if state.env is not None else ""
        yield Built(message=f"Built environment{then}", image_name=key, path=path)

    def _queue_message(self, ahead: int) -> str:
        builds = "build" if ahead == 1 else "builds"
        slots = self.store.concurrent_builds
        return (
            f"Waiting for a build slot: {ahead} {builds} ahead of this one"
            f" (this service runs {slots} at once)."
        )

    async def _follow(self, state: LaunchState, shared: SharedBuild) -> AsyncIterator[Event]:
        """The running build's lines as ``building`` events; sets ``state.env``."""
        assert state.resolved is not None
        started = time.monotonic()
        metrics.BUILDS_INPROGRESS.inc()
        status = "failure"
        try:
            async for line in shared.follow():
                yield Building(message=line)
            state.env = env = await shared.wait()
            if env is not None:
                self.finisher.ensure(env)
            status = "success"
        finally:
            metrics.BUILDS_INPROGRESS.dec()
            if not shared.joined:
                metrics.BUILD_TIME.labels(status=status).observe(time.monotonic() - started)
                metrics.BUILD_COUNT.labels(
                    status=status, provider=state.resolved.provider, repo=state.resolved.repo_url
                ).inc()

    async def _run_builder(
        self,
        spec: EnvSpec,
        content: Path | None,
        prefix: Path,
        *,
        key: str,
        source: Resolved,
        tokens: dict[str, str] | None = None,
    ) -> AsyncIterator[str]:
        """The store's build function: a private copy of the content, a deadline."""
        workdir = Path(tempfile.mkdtemp(prefix="binderbox-build-", dir=self.work_dir or None))
        workdir.chmod(0o711)  # the build's sandbox uids enter it; nobody lists it
        try:  # (a failed build's copy may hold gigabytes: deleted off the event loop)
            copy: Path | None = None
            if content is not None:
                copy = Path(self.build_home) if self.build_home else workdir / "content"
                copier = functools.partial(shutil.copytree, symlinks=True, dirs_exist_ok=True)
                await asyncio.to_thread(copier, content, copy)
            lines = self.builder.build_for(
                spec, copy, prefix, key=key, source=source, tokens=tokens
            )
            deadline = asyncio.get_running_loop().time() + self.build_timeout
            try:
                while True:
                    try:
                        async with asyncio.timeout_at(deadline):
                            line = await anext(lines)
                    except StopAsyncIteration:
                        break
                    except TimeoutError:
                        raise BuildTimeout(
                            f"The build took longer than {self.build_timeout:g} seconds"
                            " and was stopped.",
                            hint="Ask the operator to raise the build time limit,"
                            " or make the environment smaller.",
                        ) from None
                    yield line
            finally:
                await lines.aclose()
        finally:
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, workdir, True))

    async def _datasets(self, state: LaunchState) -> AsyncIterator[Event]:
        """Fetch the repository's ``data_requirement.json`` datasets (once, cached)."""
        assert state.content is not None and state.tree is not None
        entries = await self._requirements(state.content, state.tree)
        if not entries:
            return
        if self.data is None:
            raise DataError(
                "This repository asks for datasets (data_requirement.json),"
                " but this service does not provide datasets."
            )
        folders = state.tree.folders.get(state.env_key)
        if folders is None:  # keyed once per tree and environment (the keys include it)
            folders = self.data.folders(entries, env_key=state.env_key)
            state.tree.folders[state.env_key] = folders
        env_path = state.env.path if state.env is not None else None  # code sources run there
        async for event in self.data.ensure(folders, env_path=env_path):
            yield event
        state.data_mounts = self.data.mounts(folders)
        state.data_folders = folders

    @staticmethod
    async def _requirements(content: Path, tree: TreeFacts) -> tuple[DataEntry, ...]:
        """The tree's datasets, read once (a malformed file is read again: the launch fails).

        Read in the configuration folder detection found, by its rule.
        """
        if tree.datasets is None:
            folder = tree.spec.config_dir
            tree.datasets = tuple(await asyncio.to_thread(read_requirements, content, folder))
        return tree.datasets

    def _hold(self, state: LaunchState) -> list[FileLock]:
        """Use-locks on the environment, its system layers and datasets, held until the
        session holds its own.

        Blocking.  Their paths go to the spawner (``hold_files``), which takes
        the same locks for the session's lifetime; holding them here too
        closes the window between the data step and the session's start.
        """
        holds: list[FileLock] = []
        env = state.mounted_env  # with its system layers (an image session: neither)
        if env is not None:
            env_hold = self.store.hold(env.key)
            if env_hold is None:
                raise LaunchError(
                    "The environment was removed before the session could start.",
                    hint="Launch again: it will be rebuilt.",
                    log_message=f"environment {env.key} evicted before the launch",
                )
            holds.append(env_hold)
        try:
            if env is not None:
                holds += _hold_layers(env.path)
            if self.data is not None and state.data_folders:
                holds += self.data.hold(state.data_folders)
        except BaseException:
            for hold in holds:  # a layer or dataset was removed meanwhile: hold nothing
                hold.release()
            raise
        return holds

    async def _launch(
        self, state: LaunchState, request: LaunchRequest
    ) -> AsyncGenerator[Event, None]:
        """Start a session on the built environment; ends with ``ready``."""
        assert state.resolved is not None and state.content
        if self.launcher is None:
            raise LaunchError(
                "This service builds environments but does not launch them (no hub).",
                hint="Use /build/...?build_only=true, or ask the operator.",
            )
        holds = await asyncio.to_thread(self._hold, state)
        session = SessionRequest(
            env_key=state.env_key,
            env_path=state.mounted_env.path if state.mounted_env else None,
            image=state.image,
            content_path=state.content,
            resolved=state.resolved,
            start_script=state.spec.start if state.spec else None,
            launch_host=request.launch_host,
            data_mounts=state.data_mounts,
            hold_files=[hold.path for hold in holds],
            high_quota=state.provider.is_high_quota(),
            client_ip=request.client_ip,
            visitor=request.visitor,
            size=request.size,
        )
        started = time.monotonic()
        status = "failure"
        metrics.LAUNCHES_INPROGRESS.inc()
        try:
            async with contextlib.aclosing(self.launcher.launch(session)) as events:
                async for event in events:
                    if isinstance(event, Ready):
                        status = "success"
                    yield event
        finally:
            for hold in holds:
                hold.release()
            metrics.LAUNCHES_INPROGRESS.dec()
            metrics.LAUNCH_TIME.labels(status=status, retries="0").observe(
                time.monotonic() - started
            )
            metrics.LAUNCH_COUNT.labels(
                status=status, provider=state.resolved.provider, repo=state.resolved.repo_url
            ).inc()

    async def health(self) -> list[dict[str, Any]]:
        """Health checks of the parts the pipeline owns: the store, and the builds
        (the queue, enforced here; the time limit)."""
        root = Path(self.store.root)
        usage = shutil.disk_usage(root if root.exists() else root.parent)
        queue = self.store.queue
        builds = {
            "service": "Builds",
            "ok": True,
            "running": queue.running,
            "waiting": queue.waiting,
            "concurrent_builds": self.store.concurrent_builds or None,
            "timeout_seconds": self.build_timeout,
        }
        return [{"service": "Store", "ok": usage.free > 0, "free_bytes": usage.free}, builds]

    def versions(self) -> dict[str, Any]:
        """The builder's part of ``/versions`` (the web layer adds the service's)."""
        members = getattr(self.builder, "members", [self.builder])
        return {
            "builder": ", ".join(f"{type(m).__name__} {m.version}" for m in members),
            "builder_info": {
                "builders": [{"name": type(m).__name__, "version": m.version} for m in members]
            },
        }


def _layers_of(env_path: Path) -> list[Path]:
    try:
        return env_layers(env_path)
    except (OSError, ValueError):  # no build record: no layers
        return []


def _layers_present(env_path: Path) -> bool:
    """Whether every system layer ``env_path`` names is there (blocking)."""
    return all(tree.is_dir() for tree in _layers_of(env_path))


def _hold_layers(env_path: Path) -> list[FileLock]:
    """Shared use-locks on the system layers of ``env_path`` (blocking); LaunchError if
    one was evicted meanwhile."""
    holds: list[FileLock] = []
    for tree in _layers_of(env_path):
        holds.append(FileLock.acquire(layer_use_lock(tree), shared=True))
        with contextlib.suppress(OSError):  # used now: its eviction waits (min_idle)
            os.utime(tree.parent / "layer.json")
        if not tree.is_dir():
            for hold in holds:
                hold.release()
            raise LaunchError(
                "A system layer of the environment was removed before the session started.",
                hint="Launch again: it will be rebuilt.",
                log_message=f"system layer {tree} evicted before the launch",
            )
    return holds
