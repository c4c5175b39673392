"""Python code sources: ``src`` is code (``from nilearn import datasets;
datasets.fetch_development_fmri(data_dir=_dst, n_subjects=1);``) that
downloads into the variable ``_dst``.

It is untrusted repository code, so it runs in the sessions' bubblewrap
layout (:func:`~binderbox.runtime.layout.env_sandbox`, without content) with

* the repository's environment read-only at ``/srv/env`` (its interpreter is
  ``/srv/env/bin/python``; the interpreter directories that the environment's
  ``.binderbox/build.json`` names are shown read-only too, as in a session),
* the dataset's temporary folder as the only writable host path, at
  ``/home/jovyan/data/<projectName>`` (``_dst`` and the working directory),
* a private empty home and ``/tmp``,
* as a build step does (:meth:`SandboxHost.run <binderbox.runtime.host.SandboxHost.run>`):
  a host uid of its own (the dataset folder is handed to it and taken back
  after), a network of its own (the public internet, no private addresses),
  memory/CPU/pids limits, leftover background processes stopped,
* a time limit (:attr:`CodeFetcher.timeout`) and the dataset size limit,
  checked while it runs.

Operators can refuse code sources altogether with
:attr:`CodeFetcher.allow_code_sources`.  Output lines become progress
events; a failure is a :class:`DataError` whose message ends with the last
line of output and whose log message holds the tail of the output.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import deque
from pathlib import Path

from traitlets import Bool, Float, Instance, default

from ...environments.spec import ENV_PREFIX, HOME
from ...errors import DataError
from ...runtime.host import SandboxHost, Step
from ...runtime.layout import env_sandbox
from ...runtime.ownership import give_tree, take_back
from ...runtime.process import last_line
from ...runtime.sandbox import Sandbox
from ...util.sizes import tree_size
from ..requirement import DataEntry
from .base import DataFetcher, FetchContext

_CODE = re.compile(r"(^|[;\s])(import\s+\w|from\s+[\w.]+\s+import\s)")
#: seconds between two size checks of a running code source
SIZE_CHECK_INTERVAL = 1.0


def is_code(src: str) -> bool:
    """Whether ``src`` is Python code rather than a URL or identifier."""
    return "://" not in src.split(None, 1)[0] and bool(_CODE.search(src))


class CodeFetcher(DataFetcher):
    """Runs a code source in the build sandbox; see the module docstring."""

    kind = "code"

    allow_code_sources = Bool(
        True,
        help="Run Python code sources of data_requirement.json (sandboxed). False refuses them.",
    ).tag(config=True)
    timeout = Float(1800.0, help="Seconds a code source may run before it is stopped.").tag(
        config=True
    )

    host = Instance(SandboxHost, help="Where code sources run (uids, network, limits).")

    @default("host")
    def _default_host(self) -> SandboxHost:
        return SandboxHost(parent=self)

    def matches(self, entry: DataEntry) -> bool:
        """Sources that are Python code (contain an import statement)."""
        return is_code(entry.src)

    def sandbox(self, env: Path, dest: Path, inside: str) -> Sandbox:
        """The sandbox a code source runs in: the session layout with a private
        empty home (env read-only), ``dest`` writable at ``inside``, the cwd.
        FileNotFoundError when ``env`` is not a built environment."""
        box = env_sandbox(env).bind(dest, inside)
        box.cwd = inside
        box.setenv(
            {
                "MPLBACKEND": "Agg",
                "PYTHONUNBUFFERED": "1",
                "PYTHONDONTWRITEBYTECODE": "1",
                "SSL_CERT_FILE": "/etc/ssl/certs/ca-certificates.crt",
            }
        )
        return box

    async def fetch(self, entry: DataEntry, dest: Path, ctx: FetchContext) -> None:
        """Run the code with ``_dst`` pointing at ``dest`` (seen inside the sandbox)."""
        if not self.allow_code_sources:
            raise DataError(
                f"Dataset {entry.describe()} is Python code, and this server does not run "
                "code sources.",
                hint="Publish the data as a file (archive, Zenodo, OSF) instead.",
                status_code=400,
                reason="data_code_refused",
            )
        if ctx.env_path is None:
            raise DataError(
                f"Dataset {entry.describe()} is Python code, but no environment was given "
                "to run it.",
                reason="data_code_env",
            )
        inside = f"{HOME}/data/{entry.project_name}"
        script = f"_dst = {inside!r}\n{entry.src}\n"
        try:
            box = self.sandbox(ctx.env_path, dest, inside)
        except FileNotFoundError as err:
            raise DataError(
                f"Dataset {entry.describe()} is Python code, but its environment is not "
                "a built environment.",
                log_message=str(err),
                reason="data_code_env",
            ) from err
        command = [f"{ENV_PREFIX}/bin/python", "-c", script]
        before = await asyncio.to_thread(tree_size, dest)
        tail: deque[str] = deque(maxlen=20)
        code, step = await self._run(box, command, entry, dest, ctx, tail, before)
        if code != 0 and step.oom_killed:
            raise DataError(
                f"Dataset {entry.describe()}: its Python code ran out of memory (this service "
                f"allows it {self.host.build_mem_limit}).",
                reason="data_code_memory",
            )
        if code != 0:
            last = last_line(tail) or "no output"
            raise DataError(
                f"Dataset {entry.describe()}: its Python code failed (exit code {code}): {last}",
                log_message="Data code source output (tail):\n" + "\n".join(tail),
                reason="data_code_failed",
            )
        ctx.count(await asyncio.to_thread(tree_size, dest) - before, entry)

    async def _run(
        self,
        box: Sandbox,
        command: list[str],
        entry: DataEntry,
        dest: Path,
        ctx: FetchContext,
        tail: deque[str],
        before: int,
    ) -> tuple[int | None, Step]:
        """Run the code as a uid of its own (``dest`` handed to it, then taken back)."""
        lease = await asyncio.to_thread(self.host.lease_uid)
        uid = lease.value if lease is not None else None
        step = Step()
        try:
            if uid is not None:
                await asyncio.to_thread(give_tree, dest, uid)
            async with self.host.run(box, command, uid=uid, step=step) as running:
                await self._watch(running.proc, entry, dest, ctx, tail, before)
            return running.proc.returncode, step
        finally:
            if uid is not None:
                await asyncio.to_thread(take_back, dest)
            if lease is not None:
                lease.release()

    async def _watch(
        self,
        proc: asyncio.subprocess.Process,
        entry: DataEntry,
        dest: Path,
        ctx: FetchContext,
        tail: deque[str],
        before: int,
    ) -> None:
        """Relay output lines until the process ends; stop it on time/size/cancel."""
        assert proc.stdout is not None
        deadline = min(ctx.deadline, time.monotonic() + self.timeout)
        next_size_check = time.monotonic() + SIZE_CHECK_INTERVAL
        while True:
            try:
                raw = await asyncio.wait_for(proc.stdout.readline(), timeout=0.5)
            except TimeoutError:
                raw = None
            except ValueError:  # a line longer than the stream limit: take a piece
                raw = await proc.stdout.read(1 << 16)
            if raw == b"":
                await proc.wait()
                return
            if raw:
                line = raw.decode("utf-8", "replace").rstrip()
                tail.append(line)
                ctx.report(f"Dataset {entry.describe()}: {line}", force=True)
            now = time.monotonic()
            if ctx.cancelled or now > deadline:
                raise DataError(
                    f"Dataset {entry.describe()}: its Python code ran longer than allowed.",
                    reason="data_timeout",
                )
            if now >= next_size_check:
                next_size_check = now + SIZE_CHECK_INTERVAL
                if ctx.would_exceed(await asyncio.to_thread(tree_size, dest) - before):
                    raise ctx.too_large(entry)
