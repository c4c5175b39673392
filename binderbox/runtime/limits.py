"""Memory, CPU and pids limits of sandboxes with cgroups, where this host allows it.

What is enforceable depends on the host, so it is detected, not assumed:

* **cgroup v2** with delegated controllers: ``/sys/fs/cgroup`` (or the
  ``unified`` mount) is a cgroup2 file system whose ``cgroup.controllers``
  lists ``memory`` (and ``cpu``) and where we may create a child group.
  Limits are ``memory.max``, ``cpu.max`` and ``pids.max``.
* **cgroup v1** as root: the ``memory`` (and ``cpu``) hierarchies are
  mounted and writable.  Limits are ``memory.limit_in_bytes`` (plus
  ``memory.memsw.limit_in_bytes`` when present, so swap does not dodge it)
  ``cpu.cfs_quota_us``/``cpu.cfs_period_us`` and ``pids.max``.

Each sandbox (a session, or a build with all its steps) gets
``<hierarchy>/binderbox/<name>``; its supervisor's child writes its own pid
into ``cgroup.procs`` of each before it becomes bubblewrap, so everything in
the sandbox is accounted (the supervisor itself is not).  A pids limit makes
a fork bomb fail to fork instead of taking the machine: ``pids.max`` counts
threads too.  When neither works, limits are *advisory*:
``MEM_LIMIT``/``CPU_LIMIT`` are still passed to the server
(jupyter-resource-usage shows them) but nothing enforces them, and
:func:`limits_status` says so and why.  Never claim enforcement that
isn't there.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..util.sizes import human
from .treewatch import CHECK_INTERVAL

CGROUP_ROOT = Path("/sys/fs/cgroup")
#: the folder under each hierarchy holding the sessions' groups
GROUP = "binderbox"
CFS_PERIOD_US = 100_000


@dataclass(frozen=True)
class Limits:
    """What one sandbox may use; 0 means unlimited."""

    mem_bytes: int = 0
    cpu: float = 0.0
    pids: int = 0

    def __bool__(self) -> bool:
        return bool(self.mem_bytes or self.cpu or self.pids)


@dataclass(frozen=True)
class LimitsStatus:
    """What :class:`CgroupLimits` can enforce on this host, and why."""

    mode: str  #: "enforced" or "advisory"
    backend: str  #: "cgroup-v2", "cgroup-v1" or "none"
    memory: bool  #: memory limits are enforced
    cpu: bool  #: CPU limits are enforced
    pids: bool  #: pids (process and thread count) limits are enforced
    reason: str  #: plain words: what was found

    def to_json(self) -> dict[str, Any]:
        """The status as a JSON-ready dict (for /health)."""
        return asdict(self)


def _safe_name(session: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", session)
    if not name or name.startswith("."):
        raise ValueError(f"bad session name {session!r}")
    return name


def _writable_group(parent: Path) -> Path | None:
    """Create ``parent/binderbox`` if possible; None when we may not."""
    group = parent / GROUP
    try:
        group.mkdir(exist_ok=True)
    except OSError:
        return None
    return group if os.access(group / "cgroup.procs", os.W_OK) else None


def _v2_root() -> Path | None:
    for root in (CGROUP_ROOT, CGROUP_ROOT / "unified"):
        controllers = root / "cgroup.controllers"
        if controllers.exists() and "memory" in controllers.read_text().split():
            return root
    return None


class CgroupLimits:
    """Creates, fills and removes the cgroups of sessions.  See the module docstring."""

    def __init__(self, root: Path = CGROUP_ROOT) -> None:
        self.root = root
        self.v2: Path | None = None
        self.memory_dir: Path | None = None
        self.cpu_dir: Path | None = None
        self.pids_dir: Path | None = None
        self.status = self._detect()

    def _detect(self) -> LimitsStatus:
        v2 = _v2_root() if self.root == CGROUP_ROOT else None
        if v2 is not None:
            group = _writable_group(v2)
            if group is not None:
                enabled = _enable_v2_controllers(v2, group)
                if "memory" in enabled:
                    self.v2 = group
                    return LimitsStatus(
                        "enforced",
                        "cgroup-v2",
                        True,
                        "cpu" in enabled,
                        "pids" in enabled,
                        f"cgroup v2 at {v2} with controllers {' '.join(sorted(enabled))}",
                    )
        self.memory_dir = _writable_group(self.root / "memory")
        self.cpu_dir = _writable_group(self.root / "cpu")
        self.pids_dir = _writable_group(self.root / "pids")
        if self.memory_dir is not None:
            found = ["memory"] + [
                n for n, d in (("cpu", self.cpu_dir), ("pids", self.pids_dir)) if d
            ]
            return LimitsStatus(
                "enforced",
                "cgroup-v1",
                True,
                self.cpu_dir is not None,
                self.pids_dir is not None,
                f"cgroup v1 {', '.join(found)} controllers are writable",
            )
        return LimitsStatus(
            "advisory",
            "none",
            False,
            False,
            False,
            "no cgroup v2 with a delegated memory controller and no writable cgroup v1 "
            "memory hierarchy (run as root, or delegate a cgroup v2 subtree to this user)",
        )

    def create(self, name: str, limits: Limits) -> list[Path]:
        """Make the groups of sandbox ``name`` with ``limits``; return the dirs to join.

        Returns ``[]`` when limits are advisory here (or all unlimited).
        """
        if self.status.mode != "enforced" or not limits:
            return []
        name = _safe_name(name)
        if self.v2 is not None:
            group = self.v2 / name
            group.mkdir(exist_ok=True)
            _v2_limits(group, limits, self.status)
            return [group]
        dirs: list[Path] = []
        for parent, wanted, write in (
            (self.memory_dir, limits.mem_bytes, _v1_memory),
            (self.cpu_dir, limits.cpu, _v1_cpu),
            (self.pids_dir, limits.pids, _v1_pids),
        ):
            if wanted and parent is not None:
                group = parent / name
                group.mkdir(exist_ok=True)
                write(group, limits)
                dirs.append(group)
        return dirs

    def oom_kills(self, name: str) -> int:
        """How many processes of sandbox ``name`` the kernel killed for memory."""
        name = _safe_name(name)
        if self.v2 is not None:
            path, key = self.v2 / name / "memory.events", "oom_kill"
        elif self.memory_dir is not None:
            path, key = self.memory_dir / name / "memory.oom_control", "oom_kill"
        else:
            return 0
        with contextlib.suppress(OSError, ValueError):
            for line in path.read_text().splitlines():
                field, _, value = line.partition(" ")
                if field == key:
                    return int(value)
        return 0

    def remove(self, name: str) -> None:
        """Remove the groups of sandbox ``name`` (they must be empty; errors are ignored)."""
        name = _safe_name(name)
        for parent in (self.v2, self.memory_dir, self.cpu_dir, self.pids_dir):
            if parent is not None:
                with contextlib.suppress(OSError):
                    (parent / name).rmdir()


def _v2_limits(group: Path, limits: Limits, status: LimitsStatus) -> None:
    if limits.mem_bytes:
        (group / "memory.max").write_text(str(limits.mem_bytes))
        with contextlib.suppress(OSError):
            (group / "memory.swap.max").write_text("0")
    if limits.cpu and status.cpu:
        quota = max(1000, int(limits.cpu * CFS_PERIOD_US))
        (group / "cpu.max").write_text(f"{quota} {CFS_PERIOD_US}")
    if limits.pids and status.pids:
        (group / "pids.max").write_text(str(limits.pids))


def _v1_memory(group: Path, limits: Limits) -> None:
    (group / "memory.limit_in_bytes").write_text(str(limits.mem_bytes))
    memsw = group / "memory.memsw.limit_in_bytes"
    if memsw.exists():
        with contextlib.suppress(OSError):
            memsw.write_text(str(limits.mem_bytes))


def _v1_cpu(group: Path, limits: Limits) -> None:
    (group / "cpu.cfs_period_us").write_text(str(CFS_PERIOD_US))
    (group / "cpu.cfs_quota_us").write_text(str(max(1000, int(limits.cpu * CFS_PERIOD_US))))


def _v1_pids(group: Path, limits: Limits) -> None:
    (group / "pids.max").write_text(str(limits.pids))


def _enable_v2_controllers(root: Path, group: Path) -> set[str]:
    """Enable memory/cpu/pids for children of ``group``; return what got enabled."""
    enabled: set[str] = set()
    for controller in ("memory", "cpu", "pids"):
        for parent in (root, group):
            with contextlib.suppress(OSError):
                (parent / "cgroup.subtree_control").write_text(f"+{controller}")
        try:
            if controller in (group / "cgroup.subtree_control").read_text().split():
                enabled.add(controller)
        except OSError:
            pass
    return enabled


def join(dirs: list[Path], pid: int) -> None:
    """Move ``pid`` into each group of ``dirs`` (the supervisor's child, for itself,
    before it becomes the sandbox)."""
    for group in dirs:
        (group / "cgroup.procs").write_text(str(pid))


@functools.cache
def default_limits() -> CgroupLimits:
    """The process-wide :class:`CgroupLimits` (detection runs once)."""
    return CgroupLimits()


def limits_status() -> dict[str, Any]:
    """What is enforced here, for /health and the startup log."""
    return default_limits().status.to_json()


@dataclass(frozen=True)
class SessionLimits:
    """What each session may use (the spawner's settings), for /health."""

    limits: Limits
    #: bytes a home may hold (0: no limit) and seconds between two walks of it
    home_bytes: int = 0
    home_interval: float = 15.0


def cgroup_enforcement(limits: Limits, status: LimitsStatus) -> dict[str, Any]:
    """Each cgroup limit of ``limits`` and how this host enforces it (for /health)."""

    def entry(value: object, enforced: bool, **shown: object) -> dict[str, Any]:
        if not value:
            return {"limit": None, "enforced": "no limit set"}
        return {"limit": value, **shown, "enforced": status.backend if enforced else "advisory"}

    mem = limits.mem_bytes
    return {
        "memory": entry(mem and human(mem), status.memory, bytes=mem),
        "cpu": entry(limits.cpu, status.cpu),
        "pids": entry(limits.pids, status.pids),
    }


def session_limits_status(sessions: SessionLimits) -> dict[str, Any]:
    """The ``Session limits`` check of /health: each limit and how it is enforced."""
    status = default_limits().status
    home: dict[str, Any] = {"limit": None, "enforced": "no limit set"}
    if sessions.home_bytes:
        home = {
            "limit": human(sessions.home_bytes),
            "bytes": sessions.home_bytes,
            "enforced": "measured",
            "how": "no filesystem quota: the session's supervisor measures the home every "
            f"{sessions.home_interval:g} s (and sooner when the free space of its "
            f"filesystem, looked at every {CHECK_INTERVAL:g} s, drops enough for it to be "
            "over) and stops a session over it; one file alone is held to the limit by "
            "the kernel (RLIMIT_FSIZE)",
        }
    return {
        "service": "Session limits",
        "ok": True,
        "limits": {**cgroup_enforcement(sessions.limits, status), "home": home},
        "cgroups": status.to_json(),
    }
