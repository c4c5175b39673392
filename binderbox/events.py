"""The one vocabulary of progress: BinderHub's event-stream phases as types.

Every stage of a launch (pipeline, store, builders, data fetchers, session
launcher) reports progress as :class:`Event` objects.  The web layer turns
them into ``data: <json>`` frames with :meth:`Event.to_wire`, the CLI renders
them, tests assert on them.  Field names on the wire are BinderHub's
(``imageName``, ``binder_ref_url``...), so existing clients keep working.
"""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any, ClassVar


class Phase(enum.StrEnum):
    """The phases of BinderHub's event stream, in launch order."""

    WAITING = "waiting"
    FETCHING = "fetching"
    BUILDING = "building"
    BUILT = "built"
    LAUNCHING = "launching"
    READY = "ready"
    FAILED = "failed"
    UNKNOWN = "unknown"


@dataclass(frozen=True, kw_only=True)
class Event:
    """Base of all events: a phase and a human-readable message."""

    phase: ClassVar[Phase] = Phase.UNKNOWN
    #: python attribute name -> wire name, where they differ
    wire_names: ClassVar[dict[str, str]] = {}

    message: str = ""

    @property
    def terminal(self) -> bool:
        """True for the events after which a client closes the stream."""
        return self.phase in (Phase.READY, Phase.FAILED)

    def to_wire(self) -> dict[str, Any]:
        """The JSON object sent on the event stream (``data: <json>``)."""
        wire: dict[str, Any] = {"phase": self.phase.value}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is None:
                continue
            wire[self.wire_names.get(field.name, field.name)] = value
        return wire


@dataclass(frozen=True, kw_only=True)
class Waiting(Event):
    """Queued: waiting for a build slot or for another request's build."""

    phase: ClassVar[Phase] = Phase.WAITING


@dataclass(frozen=True, kw_only=True)
class Fetching(Event):
    """Cloning/downloading the repository or a dataset.

    ``done``/``total`` are bytes (``total`` ``None`` when unknown).
    """

    phase: ClassVar[Phase] = Phase.FETCHING
    done: int | None = None
    total: int | None = None


@dataclass(frozen=True, kw_only=True)
class Building(Event):
    """One line (or a few) of build log."""

    phase: ClassVar[Phase] = Phase.BUILDING


@dataclass(frozen=True, kw_only=True)
class Built(Event):
    """The environment exists: found in the store (``cached``) or just built."""

    phase: ClassVar[Phase] = Phase.BUILT
    wire_names: ClassVar[dict[str, str]] = {"image_name": "imageName"}
    image_name: str
    path: str
    cached: bool = False


@dataclass(frozen=True, kw_only=True)
class Launching(Event):
    """Starting the session; relays the hub's spawn-progress messages."""

    phase: ClassVar[Phase] = Phase.LAUNCHING


@dataclass(frozen=True, kw_only=True)
class Ready(Event):
    """The server is up and reachable at ``url`` with ``token``.  ``repo_dir``: where
    the repository is, relative to the home ('' the home itself; a persistent home
    has it in a folder, ``alpha``): launch links' paths are relative to it."""

    phase: ClassVar[Phase] = Phase.READY
    url: str
    token: str
    image: str
    repo_url: str
    binder_ref_url: str
    binder_launch_host: str
    binder_request: str
    binder_persistent_request: str
    repo_dir: str = ""


@dataclass(frozen=True, kw_only=True)
class Failed(Event):
    """Anything went wrong. ``status_code`` is the HTTP-like code of the cause."""

    phase: ClassVar[Phase] = Phase.FAILED
    status_code: int | None = None
    reason: str | None = None
