"""Builds through the real pipeline, for the tests of each kind of environment."""

from __future__ import annotations

from binderbox.events import Built, Event
from binderbox.pipeline import LaunchPipeline, LaunchRequest


async def build_only(pipeline: LaunchPipeline, spec: str, ref: str | None = None) -> list[Event]:
    """The events of building ``spec`` (a local repository's path) without a session."""
    request = LaunchRequest(provider="", spec=spec, ref=ref, build_only=True)
    return [event async for event in pipeline.launch(request)]


def built(events: list[Event]) -> Built:
    """The last event, which must be ``built`` (else the test fails showing it)."""
    assert isinstance(events[-1], Built), events[-1].to_wire()
    return events[-1]
