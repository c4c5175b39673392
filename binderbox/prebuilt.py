"""Prebuilt environments: repositories the operator names, built when the service starts.

The options menu of logged-in users offers them (LSST's "prebuilt images"): each is a
repository pinned to a ref, given as the part of a launch URL after ``v2/``::

    c.Prebuilt.environments = [
        {"name": "stack", "display": "Science stack 2026.11", "spec": "gh/org/stack/2026.11"},
    ]

``binderbox serve`` builds them one after the other in the background when it starts
(a build already in the store takes a moment), and ``/health`` shows how far it got;
launching one is an ordinary launch of its spec, so it reuses what was built.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from traitlets import Dict, List, TraitError, validate
from traitlets.config import LoggingConfigurable

from .events import Built, Failed
from .pipeline import LaunchPipeline, LaunchRequest

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


@dataclass
class Entry:
    """One prebuilt environment and how its build went (``state``: waiting, building,
    ready, failed; ``message``: the failure, in the pipeline's plain words)."""

    name: str
    display: str
    spec: str
    state: str = "waiting"
    message: str = ""
    #: the launch path, ``v2/<spec>``
    path: str = field(init=False)

    def __post_init__(self) -> None:
        self.path = f"v2/{self.spec}"


def read_entry(raw: Mapping[str, Any]) -> Entry:
    """An :class:`Entry` from its configuration; ValueError naming what is wrong."""
    name, spec = raw.get("name"), raw.get("spec")
    if not isinstance(name, str) or not _NAME_RE.match(name):
        raise ValueError(f"a prebuilt environment needs a plain name (got {name!r})")
    if not isinstance(spec, str) or spec.count("/") < 2:
        raise ValueError(f"{name}: spec must be <provider>/<spec>, e.g. gh/org/repo/v1")
    unknown = set(raw) - {"name", "display", "spec"}
    if unknown:
        raise ValueError(f"{name}: unknown field(s) {sorted(unknown)}")
    return Entry(name, str(raw.get("display") or name), spec.strip("/"))


class Prebuilt(LoggingConfigurable):
    """The operator's prebuilt environments.  See the module docstring."""

    environments = List(
        Dict(),
        help="""Environments built when the service starts and offered to logged-in users,
        each {"name": ..., "display": ..., "spec": "<provider>/<spec>"} with the spec as in
        a launch URL after v2/ (pin the ref: gh/org/repo/v1.2).""",
    ).tag(config=True)

    @validate("environments")
    def _valid(self, proposal: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            entries = [read_entry(raw) for raw in proposal["value"]]
        except ValueError as err:
            raise TraitError(f"Prebuilt.environments: {err}") from None
        if len({e.name for e in entries}) != len(entries):
            raise TraitError("Prebuilt.environments: names must be unique")
        return list(proposal["value"])

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.entries = [read_entry(raw) for raw in self.environments]

    async def build_all(self, pipeline: LaunchPipeline) -> None:
        """Build every entry, one after the other (a failure is recorded, not raised)."""
        for entry in self.entries:
            entry.state = "building"
            provider, _, spec = entry.spec.partition("/")
            request = LaunchRequest(provider=provider, spec=spec, build_only=True)
            last = None
            async for event in pipeline.launch(request):
                last = event
            if isinstance(last, Built):
                entry.state = "ready"
            else:
                entry.state = "failed"
                entry.message = last.message if isinstance(last, Failed) else "no result"
                self.log.warning("prebuilt environment %s failed: %s", entry.name, entry.message)

    def health(self) -> dict[str, Any] | None:
        """The ``/health`` check (None when there are none): ok unless one failed."""
        if not self.entries:
            return None
        states = {entry.name: entry.state for entry in self.entries}
        check: dict[str, Any] = {
            "service": "Prebuilt environments",
            "ok": "failed" not in states.values(),
            "environments": states,
        }
        failed = [f"{e.name}: {e.message}" for e in self.entries if e.state == "failed"]
        if failed:
            check["error"] = "; ".join(failed)
        return check
