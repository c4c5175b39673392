"""Memory of a disconnect storm: ``/build`` clients that leave before ``ready``.

Run: .venv/bin/python benchmarks/disconnects.py [--clients 200] [--at-once 20]
(about two minutes)

What it does, on this machine, through the real command and the proxy's
public port:

1. starts ``binderbox serve`` (a subprocess, fresh data directory, the
   shared uv cache of the tests), builds one repository's environment and
   launches it once (the session is then stopped), so the storm launches a
   cached environment;
2. the storm: ``--clients`` ``/build`` clients, ``--at-once`` at a time,
   from ``--sources`` loopback addresses (127.0.0.1, 127.0.0.2... each a
   client address for the service); each one closes its connection at one of
   the points of ``tests/storm_helpers.py``, in turn: as the answer starts,
   on the first ``fetching``, on ``built``, on the first ``launching``, when
   the spawn is pending, when the sandboxed server is starting (just before
   ``ready``);
3. samples, every second during the storm and for 30 s after it: PSS and
   RSS summed over the service's process tree (``binderbox serve``, the
   proxy, the hub, the culler, and the sessions, which are the hub's
   children), the hub's users and servers (its API), and the session
   supervisors of this data directory (``/proc``: also those the hub lost);
4. prints the figures before the storm, at its peak, at its end and 30 s
   after, and the time of one more launch to ``ready``.

Nothing is asserted: ``tests/test_abandoned.py`` holds the behaviour.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from launch import descendants, memory_of  # noqa: E402
from repos import make_repo, notebook  # noqa: E402
from serve_helpers import ServeProcess, build_events, end_session, git_spec  # noqa: E402
from storm_helpers import end_supervisors, leftovers, storm  # noqa: E402

AFTER = 30.0


@dataclass
class Sample:
    at: float
    pss_mib: float
    rss_mib: float
    processes: int
    users: int
    servers: int
    supervisors: int

    def row(self, label: str) -> str:
        return (
            f"{label:28}{self.at:7.1f}{self.pss_mib:9.0f}{self.rss_mib:9.0f}"
            f"{self.processes:7d}{self.users:7d}{self.servers:8d}{self.supervisors:7d}"
        )


HEADER = f"{'':28}{'t (s)':>7}{'PSS':>9}{'RSS':>9}{'procs':>7}{'users':>7}{'servers':>8}{'sups':>7}"


async def sample(serve: ServeProcess, started: float) -> Sample:
    assert serve.proc is not None
    memory = await asyncio.to_thread(memory_of, descendants(serve.proc.pid))
    found = await leftovers(serve)
    return Sample(
        at=time.monotonic() - started,
        pss_mib=memory["pss_mib"],
        rss_mib=memory["rss_mib"],
        processes=int(memory["processes"]),
        users=len(found.users),
        servers=len(found.servers),
        supervisors=len(found.supervisors),
    )


async def sampling(serve: ServeProcess, started: float, into: list[Sample]) -> None:
    while True:
        into.append(await sample(serve, started))
        await asyncio.sleep(1.0)


async def bench(serve: ServeProcess, repo: Path, args: argparse.Namespace) -> None:
    first = await build_events(serve.url, "git", git_spec(repo))
    if first.last.get("phase") != "ready":
        raise SystemExit(f"first launch failed: {first.events[-3:]}")
    await end_session(serve, first.last)
    await asyncio.sleep(5)  # let the first session's stop settle
    started = time.monotonic()
    before = await sample(serve, started)
    samples: list[Sample] = []
    sampler = asyncio.create_task(sampling(serve, started, samples))
    sources = [f"127.0.0.{i + 1}" for i in range(args.sources)]
    url = f"{serve.url.rstrip('/')}/build/git/{git_spec(repo)}"
    try:
        outcomes = await storm(url, args.clients, args.at_once, sources)
        end = await sample(serve, started)
        storm_samples = list(samples)
        await asyncio.sleep(AFTER)
    finally:
        sampler.cancel()
    after = await sample(serve, started)
    endings = collections.Counter(o.ending for o in outcomes)
    print(
        f"{args.clients} clients, {args.at_once} at a time, from {args.sources} addresses;"
        f" storm over after {end.at:.1f} s"
    )
    print("  how they ended: " + ", ".join(f"{k} {v}" for k, v in sorted(endings.items())))
    peak = max(storm_samples or [end], key=lambda s: s.pss_mib)
    busiest = max(storm_samples or [end], key=lambda s: s.supervisors)
    print("\nmemory of the service's process tree (MiB) and its sessions")
    print(HEADER)
    print(before.row("before the storm"))
    print(peak.row("storm: highest PSS"))
    print(busiest.row("storm: most supervisors"))
    print(end.row("storm over"))
    print(after.row(f"{AFTER:.0f} s after"))
    ready_in = time.monotonic()
    last = await build_events(serve.url, "git", git_spec(repo))
    outcome = last.last.get("phase")
    print(f"\none more launch: {outcome} after {time.monotonic() - ready_in:.1f} s")
    if outcome == "ready":
        await end_session(serve, last.last)
    else:
        print(f"  {last.status} {last.events[-3:]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200, help="clients in the storm")
    parser.add_argument("--at-once", type=int, default=20, help="clients connected at a time")
    parser.add_argument("--sources", type=int, default=4, help="client addresses (127.0.0.x)")
    parser.add_argument("--config", default="", help="extra lines of binderbox_config.py")
    parser.add_argument("--keep", default="", help="work here and keep it (logs), not in /tmp")
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        if args.keep:
            work = Path(args.keep)
            work.mkdir(parents=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="binderbox-bench-")))
            work.chmod(0o711)  # sandboxes run as their own uids: they must enter it
        repo = make_repo(
            work / "bench-repo",
            {"requirements.txt": "six==1.16.0\n", "index.ipynb": notebook("print(6*7)")},
        )
        serve = ServeProcess(work / "serve", work / "data", args.config)
        serve.start()
        print(f"binderbox serve at {serve.url}, data in {serve.data_dir}")
        try:
            asyncio.run(bench(serve, repo, args))
        finally:
            try:
                serve.stop_sessions()
            finally:
                status = serve.stop()
                if lost := end_supervisors(serve.data_dir):
                    print(f"killed {len(lost)} session supervisors the hub had lost")
        if status != 0:
            raise SystemExit(f"binderbox serve exited with {status}")


if __name__ == "__main__":
    main()
