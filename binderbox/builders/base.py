"""The builder seam: an :class:`EnvSpec` becomes a directory.

A builder turns a spec (plus, when ``spec.needs_content``, the repository
content) into an environment built *at* :data:`~binderbox.environments.ENV_PREFIX`
inside its sandbox, which is backed by the empty directory ``prefix`` on the
host.  The store owns ``prefix`` (a temporary directory it publishes
atomically afterwards); the builder must write nowhere else except its caches.

Contract:

* :meth:`Builder.interpreter` -- the exact interpreter identity the spec
  will be built with (part of the key).  Raises
  :class:`~binderbox.errors.PythonVersionUnavailable` naming what exists.
* :meth:`Builder.build` -- an async generator of log lines.  It finishes
  normally when the environment is complete; it raises a
  :class:`~binderbox.errors.BuildError` subclass on failure.  When the
  consumer stops iterating (cancellation, timeout) every process it started
  is killed before it returns.
* :meth:`Builder.build_for` -- what the pipeline calls: :meth:`Builder.build`, unless
  the builder builds elsewhere from the repository itself (a Kubernetes Job:
  :mod:`binderbox.builders.kube`), which needs the version of the repository and
  the key the environment is built for.
* :meth:`Builder.finish` -- work on the *published* environment that makes it
  faster without changing what it does (bytecode), run in the background
  while sessions may already use it (see ``store/finishing.py`` for the
  rules); :meth:`Builder.finished` says whether any is left.  It may be
  stopped at any point and run again, and must then do only what is missing.
* ``version`` -- changes whenever the builder's output would change
  (:meth:`Builder.key_version` is what a spec's key uses).
* ``kinds`` -- the ``EnvSpec.kind`` values it builds; the pipeline's
  :class:`~binderbox.builders.registry.Builders` picks a builder by them.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from traitlets.config import LoggingConfigurable

from ..environments import EnvSpec

if TYPE_CHECKING:
    from ..providers.base import Resolved


class Builder(LoggingConfigurable):
    """Base class of environment builders.  See the module docstring."""

    #: environment kinds this builder handles (``EnvSpec.kind``)
    kinds: ClassVar[tuple[str, ...]] = ()
    #: bump when the output of a build changes for the same spec
    version: ClassVar[str] = "0"

    def key_version(self, spec: EnvSpec) -> str:
        """The builder version that goes into ``spec``'s key (default: ``version``)."""
        return self.version

    def interpreter(self, spec: EnvSpec) -> str:
        """The interpreter identity for ``spec`` (e.g. ``cpython-3.10.13``)."""
        raise NotImplementedError

    def build(self, spec: EnvSpec, content: Path | None, prefix: Path) -> AsyncGenerator[str, None]:
        """Build ``spec`` into ``prefix``; yields log lines.  See the module docstring."""
        raise NotImplementedError

    def build_for(
        self,
        spec: EnvSpec,
        content: Path | None,
        prefix: Path,
        *,
        key: str,
        source: Resolved,
        tokens: Mapping[str, str] | None = None,
    ) -> AsyncGenerator[str, None]:
        """Build ``spec`` (of the repository version ``source``, for the environment
        ``key``) into ``prefix``; yields log lines.  ``tokens``: the visitor's git tokens
        the fetch of ``source`` took (``{host[:port]: token}``; a private repository),
        for a builder that fetches it again elsewhere.  Default: :meth:`build`."""
        return self.build(spec, content, prefix)

    def system_packages(self, spec: EnvSpec) -> tuple[str, ...]:
        """The Debian packages ``spec``'s environment needs as a system layer shown at
        ``/usr`` (apt.txt's, and what a kind adds: R's); default none."""
        return ()

    def finished(self, path: Path) -> bool:
        """Whether the environment at ``path`` needs no :meth:`finish` (default: yes)."""
        return True

    async def finish(self, path: Path) -> str:
        """Finish the published environment at ``path``; returns a summary for the log."""
        return "nothing to do"

    @property
    def pushes_images(self) -> bool:
        """Whether a build's result is an image this builder pushes to the registry
        itself, not the folder it was given (which the store then does not publish)."""
        return False

    async def recover(self) -> list[str]:
        """At the service's start: remove what builds of an earlier run of it left where
        this builder runs them (a build nobody follows any more); names of what was
        removed, for the log.  Default: nothing (a local build ends with its service)."""
        return []

    def gc(self) -> None:
        """Drop cache entries no environment needs any more (default: nothing)."""
