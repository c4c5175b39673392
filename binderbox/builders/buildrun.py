"""One build in progress: what its sandboxes see, and which host uid runs each step.

The rule (binderbox runs as root; otherwise every step runs as the service's uid):

* a uv step on the **shared** package cache runs no repository code
  (:mod:`binderbox.builders.caches`) and runs as the *builder* uid, which owns
  that cache; nothing a repository runs can ever write it;
* a step that may run repository code -- a source build with a private cache,
  ``postBuild`` -- runs as the build's **own** uid, leased for this build only;
* before a step, the trees it writes (the environment, the private cache, the
  repository copy) are handed to its uid without following links
  (:mod:`binderbox.runtime.ownership`); once repository code ran, the finished
  environment is taken back by the service, so no sandbox uid can change it.

And the size rule: every step holds what it writes on the host -- the environment,
the repository copy (beyond what it held before the build) and a private package
cache -- to the environment size limit (:meth:`BuildRun.trees`); a step over it
ends the build with :func:`too_big`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..environments import EnvSpec
from ..errors import BuildError
from ..runtime.layout import Mount
from ..runtime.leases import Lease
from ..runtime.ownership import give_tree
from ..runtime.treewatch import DEFAULT_FILES, WatchedTree, over_limit
from ..util.sizes import human
from .interpreters import Interpreter


@dataclass
class BasePlan:
    """What a builder decided before its first sandbox starts: for the spec it builds,
    the interpreter; a subclass keeps its own plan in ``extra`` (a conda builder: the
    packages it solved and downloaded)."""

    spec: EnvSpec
    interp: Interpreter | None = None
    extra: Any = None
    #: locks the build holds until it ends (its system layer's use lock)
    holds: list[Any] = field(default_factory=list)


@dataclass
class BuildRun:
    """A build's interpreter, trees, mounts and uids.  See the module docstring."""

    interp: Interpreter
    content: Path | None
    prefix: Path
    #: the interpreter's folders as sandboxes see them (readable copies where needed)
    mounts: list[Mount]
    #: uv's executable, readable by the sandbox uids
    uv: Path
    builder_uid: int | None
    own: Lease | None
    #: the environment size limit in bytes (0: none) and what the home held at the start
    limit: int = 0
    home_base: int = 0
    #: the files (inodes) limit of each tree, and what the home held at the start
    files: int = DEFAULT_FILES
    home_files: int = 0
    #: the Jupyter server's interpreter beside an old Python's kernel (server_env.py)
    server: Interpreter | None = None
    #: whether a step ran as the build's own uid (repository code may have run)
    ran_code: bool = False
    #: what the builder planned (its :class:`BasePlan`)
    plan: BasePlan | None = None
    #: system layers every step sees over /usr (builders/aptlayer.py)
    layers: list[Path] = field(default_factory=list)
    _given: set[Path] = field(default_factory=set)

    def hand_over(self, private_cache: Path | None, shared: bool) -> int | None:
        """The uid of the next step, with what it writes handed to it (blocking).

        ``shared``: the step uses the shared cache; else it may run repository
        code, with ``private_cache`` (if any) as its cache."""
        if self.builder_uid is None or self.own is None:
            return None
        uid = self.builder_uid if shared else self.own.value
        give_tree(self.prefix, uid)  # with what the service wrote there since the last step
        if not shared:
            self.ran_code = True
            for tree in (self.content, private_cache):
                if tree is not None and tree not in self._given:
                    give_tree(tree, uid)
                    self._given.add(tree)
        return uid

    def close(self) -> None:
        """Give the build's own uid back, and release what its plan holds."""
        if self.own is not None:
            self.own.release()
        for hold in self.plan.holds if self.plan is not None else []:
            hold.release()

    def trees(self, private_cache: Path | None = None) -> list[WatchedTree]:
        """What a step writes on the host, each held to the size limit (the home beyond
        what it held before the build); none without a limit."""
        if not self.limit:
            return []
        trees = [WatchedTree(self.prefix, self.limit, self.files)]
        if self.content is not None:
            home = self.home_base + self.limit
            trees.append(WatchedTree(self.content, home, self.home_files + self.files))
        if private_cache is not None:
            trees.append(WatchedTree(private_cache, self.limit, self.files))
        return trees

    def env_over_limit(self) -> str:
        """Whether the environment is over the size limit now (blocking: a walk)."""
        if not self.limit:
            return ""
        return over_limit([WatchedTree(self.prefix, self.limit, self.files)])


def too_big(run: BuildRun, what: str) -> BuildError:
    """The failure of a build that grew past the environment's limit of bytes or (``what``
    is ``'files'``) of files."""
    if what == "files":
        past = f"holds more files than this service allows ({run.files})"
    else:
        past = f"grew past this service's limit of {human(run.limit)}"
    return BuildError(
        f"The build was stopped: the environment {past}.",
        hint="Make the environment smaller (fewer or lighter packages, less written by "
        "postBuild), or ask the operator for a larger limit.",
        reason="env_size",
    )


def out_of_memory(what: str, limit: str) -> BuildError:
    """The failure of a step the kernel killed for memory (``limit``: the setting)."""
    return BuildError(
        f"{what} ran out of memory (this service allows a build {limit}).",
        hint="Make the environment smaller, or ask the operator for a larger limit.",
        reason="build_memory",
    )
