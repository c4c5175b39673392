"""Reading ``data_requirement.json`` (the Repo2Data convention) into :class:`DataEntry`.

Where the file is looked up is the environment files' rule,
:func:`binderbox.environments.detect.config_dir`: if the repository has a
``binder/`` (or ``.binder/``) folder, only that folder is read; both folders
at once is an error; otherwise the root is read.

The file holds one entry (an object with ``src``) or an object whose values
are entries (the keys are free labels).  Every entry needs ``src`` and a
``projectName`` that is one safe path segment.  Every other key (``dst``,
``version``, ``doi``, ``recursive``, ``remote_filepath``, ``sha256``, ``md5``,
``dataLayout``, anything) is kept and is part of the entry's identity:
changing any of them is how authors force a fresh download.  ``dst`` is never
used to place anything (see the reference "server mode"): every dataset lands
in the folder named by its ``projectName``, and entries sharing a
``projectName`` fill that one folder together.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..environments.detect import config_dir
from ..environments.requirements import read_text
from ..errors import DataError, EnvironmentConfigError

FILENAME = "data_requirement.json"
#: longest accepted ``projectName``
MAX_NAME = 128


class DataConfigError(DataError):
    """``data_requirement.json`` is malformed (the author must fix the repository)."""

    status_code = 400
    reason = "bad_data_config"


@dataclass(frozen=True)
class DataEntry:
    """One dataset source.

    ``label``
        the key of the entry in the file (``""`` for a single-entry file); not
        part of the identity
    ``src``
        the source as written (URL, DOI, ``s3://``, Python code...)
    ``project_name``
        the folder the dataset fills (a safe single path segment)
    ``extra``
        every other key, as ``(key, canonical JSON of the value)`` pairs sorted
        by key
    """

    label: str
    src: str
    project_name: str
    extra: tuple[tuple[str, str], ...] = field(default=())

    def get(self, key: str, default: Any = None) -> Any:
        """The value of an extra key (``version``, ``sha256``...), decoded."""
        for name, value in self.extra:
            if name == key:
                return json.loads(value)
        return default

    def identity(self) -> dict[str, Any]:
        """Everything that decides what this entry downloads (not the label)."""
        return {
            "src": self.src,
            "projectName": self.project_name,
            **{k: json.loads(v) for k, v in self.extra},
        }

    def identity_hash(self) -> str:
        """A stable hex digest of :meth:`identity` (computed once per entry)."""
        return self._identity_hash

    @functools.cached_property
    def _identity_hash(self) -> str:
        # every key of the cache hashes its entries' digests: ensure, mounts and
        # hold each compute the keys of a launch, from the same entry objects
        text = json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()

    def describe(self) -> str:
        """How messages name this entry: its label (or projectName)."""
        return f"'{self.label or self.project_name}'"


def check_project_name(value: object, label: str) -> str:
    """``value`` if it is a safe folder name, else a :class:`DataConfigError`."""
    where = f"Dataset '{label}'" if label else "The dataset"
    if not isinstance(value, str) or not value:
        raise DataConfigError(
            f"{where} in {FILENAME} has no projectName.",
            hint='Add a projectName naming its folder, e.g. "projectName": "atlas".',
        )
    problem = ""
    if len(value) > MAX_NAME:
        problem = f"is longer than {MAX_NAME} characters"
    elif value in (".", ".."):
        problem = "is not a folder name"
    elif "/" in value or "\\" in value:
        problem = "contains a slash"
    elif any(ord(c) < 32 or ord(c) == 127 for c in value):
        problem = "contains control characters"
    elif value.strip() != value:
        problem = "starts or ends with spaces"
    if problem:
        raise DataConfigError(
            f"{where} in {FILENAME} has an unsafe projectName {value!r}: it {problem}.",
            hint='Use one plain folder name such as "atlas" or "ds001037".',
        )
    return value


def parse_entry(label: str, raw: object) -> DataEntry:
    """One entry of the file (``raw`` is the decoded JSON object)."""
    where = f"Dataset '{label}'" if label else "The dataset"
    if not isinstance(raw, dict):
        raise DataConfigError(f"{where} in {FILENAME} is not a JSON object.")
    src = raw.get("src")
    if not isinstance(src, str) or not src.strip():
        raise DataConfigError(f"{where} in {FILENAME} has no src.", hint="Add a src URL.")
    name = check_project_name(raw.get("projectName"), label)
    extra = tuple(
        sorted(
            (key, json.dumps(value, sort_keys=True, separators=(",", ":")))
            for key, value in raw.items()
            if key not in ("src", "projectName")
        )
    )
    return DataEntry(label=label, src=src.strip(), project_name=name, extra=extra)


def parse_requirements(text: str, *, source: str = FILENAME) -> list[DataEntry]:
    """The entries of a ``data_requirement.json`` text."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataConfigError(
            f"{source} is not valid JSON (line {exc.lineno}: {exc.msg}).",
            log_message=f"{source}: {exc}",
        ) from None
    if not isinstance(data, dict):
        raise DataConfigError(f"{source} must hold a JSON object.")
    if not data:
        return []
    if "src" in data or "projectName" in data:
        return [parse_entry("", data)]
    return [parse_entry(str(label), raw) for label, raw in data.items()]


def find_requirements_file(repo: Path, folder: str | None = None) -> Path | None:
    """The ``data_requirement.json`` to read, in the configuration folder.

    ``folder``: that folder as detection found it (``EnvSpec.config_dir``);
    looked up with detection's rule when ``None``.
    """
    base = repo / (config_dir(repo) if folder is None else folder)
    path = base / FILENAME
    return path if path.is_file() else None


def read_requirements(repo: Path, folder: str | None = None) -> list[DataEntry]:
    """The datasets a repository declares (empty when it declares none).

    ``folder``: see :func:`find_requirements_file`.
    """
    try:
        path = find_requirements_file(repo, folder)
        if path is None:
            return []
        # the environment files' reader: stays inside the repository, whatever links say
        text = read_text(repo, path)
    except EnvironmentConfigError as exc:
        raise DataConfigError(exc.message, hint=exc.hint) from None
    return parse_requirements(text, source=str(path.relative_to(repo)))


def group_by_project(entries: list[DataEntry]) -> dict[str, list[DataEntry]]:
    """Entries per ``projectName``, in file order."""
    groups: dict[str, list[DataEntry]] = {}
    for entry in entries:
        groups.setdefault(entry.project_name, []).append(entry)
    return groups
