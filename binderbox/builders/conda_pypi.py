"""The PyPI fallback for conda environments: conda specs -> PyPI requirement lines.

For sites that reach a PyPI mirror and no conda channel
(``c.CondaBuilder.pypi_fallback``): an ``environment.yml`` is built as a Python
environment with uv, each conda spec replaced by the PyPI requirement that
means the same thing.  :func:`plan` takes what the conda detector wrote (the
canonical ``EnvSpec.base`` JSON, ``{"channels": [...], "dependencies": [...]}``,
the ``pip:`` lines, the Python version) and returns the requirement lines and
a log with one line per spec saying how it was mapped.  :class:`PypiCondaBuilder`
builds a ``conda`` spec that way through
:class:`~binderbox.builders.python.PythonBuilder` (list it in
``c.Builders.builder_classes``, or let the conda builder hand its specs to it).

Names, first match:

1. ``python`` picks the interpreter (``python=3.9``: Python 3.9); ``pip`` is
   always there;
2. :data:`NO_PYPI` and ``r-*``: programs and libraries PyPI does not have
   (``r-base``, ``nodejs``, ``graphviz``...); the build fails naming every one;
3. the operator's names (``names``), then :data:`OVERRIDES`: conda
   metapackages whose PyPI form needs extras (conda-forge ``dask`` is PyPI
   ``dask[complete]``) or where one of several PyPI packages is meant;
4. the conda-pypi table (``conda_pypi_names.json``: the conda names whose PyPI
   name differs, from the ``conda-pypi`` wheel's ``grayskull_pypi_mapping.json``,
   MIT licensed, its notice kept in the file; ``scripts/update-conda-pypi-names``
   regenerates it);
5. else the same name.

Versions (conda match specs): ``=1.21`` and ``1.21*`` are ``==1.21.*``;
``==1.21``, ``>=1.2,<2`` and the other operators mean what they mean in PEP 440;
a build string (``=1.21=py39_0``, ``numpy 1.21 py39_0``) and a channel
(``conda-forge::numpy``) are dropped and logged; ``numpy[version='>=1.2']`` is
read.  Alternatives (``1.2|1.3``) cannot be written as one PyPI requirement:
the build fails naming the spec.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import re
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name
from traitlets import Dict, Unicode

from ..environments import EnvSpec
from ..environments.detectors.python import choose_python
from ..errors import BuildError
from .python import PythonBuilder

NAMES = Path(__file__).with_name("conda_pypi_names.json")
#: conda metapackages and names meaning one of several PyPI packages
OVERRIDES: Mapping[str, str] = {
    "dask": "dask[complete]",
    "distributed": "distributed",
    "opencv": "opencv-python-headless",
    "py-opencv": "opencv-python-headless",
    "pyqt": "pyqt5",
    "matplotlib": "matplotlib",
    "jupyter": "jupyter",
    "ipython": "ipython",
    "pytorch-cpu": "torch",
    "tensorflow-cpu": "tensorflow-cpu",
    "python-kaleido": "kaleido",
    "numpy-base": "numpy",
}
#: conda packages with no PyPI equivalent (programs, C/Fortran libraries, toolchains)
# fmt: off
NO_PYPI = frozenset((
    "r-base", "r", "nodejs", "graphviz", "ffmpeg", "openjdk", "julia", "gcc", "gxx",
    "gfortran", "compilers", "c-compiler", "cxx-compiler", "fortran-compiler", "binutils",
    "make", "pkg-config", "git", "curl", "wget", "tk", "openssl", "zlib", "sqlite", "libgdal",
    "gdal", "proj", "geos", "hdf5", "libnetcdf", "netcdf-c", "imagemagick", "pandoc",
    "texlive-core", "poppler", "cairo", "pango", "glib", "blas",
    "libblas", "liblapack", "openblas", "libopenblas", "nomkl", "cudatoolkit", "cudnn", "nccl",
    "libgcc-ng", "libstdcxx-ng", "libgfortran-ng", "ncurses", "readline", "xz", "bzip2",
    "zstd", "libiconv", "gettext", "icu", "expat", "freetype", "fontconfig", "harfbuzz",
    "libpng", "jpeg", "libjpeg-turbo", "libtiff", "libxml2", "libxslt", "openmpi", "mpich",
    "boost", "boost-cpp", "eigen",
))
# fmt: on
_OPERATOR = re.compile(r"^(==|!=|>=|<=|~=|>|<|=)?\s*([^\s=<>!~]+)$")
_SPEC = re.compile(r"^(?P<name>[A-Za-z0-9_.\-]+)\s*(?:\[(?P<brackets>[^\]]*)\])?\s*(?P<rest>.*)$")


class NoPypiEquivalent(BuildError):
    """Conda specs the PyPI fallback cannot install."""

    reason = "no_pypi_equivalent"


@dataclass(frozen=True)
class PypiPlan:
    """What :func:`plan` gives: the interpreter, the PyPI lines, how each spec mapped."""

    python: str
    requirements: tuple[str, ...]
    log: tuple[str, ...]


@functools.cache
def table() -> Mapping[str, str]:
    """The conda-pypi names (module docstring, 4): the first PyPI name of each."""
    names = json.loads(NAMES.read_text())["names"]
    return {conda: pypi[0] for conda, pypi in names.items()}


def plan(
    base: str,
    pip_lines: Sequence[str],
    python: str,
    *,
    names: Mapping[str, str] | None = None,
    where: str = "environment.yml",
) -> PypiPlan:
    """``base`` (conda's canonical JSON) and ``pip_lines`` as PyPI requirements; the
    Python is ``python=`` when a spec names it, else ``python``.  Raises
    :class:`NoPypiEquivalent` naming every spec that cannot be mapped."""
    specs = json.loads(base).get("dependencies", [])
    lines: list[str] = []
    log: list[str] = []
    refused: list[str] = []
    for spec in specs:
        try:
            name, version, dropped = parse(str(spec))
        except ValueError as e:
            refused.append(f"{spec} ({e})")
            continue
        if name == "python":
            python = _python(version, python)
            log.append(f"{spec} -> Python {python} (the interpreter)")
            continue
        if name == "pip":
            log.append(f"{spec} -> (pip is in every environment)")
            continue
        pypi, how = pypi_name(name, names or {})
        if pypi is None:
            refused.append(str(spec))
            continue
        line = pypi + version
        lines.append(line)
        log.append(f"{spec} -> {line} ({how}{'; dropped ' + dropped if dropped else ''})")
    if refused:
        raise NoPypiEquivalent(
            f"{where}: no PyPI equivalent for the conda package(s) {', '.join(refused)}.",
            hint="This server installs environment.yml from PyPI: remove them, or install "
            "them with apt.txt.",
        )
    log += [f"pip: {line}" for line in pip_lines]
    return PypiPlan(python, (*lines, *pip_lines), tuple(log))


def pypi_name(conda: str, names: Mapping[str, str]) -> tuple[str | None, str]:
    """The PyPI requirement name (extras included) for the conda name, and which rule
    said so; None when it has none."""
    if conda in NO_PYPI or conda.startswith("r-"):
        return None, "no PyPI equivalent"
    if conda in names:
        return names[conda], "the operator's mapping"
    if conda in OVERRIDES:
        return OVERRIDES[conda], "binderbox's override"
    if conda in table():
        return canonicalize_name(table()[conda]), "conda-pypi mapping"
    return canonicalize_name(conda), "same name"


def parse(spec: str) -> tuple[str, str, str]:
    """A conda match spec -> (name, PEP 440 specifier or "", what was dropped)."""
    dropped = []
    if "::" in spec:
        channel, spec = spec.rsplit("::", 1)
        dropped.append(f"channel {channel}")
    match = _SPEC.match(spec.strip())
    if match is None:
        raise ValueError("not a conda package spec")
    name, rest = match["name"].lower(), match["rest"].strip()
    if match["brackets"]:
        keys = dict(re.findall(r"(\w+)\s*=\s*['\"]?([^'\",]+)['\"]?", match["brackets"]))
        rest = keys.get("version", "")
        if "build" in keys:
            dropped.append(f"build {keys['build']}")
    if rest.startswith("=") and not rest.startswith("=="):  # name=1.2[=build]
        version, _, build = rest[1:].partition("=")
        rest = version + ("*" if version and not version.endswith("*") else "")
    else:  # name 1.2 [build] / name >=1.2
        version, _, build = rest.partition(" ")
        rest = version
    if build.strip():
        dropped.append(f"build {build.strip()}")
    return name, _version(rest), ", ".join(dropped)


def _version(text: str) -> str:
    """A conda version spec -> a PEP 440 specifier string."""
    if text in ("", "*"):
        return ""
    if "|" in text:
        raise ValueError("alternatives (|) have no PyPI form")
    clauses = []
    for clause in text.split(","):
        match = _OPERATOR.match(clause.strip())
        if match is None:
            raise ValueError(f"{clause!r} is not a version")
        operator, version = match[1] or "", match[2]
        if version.endswith("*"):
            version = version.rstrip("*").rstrip(".") + ".*"
            operator = "==" if operator in ("", "=", "==") else operator
            if operator not in ("==", "!="):
                version = version.removesuffix(".*")
        elif operator in ("", "="):
            operator = "=="
        clauses.append(f"{operator}{version}")
    specifier = ",".join(clauses)
    try:
        Requirement(f"x{specifier}")
    except InvalidRequirement:
        raise ValueError(f"{text!r} has no PEP 440 form") from None
    return specifier


def _python(specifier: str, default: str) -> str:
    """The X.Y of ``python<specifier>``: the default when it fits, else the newest that
    does (the rule of ``requires-python``)."""
    if not specifier:
        return default
    return choose_python(SpecifierSet(specifier), None, default, "environment.yml: python")


class PypiCondaBuilder(PythonBuilder):
    """Builds ``conda`` specs from PyPI with uv (see the module docstring)."""

    kinds: ClassVar[tuple[str, ...]] = ("conda",)

    pypi_names = Dict(
        Unicode(),
        help="""conda name -> PyPI requirement name (extras allowed), before binderbox's
        overrides and the conda-pypi mapping: e.g. {"mypkg-conda": "mypkg[all]"}.""",
    ).tag(config=True)

    def python_spec(self, spec: EnvSpec) -> tuple[EnvSpec, tuple[str, ...]]:
        """The ``python`` spec a ``conda`` spec is built as, and the mapping's log."""
        where = next((s for s in spec.sources if "environment.y" in s), "environment.yml")
        mapped = plan(
            spec.base or "{}", spec.requirements, spec.python, names=self.pypi_names, where=where
        )
        as_python = dataclasses.replace(
            spec, kind="python", base=None, python=mapped.python, requirements=mapped.requirements
        )
        return as_python, mapped.log

    def interpreter(self, spec: EnvSpec) -> str:
        """The interpreter's identity and a digest of the mapped lines: the key changes
        with the mapping (new data, the operator's names), not only with the file."""
        as_python = self.python_spec(spec)[0]
        digest = hashlib.sha256("\n".join(as_python.requirements).encode()).hexdigest()[:12]
        return f"{super().interpreter(as_python)}+pypi-{digest}"

    async def build(
        self, spec: EnvSpec, content: Path | None, prefix: Path
    ) -> AsyncGenerator[str, None]:
        as_python, log = self.python_spec(spec)
        yield "conda specs from PyPI (the PyPI fallback):"
        for line in log:
            yield f"  {line}"
        async for line in super().build(as_python, content, prefix):
            yield line
