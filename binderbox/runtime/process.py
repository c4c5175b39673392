"""Sandboxed steps (build steps, dataset code sources) as subprocesses that die with the step.

:class:`StepProcess` starts a command in its own session (process group);
leaving its ``start`` context kills the whole group, so cancelling a build
never leaves a uv, compiler or postBuild process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field


class StepProcess:
    """A subprocess in its own session; leaving ``start``'s context kills its group."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    @contextlib.asynccontextmanager
    async def start(
        cls, argv: Sequence[str], pass_fds: Sequence[int] = ()
    ) -> AsyncIterator[StepProcess]:
        """Start ``argv`` (inheriting ``pass_fds``); kill its group on leaving."""
        proc = await asyncio.create_subprocess_exec(
            *argv,
            pass_fds=tuple(pass_fds),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            limit=1 << 20,
        )
        try:
            yield cls(proc)
        finally:
            if proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await asyncio.shield(proc.wait())

    async def lines(self) -> AsyncIterator[str]:
        """Merged stdout+stderr, line by line, as it comes."""
        assert self.proc.stdout is not None
        while True:
            try:
                raw = await self.proc.stdout.readline()
            except ValueError:  # a line longer than the limit (dropped by asyncio)
                yield "[an over-long output line was cut]"
                continue
            if not raw:
                return
            yield raw.decode(errors="replace").rstrip("\r\n")

    async def wait(self) -> int:
        return await self.proc.wait()


@dataclass
class StepOutput:
    """The end of a step: its last lines and exit code (set when it ends)."""

    tail: deque[str] = field(default_factory=lambda: deque(maxlen=200))
    code: int | None = None


def last_line(lines: Iterable[str]) -> str:
    """The last line of a step's output that is not blank, stripped ("" when none):
    what a failed step said last, for its error message."""
    return next((line.strip() for line in reversed(list(lines)) if line.strip()), "")


async def run_step(argv: Sequence[str], output: StepOutput) -> AsyncIterator[str]:
    """Run ``argv`` as a :class:`StepProcess`; yields its lines, fills ``output``."""
    async with StepProcess.start(argv) as proc:
        async for line in proc.lines():
            output.tail.append(line)
            yield line
        output.code = await proc.wait()
