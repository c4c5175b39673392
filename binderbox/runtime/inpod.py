"""Build steps in a pod: the pod is the sandbox (``c.SandboxHost.in_pod``).

Inside a Kubernetes pod, bubblewrap's user namespaces are often refused, and
they would add nothing: the pod already runs unprivileged (non-root uid, every
capability dropped, no privilege escalation, its own filesystem and network
policy), and it runs nothing but one build.  So there a build step runs
*directly* as the pod's uid, with the sandbox's environment variables and
working directory, under the same supervisor (orphans reaped, trees held to
their limits).  This process refuses to do so as root (:func:`refuse_root`).

Without bubblewrap nothing can be mounted, so what the sandbox would show must
already be where the step looks (:func:`direct_command` checks it):

* a bind whose host path is its path inside (the interpreter in the image, the
  environment built at ``/srv/env``: the build pod's output volume, the home at
  ``/home/jovyan``: the repository's copy) is in place;
* a bind of binderbox's own tools and caches under ``/run/binderbox`` (uv's
  executable, its cache) is reached at its host path: the step's arguments and
  variables naming the inside path are rewritten to it;
* a private tmpfs (an empty home) must be an existing folder;
* ``/etc`` files (passwd, resolv.conf) are the pod's own;
* anything else -- another bind, an overlay of system packages (apt.txt) --
  cannot be had without mounts: the build fails saying so, before it runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..errors import BuildError
from .sandbox import Sandbox, SandboxUnavailable

#: where the builders show their own tools and caches (reached at their host path here)
TOOLS_INSIDE = "/run/binderbox/"


def refuse_root() -> None:
    """Raise :class:`SandboxUnavailable` when this process is root: in a pod the pod's
    uid is the only boundary, so build code must never run as root."""
    if os.geteuid() == 0:
        raise SandboxUnavailable(
            "Builds in a pod (SandboxHost.in_pod) run as the pod's unprivileged user,"
            " and this process is root.",
            hint="Run the build pod as a non-root uid (runAsNonRoot, runAsUser: 1000).",
        )


def _mounts(box: Sandbox) -> Iterator[tuple[str, list[str]]]:
    """The sandbox's mount options, one ``(option, operands)`` at a time."""
    arity = {
        "--ro-bind": 2,
        "--bind": 2,
        "--symlink": 2,
        "--tmpfs": 1,
        "--overlay-src": 1,
        "--ro-overlay": 1,
        "--overlay": 3,
    }
    options, at = box.mount_options(), 0
    while at < len(options):
        name = options[at]
        count = arity[name]
        yield name, options[at + 1 : at + 1 + count]
        at += 1 + count


def _same(host: str, inside: str) -> bool:
    if host == inside:
        return True
    try:
        return Path(host).samefile(inside)
    except OSError:
        return False


def _not_in_place(what: str) -> BuildError:
    return BuildError(
        f"This build cannot run in a pod: {what}.",
        hint="In a pod, builds see only what the pod has at its paths"
        " (see binderbox/runtime/inpod.py).",
        reason="sandbox",
    )


def path_map(box: Sandbox) -> dict[str, str]:
    """{inside path: host path} of the tool mounts to rewrite; raises a plain
    :class:`BuildError` for a mount that is neither in place nor a tool."""
    rewrite: dict[str, str] = {}
    for name, operands in _mounts(box):
        if name in ("--ro-bind", "--bind"):
            host, inside = operands
            if _same(host, inside):
                continue
            if not inside.startswith(TOOLS_INSIDE):
                raise _not_in_place(f"it needs {host} at {inside}")
            rewrite[inside] = host
        elif name == "--symlink":
            target, inside = operands
            if not _same(target, inside):
                raise _not_in_place(f"it needs {inside} to be {target}")
        elif name == "--tmpfs":
            if not Path(operands[0]).is_dir():
                raise _not_in_place(f"it needs a folder {operands[0]}")
        else:
            raise _not_in_place("system packages (apt.txt) need mounts a pod cannot make")
    return rewrite


def _rewritten(value: str, rewrite: dict[str, str]) -> str:
    """``value`` with each inside path (whole, or after ``=``: ``--cache-dir=...``) replaced
    by its host path, in one pass, the longest first (``uv-cache`` is not ``uv``)."""
    if not rewrite:
        return value
    names = "|".join(re.escape(inside) for inside in sorted(rewrite, key=len, reverse=True))
    pattern = re.compile(rf"(^|=)({names})(?=/|$)")
    return pattern.sub(lambda found: found.group(1) + rewrite[found.group(2)], value)


def direct_command(box: Sandbox, command: Sequence[str]) -> list[str]:
    """``command`` as it runs in the pod, without bubblewrap: under ``env`` with only
    the sandbox's variables, in its working directory (see the module docstring)."""
    rewrite = path_map(box)
    if not Path(box.cwd).is_dir():
        raise _not_in_place(f"it needs a folder {box.cwd}")
    variables = [f"{k}={_rewritten(v, rewrite)}" for k, v in sorted(box.env.items())]
    argv = [_rewritten(arg, rewrite) for arg in command]
    return ["/usr/bin/env", "-i", "-C", box.cwd, "--", *variables, *argv]
