"""uv's error output -> a :class:`~binderbox.errors.BuildError` a user can act on.

uv (0.5 to 0.13 at least) ends a failed ``uv pip install`` with an error
block on stderr, for example::

    error: No solution found when resolving dependencies
      cause: Because nonexistent-pkg was not found in the package registry
             and you require nonexistent-pkg, we can conclude that your
             requirements are unsatisfiable.

    error: Failed to build `bad2 @ file:///home/jovyan`
      cause: The build backend returned an error
      ...

Older and terminal-attached uv prints a multiplication sign and ``╰─▶`` instead of
``error:`` / ``cause:``; both are understood.  :func:`classify` picks the
exception class and writes a one-line message naming the requirement(s) uv
complained about; the tail of the log goes into ``log_message``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from ..errors import BuildError, RequirementsUnsatisfiable

#: lines of log kept in ``log_message``
TAIL = 25
_PREFIX = re.compile(r"^\s*(?:error:|cause:|\u00d7|╰─▶|[│ ]*├─▶|hint:)\s*")
_NOT_FOUND = re.compile(
    r"(?:Because |and |, )([A-Za-z0-9][\w.\-\[\],]*) was not found in the package registry"
)
_NO_VERSION = re.compile(r"there (?:is|are) no versions? of ([A-Za-z0-9][^\s,]*)")
_FAILED_BUILD = re.compile(
    r"Failed to (?:build|download and build|prepare distributions?:?)\s+`([^`]+)`"
)
_BUILDING = re.compile(r"^\s*Building (.+?)(?: @ .*)?$")
_PARSE = re.compile(r"Couldn't parse requirement in `[^`]*`|Failed to parse")
_UNREACHABLE = re.compile(
    r"(?:Failed to fetch|Request failed|error sending request|dns error)", re.I
)


def _clean(line: str) -> str:
    return _PREFIX.sub("", line).strip()


def _join(names: Sequence[str]) -> str:
    names = list(dict.fromkeys(names))
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]


def _sentence(lines: Sequence[str], start: int) -> str:
    """The cause sentence starting after ``lines[start]``, joined over wrapped lines."""
    parts: list[str] = []
    for line in lines[start + 1 :]:
        text = _clean(line)
        if not text or text.startswith("[stderr]") or line.lstrip().startswith("hint:"):
            break
        parts.append(text)
        if text.endswith("."):
            break
    sentence = " ".join(parts)
    return sentence if len(sentence) <= 300 else sentence[:297] + "..."


def tail(lines: Sequence[str], count: int = TAIL) -> str:
    """The last ``count`` lines as one block."""
    return "\n".join(lines[-count:])


def classify(lines: Sequence[str], *, what: str = "Installing the requirements") -> BuildError:
    """The error for a failed uv run whose merged output ended with ``lines``."""
    text = "\n".join(lines)
    log = f"{what} failed; uv said:\n{tail(lines)}"
    hint_reqs = "Check the package names and version pins in the repository's requirements."
    for index, line in enumerate(lines):
        if "No solution found when resolving dependencies" in line:
            return _unsatisfiable(lines, index, text, log, hint_reqs)
    if _PARSE.search(text):
        bad = next((_clean(x) for x in lines if "cause:" in x), "")
        return RequirementsUnsatisfiable(
            f"A requirement cannot be parsed: {bad}".rstrip(": "), hint=hint_reqs, log_message=log
        )
    match = _FAILED_BUILD.search(text)
    if match or "build backend returned an error" in text:
        name = (match.group(1) if match else _last_building(lines)).split(" @ ")[0]
        return BuildError(
            f"The package {name} failed to build." if name else "A package failed to build.",
            hint="The build log shows the package's own error output.",
            log_message=log,
        )
    if _UNREACHABLE.search(text):
        return BuildError(
            "Downloading packages failed.",
            hint="The package index may be unreachable; try again later.",
            log_message=log,
        )
    first = next((_clean(x) for x in lines if x.lstrip().startswith(("error:", "\u00d7"))), "")
    return BuildError(f"{what} failed: {first}" if first else f"{what} failed.", log_message=log)


def _unsatisfiable(
    lines: Sequence[str], index: int, text: str, log: str, hint: str
) -> RequirementsUnsatisfiable:
    missing = _NOT_FOUND.findall(text)
    if missing:
        message = f"No package named {_join(missing)} was found on the package index."
    else:
        versions = [v.rstrip(".") for v in _NO_VERSION.findall(text)]
        if versions:
            message = f"No version matching {_join(versions)} is available on the package index."
        else:
            message = f"The requirements cannot be satisfied together: {_sentence(lines, index)}"
    return RequirementsUnsatisfiable(message.rstrip(": "), hint=hint, log_message=log)


def _last_building(lines: Sequence[str]) -> str:
    for line in reversed(lines):
        match = _BUILDING.match(line)
        if match and not line.lstrip().startswith("Building wheel"):
            return match.group(1).strip()
    return ""
