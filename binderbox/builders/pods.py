"""Builds in pods: the builder seam when each build runs somewhere else.

A :class:`PodBuilds` is the pipeline's builder when builds run in pods of their own
(a Kubernetes Job: :class:`~binderbox.builders.kube.KubernetesBuilds`).  The store
owns the build's folder as always (``<store>/tmp/<key>.<random>``, on the shared
store volume); the pod sees that folder at ``/srv/env`` and runs::

    binderbox build <provider>/<spec pinned to the commit> --json --in-pod --output=/srv/env

(:func:`build_args`): it fetches the repository itself, builds as the pod's
unprivileged user (:mod:`binderbox.runtime.inpod`), compiles the bytecode and
prints one JSON event a line.  :func:`pod_lines` turns those lines into the
launch's usual ones: ``building`` messages become build log lines, a ``failed``
event ends the build with the pod's own plain message, ``built`` must name the key
the service expects (else the pod built something else: refused), and output that
ends without a verdict is a plain failure saying what the pod reported.  Once the
build ended well the store publishes the folder by rename, as for a local build;
a failed or stopped one is deleted by the store.

The pod's log is not a trusted channel: repository code in the pod runs as the pod's
user and can write to it.  The most it can do is end its own build (a forged
``failed``) or have its folder published early (a forged ``built``): a tree it controls
anyway, under the key the service chose -- never another key's environment.

Everything else a builder does -- the interpreter a spec is keyed with, the work on
published environments -- is the local :class:`~binderbox.builders.registry.Builders`'
(the pods run the same image, hence the same interpreters and builders).
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from pathlib import Path

from traitlets import Instance, default

from ..environments import ENV_PREFIX, EnvSpec
from ..errors import BuildError, UnsupportedEnvironment
from ..providers.base import Resolved
from ..providers.gitutil import redact
from .base import Builder
from .registry import Builders

#: the phases of ``binderbox build --json`` a pod may print
_PHASES = ("waiting", "fetching", "building")


def build_args(source: Resolved) -> list[str]:
    """The arguments of ``binderbox build`` in a build pod, for the version ``source``
    (its persistent spec names the commit, as BinderHub's does)."""
    spec = f"{source.provider}/{source.persistent_spec}"
    return [spec, "--json", "--in-pod", f"--output={ENV_PREFIX}"]


async def pod_lines(lines: AsyncIterator[str], key: str, what: str) -> AsyncIterator[str]:
    """The build log of a pod printing ``binderbox build --json`` (see the module
    docstring); ``what`` names the pod in messages."""
    last, built = "", False
    async for raw in lines:  # to the end: the pod writes nothing once its output ended
        try:
            event = json.loads(raw)
        except ValueError:
            event = None
        if not isinstance(event, dict):
            last = raw.strip() or last
            yield raw  # not an event (a warning of the runtime): shown as it is
            continue
        phase, message = event.get("phase"), str(event.get("message") or "")
        if phase in _PHASES:
            last = message or last
            yield message
        elif phase == "failed":
            raise BuildError(
                message or "The build failed.",
                reason=str(event.get("reason") or "build"),
                status_code=int(event.get("status_code") or 500),
                log_message=f"{what}: {message}",
            )
        elif phase == "built":
            if event.get("imageName") != key:
                raise BuildError(
                    "The build pod built another environment than the one asked for.",
                    log_message=f"{what} built {event.get('imageName')!r}, not {key!r}",
                )
            built = True
    if built:
        return
    raise BuildError(
        f"The build pod ended without a result{f' (its last words: {last})' if last else ''}.",
        log_message=f"{what}: output ended without a verdict",
    )


def refuse_system_layer(spec: EnvSpec, packages: tuple[str, ...]) -> None:
    """Refuse (``UnsupportedEnvironment``, a plain ``failed`` event) an environment that
    needs a system layer: its packages must be shown at ``/usr``, which takes a mount
    (an overlay) that an unprivileged pod can make neither in the build pod nor in the
    session pod (README, "Builds on Kubernetes")."""
    if not packages:
        return
    more = len(packages) - 5
    shown = ", ".join(packages[:5]) + (f" and {more} more" if more > 0 else "")
    source = " from apt.txt" if spec.apt_packages else ""
    raise UnsupportedEnvironment(
        f"This environment needs system packages{source} ({shown}), which this service"
        " cannot install:"
        " its builds and sessions run in unprivileged Kubernetes pods, which cannot mount"
        " them at /usr.",
        hint="Use conda packages instead (environment.yml: conda-forge has most system"
        " libraries and tools, and R), or launch it on a binderbox that runs on one"
        " machine, where system packages are built as layers.",
        log_message=f"system layer refused in pods: {' '.join(packages)}",
    )


class PodBuilds(Builder):
    """The builder seam for builds in pods.  See the module docstring; a subclass
    runs the pod (:meth:`run_pod`)."""

    local = Instance(Builders, help="The builders whose rules the pods build with.")

    @default("local")
    def _default_local(self) -> Builders:
        return Builders(parent=self)

    @property
    def kinds(self) -> tuple[str, ...]:  # type: ignore[override]
        return self.local.kinds

    @property
    def members(self) -> list[Builder]:
        """The local builders (for /versions)."""
        return self.local.members

    def key_version(self, spec: EnvSpec) -> str:
        return self.local.key_version(spec)

    def interpreter(self, spec: EnvSpec) -> str:
        return self.local.interpreter(spec)

    def build(self, spec: EnvSpec, content: Path | None, prefix: Path) -> AsyncGenerator[str, None]:
        raise BuildError("Builds in pods need the repository's version (build_for).")

    async def build_for(
        self,
        spec: EnvSpec,
        content: Path | None,
        prefix: Path,
        *,
        key: str,
        source: Resolved,
        tokens: Mapping[str, str] | None = None,
    ) -> AsyncGenerator[str, None]:
        # a kind no builder takes, or system packages: refused before a pod starts
        refuse_system_layer(spec, self.local.for_spec(spec).system_packages(spec))
        if source.clone_url and redact(source.clone_url) != source.clone_url:
            raise BuildError(  # the pod's arguments would show them
                "A repository URL with credentials in it cannot be built here.",
                hint="Log in and launch it without them: your own token is used then.",
                reason="spec",
                status_code=400,
            )
        async for line in self.run_pod(build_args(source), prefix, key=key, tokens=tokens):
            yield line

    def run_pod(
        self,
        args: list[str],
        prefix: Path,
        *,
        key: str,
        tokens: Mapping[str, str] | None = None,
    ) -> AsyncIterator[str]:
        """Run ``binderbox build *args`` in a pod that sees ``prefix`` at ``/srv/env``;
        yields the build's log lines (:func:`pod_lines`), raises its failure.  Leaving
        early (a timeout, a cancelled build) removes the pod.  ``tokens``: the visitor's
        git tokens for a private repository (``{host[:port]: token}``), to reach the
        pod's fetch without being shown to the build's code, nor in the pod's spec."""
        raise NotImplementedError

    def finished(self, path: Path) -> bool:
        return self.local.finished(path)

    async def finish(self, path: Path) -> str:
        return await self.local.finish(path)

    def gc(self) -> None:
        self.local.gc()
