"""Builders chosen by kind: :class:`Builders`, the pipeline's one builder.

The operator lists builder classes (``c.Builders.builder_classes``); a spec
is built by the first whose ``kinds`` holds its ``EnvSpec.kind``.  Work on a
published environment (``finish``, ``finished``) goes to the builder that
built it, named in its ``build.json``.  A kind no listed builder takes is
refused with a plain message naming the file that asked for it.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from pathlib import Path
from typing import Any

from traitlets import List, Type

from ..environments import EnvSpec
from ..errors import UnsupportedEnvironment
from ..runtime.layout import META
from .base import Builder
from .conda import CondaBuilder
from .locks import LockBuilder
from .python import PythonBuilder
from .r import RBuilder


class Builders(Builder):
    """Dispatches to one builder per kind.  See the module docstring."""

    builder_classes = List(
        Type(klass=Builder),
        [PythonBuilder, LockBuilder, CondaBuilder, RBuilder],
        help="""The builder classes this server builds with, tried in order for a spec's
        kind (e.g. 'binderbox.builders.python.PythonBuilder').  A kind none of them
        builds is refused.""",
    ).tag(config=True)

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        #: one instance per class, configured like the service (c.PythonBuilder...)
        self.members: list[Builder] = [cls(parent=self) for cls in self.builder_classes]
        hosts = [m for m in self.members if isinstance(m, PythonBuilder)]
        for member in hosts[1:]:  # one host: one set of uid leases, network, limits
            member.host = hosts[0].host
            member.layers = hosts[0].layers  # one set of system layers

    @property
    def kinds(self) -> tuple[str, ...]:  # type: ignore[override]
        """Every kind some member builds."""
        return tuple(dict.fromkeys(kind for member in self.members for kind in member.kinds))

    def for_spec(self, spec: EnvSpec) -> Builder:
        """The member that builds ``spec``, or :class:`UnsupportedEnvironment`."""
        for member in self.members:
            if spec.kind in member.kinds:
                return member
        where = spec.sources[0] if spec.sources else "the repository"
        raise UnsupportedEnvironment(
            f"{where}: {spec.kind} environments are not built on this server",
            hint=f"This server builds: {', '.join(self.kinds) or 'nothing'}.",
        )

    def key_version(self, spec: EnvSpec) -> str:
        return self.for_spec(spec).key_version(spec)

    def interpreter(self, spec: EnvSpec) -> str:
        return self.for_spec(spec).interpreter(spec)

    def build(self, spec: EnvSpec, content: Path | None, prefix: Path) -> AsyncGenerator[str, None]:
        return self.for_spec(spec).build(spec, content, prefix)

    def built_by(self, path: Path) -> Builder:
        """The member that built the environment at ``path`` (by its build.json)."""
        try:
            name = json.loads((path / META / "build.json").read_text()).get("builder")
        except (OSError, ValueError):
            name = None
        found = (member for member in self.members if type(member).__name__ == name)
        return next(found, self.members[0])

    def finished(self, path: Path) -> bool:
        return self.built_by(path).finished(path)

    async def finish(self, path: Path) -> str:
        return await self.built_by(path).finish(path)

    def gc(self) -> None:
        for member in self.members:
            member.gc()
