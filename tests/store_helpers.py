"""Build functions for the store tests, and a child process that builds with them.

Run as a script (``python store_helpers.py ROOT KEY MODE WORKDIR``) it builds
KEY in the store at ROOT in its own process and reports on stdout, one JSON
object a line: ``{"joined": bool}``, then ``{"line": str}`` per log line, then
``{"env": path}`` or ``{"error": message, "hint": hint, "type": class name}``.

The build functions append their pid to ``WORKDIR/runs`` (to count runs),
write a few files, touch ``WORKDIR/started`` after the first line, then wait
for ``WORKDIR/release`` before finishing (mode ``ok``), failing (``fail``),
or hang forever (``hang``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from binderbox.errors import BinderboxError, BuildError
from binderbox.store import BuildFn, Store

FAIL_MESSAGE = "Could not install numpy==0.0.0: no such version."
FAIL_HINT = "Check requirements.txt."


def gated_build(workdir: Path, mode: str = "ok", payload: int = 64 * 1024) -> BuildFn:
    """A build function as described in the module docstring."""

    async def build(prefix: Path) -> AsyncIterator[str]:
        with (workdir / "runs").open("a") as runs:
            runs.write(f"{os.getpid()}\n")
        (prefix / "bin").mkdir()
        (prefix / "bin" / "python").write_text("#!/bin/sh\n")
        yield "step 1: resolving"
        (workdir / "started").touch()
        if mode == "hang":
            await asyncio.sleep(3600)
        while True:
            if (workdir / "release").exists():
                break
            await asyncio.sleep(0.01)
        yield "step 2: installing"
        if mode == "fail":
            raise BuildError(FAIL_MESSAGE, hint=FAIL_HINT)
        (prefix / "lib").mkdir()
        (prefix / "lib" / "payload.bin").write_bytes(b"x" * payload)
        yield "step 3: done"

    return build


def runs(workdir: Path) -> int:
    """How many times a build function started in ``workdir``."""
    path = workdir / "runs"
    return len(path.read_text().splitlines()) if path.exists() else 0


async def _child(root: str, key: str, mode: str, workdir: str) -> None:
    store = Store(root=root, poll_interval=0.02)

    def report(**item: object) -> None:
        print(json.dumps(item), flush=True)

    shared = store.build(key, gated_build(Path(workdir), mode), spec={"mode": mode}, source="test")
    report(joined=shared.joined)
    async for line in shared.follow():
        report(line=line)
    try:
        env = await shared.wait()
    except BinderboxError as err:
        report(error=err.message, hint=err.hint, type=type(err).__name__)
    else:
        report(env=str(env.path))


if __name__ == "__main__":
    asyncio.run(_child(*sys.argv[1:5]))
