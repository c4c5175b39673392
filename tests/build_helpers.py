"""Builds through the real pipeline, for the tests of each kind of environment."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from testcache import CACHE

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


def cli(
    data: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 900
) -> subprocess.CompletedProcess[str]:
    """``binderbox ARGS`` with ``data`` as its data directory and the tests' uv cache (a
    config file beside ``data``, the working folder), ``env`` added to the variables."""
    config = data.parent / "binderbox_config.py"
    config.write_text(f"c.PythonBuilder.cache_dir = {str(CACHE / 'uv')!r}\n")
    return subprocess.run(
        [sys.executable, "-m", "binderbox", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "BINDERBOX_DATA_DIR": str(data), **(env or {})},
        cwd=data.parent,
        timeout=timeout,
        check=False,
    )
