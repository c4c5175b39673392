"""Launch figures of ``binderbox serve``: cached launches, first cell, idle memory.

Run: .venv/bin/python benchmarks/launch.py [--launches N] [--isolation on|off|both]
(about a minute; ``both`` runs a service with sandbox networks and one without, launches
alternating between them, to show what the isolation costs)

What it does, on this machine, through the real command and the proxy's
public port (as a browser or a thebe client would):

1. starts ``binderbox serve`` (a subprocess, fresh data directory, the
   shared uv cache of the tests) and builds one repository's environment
   once (``requirements.txt`` with six, a notebook);
2. launches that cached environment ``N`` times (default 12), one after
   the other.  Each launch is timed from the ``/build`` request to

   * ``ready``: the event stream says the server is up;
   * first cell: a kernel is started over REST and ``print(6*7)`` has
     answered ``42`` over the kernel websocket (what a person waits for
     before their first cell runs);

   Each session is stopped (its hub user deleted) before the next launch,
   outside the timed part, so every launch starts on an otherwise idle
   service;
3. measures the memory of one idle session: RSS and PSS summed over the
   session's processes (the supervisor found through the hub's server state,
   and all its descendants: bwrap, jupyterhub-singleuser, the kernel), right
   after ``ready`` + 5 s, then again with one idle kernel;
4. prints where the time of a launch goes, from the arrival times of the
   stream's events: resolve/fetch/cache lookup, the hub API calls before the
   spawn, the server's start inside the sandbox, and the rest.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from figures import percentile  # noqa: E402
from kernels import execute, start_kernel  # noqa: E402
from repos import make_repo, notebook  # noqa: E402
from serve_helpers import (  # noqa: E402
    ServeProcess,
    Stream,
    build_events,
    end_session,
    git_spec,
    user_of,
)

from binderbox.sessions.hubclient import HubClient  # noqa: E402


def message_time(stream: Stream, text: str) -> float | None:
    """Arrival time of the first event whose message starts with ``text``."""
    for event, at in zip(stream.events, stream.times, strict=True):
        if str(event.get("message", "")).startswith(text):
            return at
    return None


# -- memory ---------------------------------------------------------------------------


def _children() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        tree.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    return tree


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it."""
    tree = _children()
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(tree.get(current, []))
    return found


def memory_of(pids: list[int]) -> dict[str, float]:
    """RSS and PSS (MiB) summed over ``pids`` (from /proc/<pid>/smaps_rollup)."""
    rss = pss = 0
    for pid in pids:
        try:
            text = Path(f"/proc/{pid}/smaps_rollup").read_text()
        except OSError:
            continue
        for line in text.splitlines():
            name, _, value = line.partition(":")
            if name == "Rss":
                rss += int(value.split()[0])
            elif name == "Pss":
                pss += int(value.split()[0])
    return {"rss_mib": rss / 1024, "pss_mib": pss / 1024, "processes": len(pids)}


async def session_memory(serve: ServeProcess, ready: dict[str, Any]) -> dict[str, float]:
    client = HubClient(serve.hub_api_url, serve.api_token)
    user = await client.get_user(user_of(ready["url"]))
    supervisor = int(user["servers"][""]["state"]["pid"])
    result = memory_of(descendants(supervisor))
    group = Path("/sys/fs/cgroup/memory/binderbox") / f"{user_of(ready['url'])}-default"
    usage = group / "memory.usage_in_bytes"
    if usage.exists():
        result["cgroup_usage_mib"] = int(usage.read_text()) / (1 << 20)
    return result


# -- launches ---------------------------------------------------------------------------


async def one_launch(serve: ServeProcess, repo: Path) -> dict[str, float]:
    """Launch, run a first cell, stop; the timings (seconds from the request)."""
    started = time.monotonic()
    stream = await build_events(serve.url, "git", git_spec(repo))
    ready = stream.last
    if ready.get("phase") != "ready":
        raise SystemExit(f"launch failed: {stream.events[-3:]}")
    if "building" in stream.phases:
        raise SystemExit("a launch of the cached environment built again")
    kernel = await start_kernel(ready["url"], ready["token"])
    try:
        out = await execute(ready["url"], ready["token"], kernel, "print(6*7)")
    except AssertionError:
        print_session_log(serve)  # the benchmark's data directory is deleted afterwards
        raise
    first_cell = time.monotonic() - started
    assert out == "42\n", out
    await end_session(serve, ready)
    ready_at = stream.time_of("ready")
    built = stream.time_of("built")
    spawn = message_time(stream, "Starting the sandboxed") or built
    answered = message_time(stream, "Server ready") or ready_at
    return {
        "ready": ready_at,
        "first_cell": first_cell,
        "to_built": built,
        "hub_calls": spawn - built,
        "server_start": answered - spawn,
        "after_server": ready_at - answered,
        "kernel": first_cell - ready_at,
    }


def print_session_log(serve: ServeProcess) -> None:
    """The end of the newest session's log (on stderr)."""
    logs = sorted(
        (serve.data_dir / "logs" / "sessions").glob("*.log"), key=lambda p: p.stat().st_mtime
    )
    if logs:
        print(f"--- {logs[-1]}\n{logs[-1].read_text(errors='replace')[-8000:]}", file=sys.stderr)


