"""The normalised description of an environment, and its key.

An :class:`EnvSpec` is everything that decides what a built environment
contains, and nothing else.  Two commits whose environment files say the same
thing give equal specs, hence the same key, hence one build.

An environment is a stack of layers, bottom first (see :attr:`EnvSpec.layers`):

1. ``system``: Debian packages from ``apt.txt`` (:attr:`EnvSpec.apt_packages`),
   shown over ``/usr`` in builds and sessions;
2. ``base``: the environment of its kind -- a Python virtual environment
   (``python``), a conda prefix (``conda``, ``pixi``, ``conda-lock``), a locked
   Python environment (``uv-lock``, ``pylock``), R with a library (``r``); what
   a non-``python`` kind installs is :attr:`EnvSpec.base`, canonical JSON;
3. ``pip``: requirement lines installed with uv on top (requirements.txt,
   Pipfile, conda's ``pip:`` section) with the Jupyter server packages;
4. ``postBuild``: the repository's script, last.

The key rule (see :meth:`EnvSpec.key`):

* the normalised spec: every layer (kind, base, system packages, Python
  version, requirement lines after ``-r`` inlining and normalisation, the
  postBuild script's text),
* the interpreter actually used (its full version) and whatever else of the
  host a layer is built from (the builder's identity string: the host's
  package set for a system layer), and
* the builder's version (a new builder never reuses an old build),
* plus ``content_digest`` when the environment depends on repository content
  (local requirement references such as ``-e .``, a root package, a
  postBuild script).  That digest covers the files that can affect a build;
  files that cannot (notebooks, Markdown/reStructuredText documents, images)
  are excluded, so a commit that edits only a notebook keeps the key.
  Everything else counts, a ``data/`` folder included (see
  :mod:`binderbox.environments.digest`).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

#: where an environment appears inside build and session sandboxes
#: (``NB_PYTHON_PREFIX``); environments are built *at* this path so that
#: the scripts in ``bin/`` are valid in every session
ENV_PREFIX = "/srv/env"
#: the home folder of the session user, holding the repository content
HOME = "/home/jovyan"
#: the kinds of base layer (``EnvSpec.kind``), in the order detection tries them
KINDS = ("r", "pixi", "conda-lock", "conda", "uv-lock", "pylock", "python")


@dataclass(frozen=True)
class EnvSpec:
    """A normalised environment specification.

    ``kind``
        the base layer's kind: one of :data:`KINDS`
    ``base``
        canonical JSON of what a non-``python`` base layer installs (the
        detector of the kind writes it, its builder reads it), or ``None``
    ``apt_packages``
        the system layer: Debian package names, sorted, no duplicates
    ``python``
        the requested ``X.Y`` version
    ``requirements``
        pip requirement lines, normalised: comments and blank lines gone,
        ``-r`` files inlined, Pipfile/Pipfile.lock converted; local
        references (``-e .``, ``./pkg``) rewritten relative to the
        repository root, and the paths uv itself opens (``-c FILE``,
        ``--find-links DIR``) as absolute paths under :data:`HOME`: install
        them with the content at :data:`HOME` as the working directory
        (see :mod:`binderbox.environments.requirements`)
    ``install_repo``
        the repository root is a Python package and is installed
    ``postbuild``
        path of the postBuild script relative to the repository root
    ``postbuild_text``
        the script's text (part of the key)
    ``start``
        path of the ``start`` script relative to the root (used at launch,
        not part of the key)
    ``config_dir``
        ``""``, ``"binder"`` or ``".binder"``: where configuration was read
    ``content_digest``
        digest of the repository files the build depends on, or ``None``
    ``sources``
        the files the spec was read from (for messages; not in the key)
    """

    kind: str = "python"
    base: str | None = None
    apt_packages: tuple[str, ...] = ()
    python: str = "3.10"
    requirements: tuple[str, ...] = ()
    install_repo: bool = False
    postbuild: str | None = None
    postbuild_text: str | None = None
    start: str | None = None
    config_dir: str = ""
    content_digest: str | None = None
    sources: tuple[str, ...] = field(default=(), compare=False)

    @property
    def layers(self) -> tuple[str, ...]:
        """The names of the layers this spec builds, bottom first (module docstring)."""
        names = ["system"] if self.apt_packages else []
        names.append(self.kind)
        if self.requirements or self.install_repo:
            names.append("pip")
        if self.postbuild:
            names.append("postBuild")
        return tuple(names)

    @property
    def needs_content(self) -> bool:
        """True when building needs the repository content present."""
        return self.content_digest is not None

    def key_material(self) -> dict[str, Any]:
        """The parts of the spec that define the environment."""
        data = asdict(self)
        for excluded in ("start", "sources", "config_dir"):
            data.pop(excluded)
        for layer in ("base", "apt_packages"):  # absent layers leave older keys as they were
            if not data[layer]:
                data.pop(layer)
        return data

    def key(self, *, interpreter: str, builder_version: str) -> str:
        """The environment key: a short stable hash (see the module docstring)."""
        material = {
            "spec": self.key_material(),
            "interpreter": interpreter,
            "builder": builder_version,
        }
        blob = json.dumps(material, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:32]

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (stored as the environment's metadata)."""
        data = asdict(self)
        data["requirements"] = list(self.requirements)
        data["apt_packages"] = list(self.apt_packages)
        data["sources"] = list(self.sources)
        return data
