"""Where untrusted code runs on this machine: host uids, networks, limits, the supervisor.

:class:`SandboxHost` turns a :class:`~binderbox.runtime.sandbox.Sandbox` and a
command into a process started through the supervisor
(:mod:`binderbox.runtime.supervise`):

* **host uid**: when binderbox runs as root, sandboxes never do.  Each build and
  each session leases a uid of its own from ``uid_base + 1 ...`` (host-wide,
  :mod:`binderbox.runtime.leases`), so a sandbox that escaped its namespaces
  still cannot touch another's files.  A persistent home owns one uid of the top
  ``home_uids`` of the range for good, which no lease hands out: every session of
  its user runs as it (:mod:`binderbox.sessions.homes`).  One uid, ``uid_base`` itself, is the
  *builder*: it owns uv's shared package cache and runs only the uv steps that
  execute no repository code (:mod:`binderbox.builders.caches`), so nothing a
  repository runs can write that cache.  Not root: everything runs as the
  service's uid, mapped to 1000 inside, and :meth:`status` says so.
* **network**: a namespace of its own on the sandbox bridge
  (:class:`~binderbox.runtime.network.SandboxNetwork`), when the host allows;
* **limits**: a cgroup per sandbox with memory, CPU and pids limits
  (:mod:`binderbox.runtime.limits`); a process the kernel killed for memory is
  reported (:attr:`Step.oom_killed`).  The trees a build writes are held to
  :attr:`SandboxHost.env_size_limit` while it runs
  (:mod:`binderbox.runtime.treewatch`; :attr:`Step.over_limit`);
* **secrets**: bubblewrap reads its arguments (the sandbox's environment among
  them) from a memory file descriptor (``--args``), never from a command line
  that ``ps`` shows.

Sessions use the same parts from the spawner (which keeps the session's
supervisor running across hub restarts); builds and dataset code sources use
:meth:`SandboxHost.run`.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traitlets import Bool, Float, Instance, Int, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from ..util.sizes import human, parse_size, valid_size
from .inpod import direct_command, refuse_root
from .leases import Lease, NoLeaseLeft, claim
from .limits import (
    Limits,
    SessionLimits,
    cgroup_enforcement,
    default_limits,
    session_limits_status,
)
from .netns import SandboxNet
from .network import SandboxNetwork
from .process import StepOutput, StepProcess
from .sandbox import Sandbox, bwrap_path
from .treewatch import CHECK_INTERVAL, DEFAULT_FILES, WatchedTree, over_limit

#: the supervisor's command
#: (-I: isolated; the working directory is not on its path, PYTHON* variables ignored)
SUPERVISOR = [sys.executable, "-I", "-m", "binderbox.runtime.supervise"]
#: numbers this process's sandboxed steps (their cgroups' names)
_steps = itertools.count()
#: seconds between two walks of a build's trees (besides the free-space checks)
BUILD_TREE_INTERVAL = 10.0


@dataclass
class Prepared:
    """A sandbox ready to start: the supervisor's command line and the descriptors it
    must inherit (bubblewrap's arguments, then the caller's).  :meth:`close` closes
    this process's copy of the arguments descriptor once the supervisor runs (and
    again is nothing)."""

    argv: list[str]
    pass_fds: list[int]
    args_fd: int

    def close(self) -> None:
        """Close the arguments descriptor once: a second ``os.close`` of its number
        would close whatever this process opened under that number meanwhile (another
        build's lock, the event loop's own descriptors)."""
        fd, self.args_fd = self.args_fd, -1
        if fd >= 0:
            with contextlib.suppress(OSError):
                os.close(fd)


def args_memfd(data: bytes) -> int:
    """A memory file holding ``data``, positioned at its start; close-on-exec (a child
    gets it only where it is passed on purpose)."""
    fd = os.memfd_create("bwrap-args", os.MFD_CLOEXEC)
    os.write(fd, data)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd


@dataclass
class Step:
    """The end of a sandboxed step: its output tail, exit code, whether the kernel
    killed a process of it for memory, and whether it wrote past a size limit."""

    output: StepOutput = field(default_factory=StepOutput)
    oom_killed: bool = False
    #: a tree it wrote was over its limit when it ended (or when it was stopped for it)
    over_limit: str = ""


class SandboxHost(LoggingConfigurable):
    """Starts sandboxes on this machine.  See the module docstring."""

    uid_base = Int(
        2_100_000_000,
        help="""First host uid of the sandboxes (when binderbox runs as root): the builder
        uid; sandboxes lease uid_base+1 ... uid_base+uid_count-1.  Choose a range no
        account, container runtime or subordinate-uid range (/etc/subuid) uses.""",
    ).tag(config=True)
    uid_count = Int(65536, help="How many host uids the sandboxes may use.").tag(config=True)
    home_uids = Int(
        4096,
        help="""How many uids of the top of the sandbox range are kept for persistent
        homes: each logged-in user's home has one of them for good (every session of the
        user runs as it), and no build or temporary session ever leases one.""",
    ).tag(config=True)
    build_mem_limit = Unicode(
        "4G", help="Memory limit of each build step and dataset code source ('' = none)."
    ).tag(config=True)
    build_cpu_limit = Float(
        2.0, help="CPU limit of each build step and dataset code source, in cores (0 = none)."
    ).tag(config=True)
    build_pids_limit = Int(
        1024,
        help="Processes and threads a build step or dataset code source may have at once "
        "(0 = no limit).",
    ).tag(config=True)
    env_size_limit = Unicode(
        "10G",
        help="""Disk a built environment may take ('' = no limit).  A build over it fails
        ("the environment grew past this service's limit").  Measured while the build
        runs -- its environment, what it adds to the home and its private package cache,
        each held to this size; one file alone by the kernel (RLIMIT_FSIZE) -- and again
        before the environment is published.  There is no filesystem quota: see
        binderbox/runtime/treewatch.py.""",
    ).tag(config=True)
    files_limit = Int(
        DEFAULT_FILES,
        help="""Files and folders (inodes) a build's trees or a session's home may hold
        (its repository's own files besides); measured like env_size_limit.  Millions of
        empty files take the disk's inodes but hardly any bytes.""",
    ).tag(config=True)
    network = Instance(SandboxNetwork, help="The sandboxes' network (c.SandboxNetwork).")
    in_pod = Bool(
        False,
        help="""Run build steps directly as this process's uid, without bubblewrap: in a
        Kubernetes build pod, where the pod is the sandbox (unprivileged, its own
        filesystem and network policy) and user namespaces are often refused.  Refuses
        to run as root.  `binderbox build --in-pod` sets it; see
        binderbox/runtime/inpod.py.""",
    ).tag(config=True)

    @default("network")
    def _default_network(self) -> SandboxNetwork:
        return SandboxNetwork(parent=self)

    @validate("build_mem_limit", "env_size_limit")
    def _valid_size(self, proposal: dict[str, Any]) -> str:
        return valid_size(proposal)

    # -- uids -----------------------------------------------------------------

    @property
    def switches_uid(self) -> bool:
        """Whether sandboxes run as uids of their own (binderbox is root)."""
        return os.geteuid() == 0

    @property
    def builder_uid(self) -> int | None:
        """The uid of uv steps that run no repository code (None: not root)."""
        return self.uid_base if self.switches_uid else None

    def lease_uid(self) -> Lease | None:
        """A uid of its own for one sandbox (None when not root)."""
        if not self.switches_uid:
            return None
        try:
            return claim(None, "uid", range(self.uid_base + 1, self.home_uid_range.start))
        except NoLeaseLeft as err:
            raise RuntimeError(f"no sandbox uid left: {err}") from err

    @property
    def home_uid_range(self) -> range:
        """The uids of persistent homes (the top ``home_uids`` of the range)."""
        top = self.uid_base + self.uid_count
        return range(max(self.uid_base + 1, top - self.home_uids), top)

    @property
    def build_limits(self) -> Limits:
        """The limits of a build step."""
        mem = parse_size(self.build_mem_limit)
        return Limits(mem_bytes=mem, cpu=self.build_cpu_limit, pids=self.build_pids_limit)

    @property
    def env_size_bytes(self) -> int:
        """:attr:`env_size_limit` in bytes (0: none)."""
        return parse_size(self.env_size_limit)

    def status(self, sessions: SessionLimits | None = None) -> list[dict[str, Any]]:
        """For /health: the host uids, the network, and each limit of builds and (given)
        sessions with how it is enforced here."""
        if self.switches_uid:
            first, last = self.uid_base, self.uid_base + self.uid_count - 1
            uids = {"mode": "unprivileged", "range": f"{first}-{last}", "builder": first}
        else:
            uids = {
                "mode": "service uid",
                "reason": "binderbox is not running as root: sandboxes run as its own uid "
                "(mapped to 1000 inside)",
            }
        checks = [{"service": "Sandbox uids", "ok": True, **uids}, self.network.status()]
        checks.append(self.build_limits_status())
        if sessions is not None:
            checks.append(session_limits_status(sessions))
        return checks

    def build_limits_status(self) -> dict[str, Any]:
        """How each limit of a build step is enforced on this host (for /health)."""
        size = self.env_size_bytes
        env_size: dict[str, Any] = {"limit": None, "enforced": "no limit set"}
        if size:
            env_size = {
                "limit": human(size),
                "bytes": size,
                "enforced": "measured",
                "how": f"no filesystem quota: while a build runs the free space of what it "
                f"writes is looked at every {CHECK_INTERVAL:g} s, its folders are measured "
                f"when that could mean they are over and every {BUILD_TREE_INTERVAL:g} s, "
                "one file alone is held to the limit by the kernel (RLIMIT_FSIZE); the "
                "environment is measured again before it is published",
            }
        cgroups = default_limits().status
        return {
            "service": "Build limits",
            "ok": True,
            "limits": {**cgroup_enforcement(self.build_limits, cgroups), "env_size": env_size},
            "cgroups": cgroups.to_json(),
        }

    # -- starting ---------------------------------------------------------------

    async def ensure_network(self) -> None:
        """The sandbox network as these settings make it
        (:meth:`SandboxNetwork.ensure_current`)."""
        await asyncio.to_thread(self.network.ensure_current)

    def prepare(
        self,
        box: Sandbox,
        command: Sequence[str],
        *,
        uid: int | None,
        net: SandboxNet | None = None,
        cgroups: Sequence[Path] = (),
        options: Sequence[str] = (),
        keep_fds: Sequence[int] = (),
    ) -> Prepared:
        """The supervisor's command for ``command`` in ``box``; see the module docstring.

        ``options``: more supervisor options (watchdogs); ``keep_fds``: descriptors
        the supervisor holds for its life (use-locks, leases)."""
        if self.in_pod:
            return self._prepare_in_pod(box, command, cgroups, options, keep_fds)
        if net is not None:
            box.file(self.network.resolv_conf(), "/etc/resolv.conf")
        bwrap, options_file = bwrap_path(), box.options_file()  # what can fail, first
        fd = args_memfd(options_file)
        argv = [*SUPERVISOR]
        for group in cgroups:
            argv += ["--cgroup", str(group)]
        if uid is not None:
            argv += ["--uid", str(uid)]
        if net is not None:
            argv += ["--net", net.to_arg()]
        argv += [*options, "--pass-fd", str(fd), "--", bwrap, "--args", str(fd), "--"]
        argv += command
        return Prepared(argv, [fd, *keep_fds], fd)

    def _prepare_in_pod(
        self,
        box: Sandbox,
        command: Sequence[str],
        cgroups: Sequence[Path],
        options: Sequence[str],
        keep_fds: Sequence[int],
    ) -> Prepared:
        """The supervisor's command for ``command`` run directly (:attr:`in_pod`)."""
        refuse_root()
        argv = [*SUPERVISOR]
        for group in cgroups:
            argv += ["--cgroup", str(group)]
        argv += [*options, "--", *direct_command(box, command)]
        return Prepared(argv, list(keep_fds), -1)

    @contextlib.asynccontextmanager
    async def run(
        self,
        box: Sandbox,
        command: Sequence[str],
        *,
        uid: int | None,
        step: Step,
        trees: Sequence[WatchedTree] = (),
    ) -> AsyncIterator[StepProcess]:
        """Start a build step or code source: its own network, cgroup and (given) uid;
        its orphans reaped; ``trees`` (what it writes on the host) held to their limits,
        and no file past the largest of them.  Leaving the context kills what is left of
        it and fills ``step.oom_killed``."""
        net, lease = None, None
        if not self.in_pod:  # in a pod: the pod's network and its policy
            await self.ensure_network()
            if self.network.enabled:
                net, lease = self.network.claim("build")
        name = f"build-{os.getpid()}-{next(_steps)}"
        limits = default_limits()
        try:
            cgroups = limits.create(name, self.build_limits)
            prepared = self.prepare(
                box,
                command,
                uid=uid,
                net=net,
                cgroups=cgroups,
                options=["--reap-orphans", "--die-with-parent", *tree_options(trees)],
                keep_fds=[lease.fd] if lease else [],
            )
            try:
                async with StepProcess.start(prepared.argv, prepared.pass_fds) as proc:
                    prepared.close()
                    yield proc
            finally:
                prepared.close()
                step.oom_killed = limits.oom_kills(name) > 0
        finally:
            limits.remove(name)
            if lease is not None:
                lease.release()

    async def run_step(
        self,
        box: Sandbox,
        command: Sequence[str],
        *,
        uid: int | None,
        step: Step,
        trees: Sequence[WatchedTree] = (),
    ) -> AsyncIterator[str]:
        """:meth:`run` ``command``; yields its lines and fills ``step`` (``over_limit``:
        measured again once it ended)."""
        async with self.run(box, command, uid=uid, step=step, trees=trees) as proc:
            async for line in proc.lines():
                step.output.tail.append(line)
                yield line
            step.output.code = await proc.wait()
        step.over_limit = await asyncio.to_thread(over_limit, trees)


def tree_options(trees: Sequence[WatchedTree], interval: float = BUILD_TREE_INTERVAL) -> list[str]:
    """The supervisor's options that hold ``trees`` to their limits, each walked at
    least every ``interval`` seconds, and each file to the largest of the limits."""
    if not trees:
        return []
    options = [f"--tree={tree.to_arg()}" for tree in trees]
    largest = str(max(tree.limit for tree in trees))
    return [*options, "--tree-interval", str(interval), "--file-size-limit", largest]
