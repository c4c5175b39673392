"""Session sizes: the memory/CPU classes an operator offers, and who may pick which.

The operator lists sizes once (``c.SessionSizes.sizes``); the same list reaches the
web layer (the home page's menu, a plain refusal before anything is built) and the
spawner inside the hub (through ``c.SandboxSpawner.sizes``), which is the one that
enforces it: a size travels in the launch options by *name* only, and the spawner
maps the name to limits from its own configuration, after checking the server's
user may have it, so a user who starts a server through the hub API with options
of their own cannot give themselves more than the operator allows.

A size::

    {"name": "large", "display": "8 GB, 4 CPUs", "mem_limit": "8G", "cpu_limit": 4,
     "groups": ["staff"]}

``groups`` (optional): the hub groups whose members may pick it (empty or absent:
every logged-in user); anonymous visitors get the default size only.  With no sizes
configured every session gets ``ManagedHub.session_mem_limit``/``session_cpu_limit``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from traitlets import Dict, List, TraitError, Unicode, validate
from traitlets.config import Configurable

from ..errors import BinderboxError
from ..util.sizes import human, parse_size

#: the fields a size may have
FIELDS = frozenset({"name", "display", "mem_limit", "cpu_limit", "groups"})


class SizeRefused(BinderboxError):
    """A size the visitor may not pick (or that does not exist); the message is plain."""

    status_code = 403
    reason = "size"


@dataclass(frozen=True)
class Size:
    """One size: limits (0 = none) and who may pick it."""

    name: str
    display: str
    mem_bytes: int
    cpu: float
    groups: tuple[str, ...] = ()

    def allows(self, logged_in: bool, groups: Iterable[str]) -> bool:
        """Whether a visitor (logged in or not, in ``groups``) may pick this size."""
        return logged_in and (not self.groups or bool(set(self.groups) & set(groups)))

    def describe(self) -> str:
        """The size as the menu shows it."""
        if self.display:
            return self.display
        parts = [f"{human(self.mem_bytes)} memory" if self.mem_bytes else "no memory limit"]
        parts.append(f"{self.cpu:g} CPU" if self.cpu else "no CPU limit")
        return f"{self.name}: {', '.join(parts)}"


def read_size(raw: Mapping[str, Any]) -> Size:
    """A :class:`Size` from its configuration; ValueError naming what is wrong."""
    unknown = set(raw) - FIELDS
    if unknown:
        raise ValueError(f"unknown field(s) {sorted(unknown)} (known: {sorted(FIELDS)})")
    name = raw.get("name")
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"a size needs a name of letters, digits and '_' (got {name!r})")
    groups = raw.get("groups") or []
    if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
        raise ValueError(f"size {name}: groups must be a list of group names")
    cpu = raw.get("cpu_limit") or 0
    if not isinstance(cpu, int | float) or cpu < 0:
        raise ValueError(f"size {name}: cpu_limit must be a number of cores")
    return Size(
        name=name,
        display=str(raw.get("display") or ""),
        mem_bytes=parse_size(str(raw.get("mem_limit") or "")),
        cpu=float(cpu),
        groups=tuple(groups),
    )


def read_sizes(raw: Sequence[Mapping[str, Any]]) -> list[Size]:
    """Every size, checked; ValueError on a bad or repeated one."""
    sizes = [read_size(entry) for entry in raw]
    names = [size.name for size in sizes]
    if len(set(names)) != len(names):
        raise ValueError(f"size names must be unique (got {names})")
    return sizes


def choose(
    sizes: Sequence[Size], wanted: str, default: str, logged_in: bool, groups: Iterable[str]
) -> Size | None:
    """The size a launch gets: ``wanted`` ('' = the default) if the visitor may have it.

    None when no sizes are configured (the service-wide limits apply).  Raises
    :class:`SizeRefused` with a plain message otherwise."""
    if not sizes:
        if wanted:
            raise SizeRefused("This service offers no choice of size.")
        return None
    by_name = {size.name: size for size in sizes}
    default_name = default or sizes[0].name
    name = wanted or default_name
    size = by_name.get(name)
    if size is None:
        raise SizeRefused(f"There is no size {name!r} here (sizes: {', '.join(by_name)}).")
    if name == default_name or size.allows(logged_in, groups):
        return size
    if not logged_in:
        raise SizeRefused(f"Log in to pick the size {name!r}.")
    raise SizeRefused(f"Your account may not pick the size {name!r}.")


class SessionSizes(Configurable):
    """The sizes the operator offers.  See the module docstring."""

    sizes = List(
        Dict(),
        help="""Sizes visitors may pick, e.g. [{"name": "small", "display": "2 GB, 1 CPU",
        "mem_limit": "2G", "cpu_limit": 1}, {"name": "large", "mem_limit": "8G",
        "cpu_limit": 4, "groups": ["staff"]}].  groups: the hub groups that may pick it
        (absent: every logged-in user); anonymous visitors get the default.  Empty: every
        session gets ManagedHub.session_mem_limit and session_cpu_limit.""",
    ).tag(config=True)
    default = Unicode(
        "", help="The size a launch gets when it names none ('' = the first size)."
    ).tag(config=True)

    @validate("sizes")
    def _valid_sizes(self, proposal: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            read_sizes(proposal["value"])
        except ValueError as err:
            raise TraitError(f"SessionSizes.sizes: {err}") from None
        return list(proposal["value"])

    def parsed(self) -> list[Size]:
        """The sizes, checked."""
        return read_sizes(self.sizes)

    def choose(self, wanted: str, logged_in: bool, groups: Iterable[str]) -> Size | None:
        """:func:`choose` with the configured sizes."""
        return choose(self.parsed(), wanted, self.default, logged_in, groups)

    def offered(self, logged_in: bool, groups: Iterable[str]) -> list[Size]:
        """The sizes the menu shows a visitor (the default always)."""
        sizes = self.parsed()
        default = self.default or (sizes[0].name if sizes else "")
        return [s for s in sizes if s.name == default or s.allows(logged_in, groups)]
