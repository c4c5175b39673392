"""``binderbox data``: fetch, list and remove the cached datasets of repositories.

``binderbox data fetch SPEC``
    SPEC is anything ``binderbox build`` accepts (a local repository, a git
    URL, ``gh/<owner>/<repo>/<ref>``...).  The repository is resolved and
    fetched by the pipeline's first stage (policy, provider, content cache),
    its ``data_requirement.json`` is read, and every dataset is fetched into
    the cache the service uses (``<data dir>/datasets``), with a progress
    line per step (entry, URL, bytes, percent).  Python code sources need the
    repository's environment: the pipeline's environment stage builds (or
    reuses) it first, for the content just fetched (resolved once).  Run by
    the operator, it fetches from private hosts too
    (``DataCache.allow_private_hosts`` defaults to True here, as
    ``RepoProvider.allow_private_hosts`` does).
``binderbox data list``
    key, projectName, size, last use and source of every cached dataset.
``binderbox data rm KEY-OR-NAME...``
    removes datasets by key or by projectName (not those in use).
``binderbox data gc``
    evicts least-recently-used datasets over the budget.

Errors are one plain line on stderr and exit status 1.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from pathlib import Path
from typing import TextIO

from traitlets import Unicode

from ..cli import Command, ProgressPrinter, _size
from ..errors import BinderboxError
from ..events import Event, Fetching
from ..pipeline import LaunchPipeline, LaunchRequest, LaunchState
from .cache import DataCache
from .requirement import read_requirements

USAGE = "usage: binderbox data fetch SPEC [--ref REF] | list | rm KEY-OR-NAME... | gc"


class DataProgress:
    """Fetching events for a person: one line per step; byte counts redrawn on a terminal."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self._open = False  # a redrawable progress line is on screen

    def show(self, event: Event) -> None:
        line = event.message.rstrip("\n")
        if isinstance(event, Fetching) and event.done is not None and self.tty:
            self.out.write(f"\r\033[K  {line}")
            self._open = True
        else:
            self.end_line()
            self.out.write(f"  {line}\n")
        self.out.flush()

    def end_line(self) -> None:
        """Finish a redrawn line before printing anything else."""
        if self._open:
            self.out.write("\n")
            self._open = False


class DataCommand(Command):
    """binderbox data fetch SPEC | list | rm KEY-OR-NAME... | gc"""

    name = "binderbox-data"
    description = "Fetch, list and remove the datasets of data_requirement.json files."
    examples = (
        "binderbox data fetch ./myrepo\nbinderbox data fetch gh/org/repo/main\n"
        "binderbox data list\nbinderbox data rm atlas"
    )

    ref = Unicode(
        "", help="The branch, tag or commit whose datasets to fetch (default: the spec's)."
    ).tag(config=True)
    aliases = {**Command.aliases, "ref": "DataCommand.ref"}

    def make_data_cache(self) -> DataCache:
        """The dataset cache ``binderbox serve`` uses: ``<data dir>/datasets``.

        Its warnings repeat the error this command prints as its one line: they
        are shown only with ``--log-level=DEBUG``.
        """
        cache = super().make_data_cache()
        quiet = self.log.getChild("data")
        level = self.log_level  # an int once validated; it is set on the handler
        if not isinstance(level, int) or level > logging.DEBUG:
            quiet.setLevel(logging.ERROR)
        cache.log = quiet
        return cache

    def run(self) -> int:
        action, *args = self.extra_args or ["list"]
        if action == "fetch" and len(args) == 1:
            return asyncio.run(self.fetch(args[0]))
        if action == "list" and not args:
            return self.list_datasets()
        if action == "rm" and args:
            return self.remove(args)
        if action == "gc" and not args:
            removed = self.make_data_cache().gc()
            print(f"removed {len(removed)} datasets", file=sys.stderr)
            return 0
        print(USAGE, file=sys.stderr)
        return 2

    # -- fetch ------------------------------------------------------------------

    async def fetch(self, spec: str) -> int:
        """Fetch every dataset ``spec`` declares; raises BinderboxError on failure."""
        pipeline = self.make_pipeline(allow_local=True)
        # the operator's own command: their network, as for the repository
        self.config.DataCache.setdefault("allow_private_hosts", True)
        cache = self.make_data_cache()
        request = LaunchRequest(provider="", spec=spec, ref=self.ref or None)
        progress = DataProgress(sys.stderr)
        try:
            state = LaunchState(provider=pipeline.provider_for(request))
            async for event in pipeline.resolve_and_fetch(state):
                progress.show(event)
            assert state.content is not None
            entries = await asyncio.to_thread(read_requirements, state.content)
            if not entries:
                print(f"{spec} declares no datasets (no data_requirement.json).", file=sys.stderr)
                return 0
            env_path, env_key = None, None
            if any(cache.fetcher_for(e).kind == "code" for e in entries):
                progress.end_line()
                env_path, env_key = await self._environment(pipeline, state)
            folders = cache.folders(entries, env_key=env_key)
            async for event in cache.ensure(folders, env_path=env_path):
                progress.show(event)
            progress.end_line()
            for name, path in sorted(cache.mounts(folders).items()):
                print(f"{name}  {path}")
            return 0
        finally:
            progress.end_line()
            await cache.aclose()
            await pipeline.store.aclose()

    async def _environment(self, pipeline: LaunchPipeline, state: LaunchState) -> tuple[Path, str]:
        """Build or reuse the environment of the fetched content (for code sources)."""
        printer = ProgressPrinter(sys.stderr, json_lines=False)
        try:
            async for event in pipeline.environment(state):
                printer.show(event)
        except BinderboxError as exc:
            raise BinderboxError(
                f"The repository's environment could not be built: {exc.user_message}",
                log_message=exc.log_message,
            ) from None
        assert state.env is not None
        return state.env.path, state.env.key

    # -- list / rm ------------------------------------------------------------

    def list_datasets(self) -> int:
        """Print one line per cached dataset: key, projectName, size, last use, source."""
        items = self.make_data_cache().list()
        for item in reversed(items):  # most recently used first, as `envs list`
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(item.last_used))
            source = item.sources[0].splitlines()[0] if item.sources else ""
            if len(item.sources) > 1:
                source += f" (+{len(item.sources) - 1} more)"
            print(f"{item.key}  {item.project_name}  {_size(item.size):>9}  {used}  {source}")
        total = _size(sum(item.size for item in items))
        print(f"{len(items)} datasets, {total}", file=sys.stderr)
        return 0

    def remove(self, names: list[str]) -> int:
        """Remove datasets by key or projectName; exit 1 if one could not be removed."""
        cache = self.make_data_cache()
        missing = [name for name in names if not cache.remove(name)]
        for name in missing:
            print(f"error: cannot remove {name}: no such dataset, or in use", file=sys.stderr)
        return 1 if missing else 0