def report(samples: list[dict[str, float]]) -> None:
    print(f"\n{len(samples)} launches of a cached environment (sessions stopped in between)")
    print(f"{'':34}{'p50':>8}{'p95':>8}{'min':>8}{'max':>8}")
    rows = [
        ("launch request -> ready", "ready"),
        ("launch request -> first cell output", "first_cell"),
        ("  request -> built (resolve, cache)", "to_built"),
        ("  built -> spawn (hub API calls)", "hub_calls"),
        ("  spawn -> server answers", "server_start"),
        ("  server answers -> ready event", "after_server"),
        ("  ready -> first cell (kernel)", "kernel"),
    ]
    for label, key in rows:
        values = [sample[key] for sample in samples]
        print(
            f"{label:34}{percentile(values, 50):8.2f}{percentile(values, 95):8.2f}"
            f"{min(values):8.2f}{max(values):8.2f}"
        )


async def measure_idle(serve: ServeProcess, repo: Path) -> None:
    ready = (await build_events(serve.url, "git", git_spec(repo))).last
    try:
        await asyncio.sleep(5)
        idle = await session_memory(serve, ready)
        kernel = await start_kernel(ready["url"], ready["token"])
        await execute(ready["url"], ready["token"], kernel, "print(6*7)")
        await asyncio.sleep(3)
        with_kernel = await session_memory(serve, ready)
    finally:
        await end_session(serve, ready)
    print("\nidle session memory (MiB, summed over its processes)")
    for label, figures in (("server only", idle), ("server + 1 idle kernel", with_kernel)):
        extra = (
            f"  cgroup usage {figures['cgroup_usage_mib']:.0f}"
            if "cgroup_usage_mib" in figures
            else ""
        )
        print(
            f"  {label:24} RSS {figures['rss_mib']:6.0f}  PSS {figures['pss_mib']:6.0f}"
            f"  ({figures['processes']:.0f} processes){extra}"
        )


def wait_for_file(path: Path) -> None:
    while not path.is_file():
        time.sleep(0.1)


async def first_build(serve: ServeProcess, repo: Path, label: str) -> None:
    """The first launch (builds the environment); waits for its bytecode."""
    started = time.monotonic()
    first = await build_events(serve.url, "git", git_spec(repo))
    if first.last.get("phase") != "ready":
        raise SystemExit(f"first launch failed: {first.events[-3:]}")
    ready_in = time.monotonic() - started
    await end_session(serve, first.last)
    built_in = first.time_of("built")
    print(
        f"{label}first launch (builds the environment): built after {built_in:.1f} s,"
        f" ready after {ready_in:.1f} s"
    )
    # the environment gets its bytecode in the background: time it, and let the
    # timed launches below start from a finished environment
    done = Path(first.of("built")[0]["path"]) / ".binderbox" / "bytecode.json"
    await asyncio.to_thread(wait_for_file, done)
    print(f"  its bytecode was complete {time.monotonic() - started:.1f} s after the request")


async def bench(services: dict[str, ServeProcess], repo: Path, launches: int) -> None:
    """Launches alternate between the services (same run, same machine load)."""
    for label, serve in services.items():
        await first_build(serve, repo, f"[{label}] " if len(services) > 1 else "")
    samples: dict[str, list[dict[str, float]]] = {label: [] for label in services}
    for _ in range(launches):
        for label, serve in services.items():
            samples[label].append(await one_launch(serve, repo))
    for label, serve in services.items():
        if len(services) > 1:
            print(f"\n== {label}")
        report(samples[label])
        await measure_idle(serve, repo)


#: what each --isolation mode adds to the service's config
MODES = {
    "on": "",
    "off": "c.SandboxNetwork.isolation = 'off'  # sessions on the host's network\n",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=12, help="timed launches (>= 10)")
    parser.add_argument(
        "--cold",
        action="store_true",
        help="the first launch builds with empty package and bytecode caches",
    )
    parser.add_argument(
        "--isolation",
        choices=["on", "off", "both"],
        default="on",
        help="sandbox networks on (the default), off, or both in one run (launches alternate)",
    )
    args = parser.parse_args()
    modes = ["off", "on"] if args.isolation == "both" else [args.isolation]
    with tempfile.TemporaryDirectory(prefix="binderbox-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o711)  # sandboxes run as their own uids: they must enter it
        repo = make_repo(
            work / "bench-repo",
            {"requirements.txt": "six==1.16.0\n", "index.ipynb": notebook("print(6*7)")},
        )
        extra = ""
        if args.cold:
            extra += f"\nc.PythonBuilder.cache_dir = {str(work / 'cold' / 'uv')!r}\n"
        services = {
            f"isolation {mode}": ServeProcess(
                work / f"serve-{mode}", work / f"data-{mode}", extra + MODES[mode]
            )
            for mode in modes
        }
        try:
            for label, serve in services.items():
                started = time.monotonic()
                serve.start()
                print(f"[{label}] binderbox serve started in {time.monotonic() - started:.1f} s")
            asyncio.run(bench(services, repo, args.launches))
        finally:
            statuses = [serve.stop() for serve in services.values() if serve.proc is not None]
        if any(statuses):
            raise SystemExit(f"binderbox serve exited with {statuses}")


if __name__ == "__main__":
    main()
