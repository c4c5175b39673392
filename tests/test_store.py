"""The environment store: atomic publish, shared builds (in and across processes), eviction."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from store_helpers import FAIL_HINT, FAIL_MESSAGE, gated_build, runs

from binderbox.errors import BuildError
from binderbox.store import Env, SharedBuild, Store
from binderbox.store.files import disk_usage
from binderbox.store.metadata import BuildState

HELPER = Path(__file__).with_name("store_helpers.py")
KEY = "0123456789abcdef0123456789abcdef"
#: upper bound for waiting on another process; a guard against hangs, not a timing assertion
PATIENCE = 30.0


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


@pytest.fixture
def store(root: Path) -> Store:
    return Store(root=str(root), poll_interval=0.02, min_idle=0)


async def until(condition: object, what: str) -> None:
    """Wait until ``condition()`` is true (polling), failing after PATIENCE seconds."""
    assert callable(condition)
    async with asyncio.timeout(PATIENCE):
        while True:
            if condition():
                return
            await asyncio.sleep(0.01)


class Child:
    """A real process building KEY in the same store (tests/store_helpers.py)."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.items: list[dict[str, object]] = []

    @classmethod
    async def start(cls, root: Path, workdir: Path, mode: str, key: str = KEY) -> Child:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            str(HELPER),
            str(root),
            key,
            mode,
            str(workdir),
            stdout=asyncio.subprocess.PIPE,
        )
        return cls(proc)

    async def next(self) -> dict[str, object]:
        assert self.proc.stdout is not None
        async with asyncio.timeout(PATIENCE):
            line = await self.proc.stdout.readline()
        assert line, f"child exited early with {await self.proc.wait()}"
        item: dict[str, object] = json.loads(line)
        self.items.append(item)
        return item

    async def result(self) -> dict[str, object]:
        """Read until the final item (env or error); the child then exits 0."""
        while True:
            item = await self.next()
            if "env" in item or "error" in item:
                async with asyncio.timeout(PATIENCE):
                    assert await self.proc.wait() == 0
                return item

    @property
    def lines(self) -> list[object]:
        return [item["line"] for item in self.items if "line" in item]

    def kill(self) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)


async def collect(shared: SharedBuild) -> list[str]:
    return [line async for line in shared.follow()]


def leftovers(root: Path) -> dict[str, list[str]]:
    return {sub: sorted(p.name for p in (root / sub).iterdir()) for sub in ("envs", "tmp")}


# -- one process ---------------------------------------------------------------


async def test_build_publishes_atomically_with_metadata_and_log(
    store: Store, root: Path, workdir: Path
) -> None:
    (workdir / "release").touch()
    shared = store.build(KEY, gated_build(workdir), spec={"python": "3.12"}, source="gh/a/b")
    assert not shared.joined
    lines = await collect(shared)
    env = await shared.wait()

    assert lines == ["step 1: resolving", "step 2: installing", "step 3: done"]
    assert env.path == root / "envs" / KEY
    assert env.path.stat().st_mode & 0o777 == 0o755  # readable by a session's uid
    assert (env.path / "bin" / "python").read_text() == "#!/bin/sh\n"
    assert (env.path / "lib" / "payload.bin").stat().st_size == 64 * 1024
    assert env.spec == {"python": "3.12"}
    assert env.source == "gh/a/b"
    assert env.size >= 64 * 1024
    assert leftovers(root) == {"envs": [KEY], "tmp": []}
    assert store.log_path(KEY).read_text().splitlines() == lines

    again = store.get(KEY)
    assert again is not None
    assert (again.key, again.path, again.size) == (KEY, env.path, env.size)
    assert [e.key for e in store.list()] == [KEY]
    # a second store object (another process would do the same) sees it too
    assert Store(root=str(root)).get(KEY) is not None
    # building a published key returns it without running the build function
    assert (await store.build(KEY, gated_build(workdir), spec={}, source="x").wait()).key == KEY
    assert runs(workdir) == 1


async def test_a_build_printing_without_end_keeps_and_shows_only_so_much(
    root: Path,
) -> None:
    store = Store(root=str(root), max_log_bytes=100_000)

    async def chatty(prefix: Path) -> AsyncIterator[str]:
        for i in range(20_000):
            yield f"line {i} " + "x" * 1000
        yield "the end"
        (prefix / "bin").mkdir()

    lines = await collect(store.build(KEY, chatty, spec={}, source="gh/a/b"))
    env = await store.build(KEY, chatty, spec={}, source="gh/a/b").wait()
    assert (env.path / "bin").is_dir()  # the build went on to its end
    assert len(lines) < 120 and lines[-1].endswith("the rest is not shown]")
    assert "the end" not in lines
    assert store.log_path(KEY).stat().st_size < 110_000
    await store.aclose()


async def test_failed_build_leaves_nothing_and_a_later_call_retries(
    store: Store, root: Path, workdir: Path
) -> None:
    (workdir / "release").touch()
    shared = store.build(KEY, gated_build(workdir, "fail"), spec={}, source="gh/a/b")
    assert await collect(shared) == ["step 1: resolving", "step 2: installing"]
    with pytest.raises(BuildError) as info:
        await shared.wait()
    assert (info.value.message, info.value.hint) == (FAIL_MESSAGE, FAIL_HINT)

    assert leftovers(root) == {"envs": [], "tmp": []}
    assert store.get(KEY) is None
    assert store.list() == []
    status = store.metadata.status(KEY)
    assert status is not None and status.state is BuildState.FAILED
    assert status.message == FAIL_MESSAGE

    env = await store.build(KEY, gated_build(workdir), spec={}, source="gh/a/b").wait()
    assert (env.path / "lib" / "payload.bin").exists()
    assert runs(workdir) == 2


async def test_unexpected_exception_leaves_nothing(store: Store, root: Path) -> None:
    async def broken(prefix: Path) -> AsyncIterator[str]:
        (prefix / "half-written").write_text("x")
        yield "about to break"
        raise RuntimeError("bug in a builder")

    with pytest.raises(RuntimeError):
        await store.build(KEY, broken, spec={}, source="x").wait()
    assert leftovers(root) == {"envs": [], "tmp": []}
    assert store.get(KEY) is None


async def test_cancelled_build_leaves_nothing(store: Store, root: Path, workdir: Path) -> None:
    shared = store.build(KEY, gated_build(workdir), spec={}, source="x")
    await until((workdir / "started").exists, "the build started")
    assert len(leftovers(root)["tmp"]) == 1

    shared.cancel()
    with pytest.raises(BuildError, match="stopped"):
        await shared.wait()
    assert leftovers(root) == {"envs": [], "tmp": []}
    assert store.get(KEY) is None

    # a caller that stops waiting does not stop the build others share
    other = store.build(KEY, gated_build(workdir), spec={}, source="x")
    waiter = asyncio.ensure_future(other.wait())
    await until(lambda: runs(workdir) == 2, "the second build started")
    waiter.cancel()
    (workdir / "release").touch()
    env = await other.wait()
    assert env.path.is_dir()


async def test_aclose_cancels_running_builds(store: Store, root: Path, workdir: Path) -> None:
    store.build(KEY, gated_build(workdir, "hang"), spec={}, source="x")
    await until((workdir / "started").exists, "the build started")
    await store.aclose()
    assert leftovers(root) == {"envs": [], "tmp": []}


async def test_build_cancelled_before_it_ran_lets_the_next_call_build(
    store: Store, workdir: Path
) -> None:
    shared = store.build(KEY, gated_build(workdir), spec={}, source="x")
    shared.cancel()  # in the same loop turn: the build's code never ran
    with pytest.raises(BuildError, match="stopped"):
        await shared.wait()
    await asyncio.sleep(0)  # the task's done-callbacks
    # not joined to the dead build, and its lock is free for this process to build
    again = store.build(KEY, gated_build(workdir), spec={}, source="x")
    assert not again.joined
    (workdir / "release").touch()
    assert (await again.wait()).path.is_dir()


async def test_concurrent_callers_share_one_build(store: Store, workdir: Path) -> None:
    builds = [store.build(KEY, gated_build(workdir), spec={}, source="x") for _ in range(4)]
    await until((workdir / "started").exists, "the build started")
    late = store.build(KEY, gated_build(workdir), spec={}, source="x")  # after step 1
    builds.append(late)
    assert [b.joined for b in builds] == [False, True, True, True, True]

    followers = [asyncio.ensure_future(collect(b)) for b in builds]
    (workdir / "release").touch()
    envs = await asyncio.gather(*(b.wait() for b in builds))
    logs = await asyncio.gather(*followers)

    assert runs(workdir) == 1
    assert {e.path for e in envs} == {store.env_path(KEY)}
    expected = ["step 1: resolving", "step 2: installing", "step 3: done"]
    assert logs == [expected] * 5  # the late joiner got the tail, then the live lines


async def test_a_build_that_publishes_elsewhere_is_shared_and_leaves_nothing(
    store: Store, root: Path, workdir: Path
) -> None:
    """publish=False (a build Job that pushes its image): queued and shared as any build,
    then nothing of it in the store, and no state that would stop the next build."""
    builds = [
        store.build(KEY, gated_build(workdir), spec={}, source="x", publish=False) for _ in range(2)
    ]
    assert [b.joined for b in builds] == [False, True]
    (workdir / "release").touch()
    assert await asyncio.gather(*(b.wait() for b in builds)) == [None, None]
    assert runs(workdir) == 1
    assert leftovers(root) == {"envs": [], "tmp": []}
    assert store.get(KEY) is None and store.metadata.status(KEY) is None


async def next_place(places: AsyncIterator[int]) -> int:
    async with asyncio.timeout(PATIENCE):
        return await anext(places)


async def test_builds_past_the_cap_wait_in_order(store: Store, tmp_path: Path) -> None:
    store.concurrent_builds = 1
    keys = [f"{'abc'[i]}" * 32 for i in range(3)]
    works = [tmp_path / f"work-{i}" for i in range(3)]
    for work in works:
        work.mkdir()
    first, second, third = (
        store.build(key, gated_build(work), spec={}, source="x")
        for key, work in zip(keys, works, strict=True)
    )
    sharer = store.build(keys[0], gated_build(works[0]), spec={}, source="x")
    assert [place async for place in first.queued()] == []  # a free slot: no waiting
    assert [place async for place in sharer.queued()] == []  # one build, one slot
    await until((works[0] / "started").exists, "the first build started")
    assert (store.queue.running, store.queue.waiting) == (1, 2)

    places = second.queued()
    third_places = third.queued()
    assert await next_place(places) == 1
    assert await next_place(third_places) == 2
    assert not (works[1] / "runs").exists() and not (works[2] / "runs").exists()

    (works[0] / "release").touch()  # the first ends: the second runs, the third moves up
    assert (await first.wait()).path.is_dir()
    with pytest.raises(StopAsyncIteration):
        await next_place(places)
    assert await next_place(third_places) == 1
    await until((works[1] / "started").exists, "the second build started")
    (works[1] / "release").touch()
    (works[2] / "release").touch()
    assert (await second.wait()).path.is_dir() and (await third.wait()).path.is_dir()
    assert [runs(work) for work in works] == [1, 1, 1]


async def test_a_queued_build_whose_callers_all_left_gives_up_its_place(
    store: Store, root: Path, tmp_path: Path
) -> None:
    store.concurrent_builds = 1
    keys = [f"{'def'[i]}" * 32 for i in range(3)]
    works = [tmp_path / f"work-{i}" for i in range(3)]
    for work in works:
        work.mkdir()
    running = store.build(keys[0], gated_build(works[0]), spec={}, source="x")
    leaving = store.build(keys[1], gated_build(works[1]), spec={}, source="x")
    staying = store.build(keys[1], gated_build(works[1]), spec={}, source="x")  # shares it
    behind = store.build(keys[2], gated_build(works[2]), spec={}, source="x")
    places = behind.queued()
    assert await next_place(places) == 2

    leaving.leave()  # one of the two callers left: the build keeps its place
    assert store.queue.waiting == 2
    staying.leave()  # the last one left: its place goes to the build behind
    assert await next_place(places) == 1
    with pytest.raises(BuildError, match="stopped"):
        await staying.wait()

    (works[0] / "release").touch()
    (works[2] / "release").touch()
    assert (await running.wait()).path.is_dir() and (await behind.wait()).path.is_dir()
    assert runs(works[1]) == 0  # the abandoned build never ran, and left nothing
    assert store.get(keys[1]) is None and not list((root / "tmp").iterdir())
    again = store.build(keys[1], gated_build(works[1]), spec={}, source="x")
    assert not again.joined  # a new caller starts the build afresh
    (works[1] / "release").touch()
    assert (await again.wait()).path.is_dir()


# -- several processes -----------------------------------------------------------


async def test_two_processes_run_one_build(root: Path, workdir: Path) -> None:
    first = await Child.start(root, workdir, "ok")
    assert await first.next() == {"joined": False}
    await until((workdir / "started").exists, "the first build started")
    second = await Child.start(root, workdir, "ok")
    try:
        assert await second.next() == {"joined": True}
        (workdir / "release").touch()
        one, two = await first.result(), await second.result()
    finally:
        first.kill()
        second.kill()

    assert one == two == {"env": str(root / "envs" / KEY)}
    assert runs(workdir) == 1
    assert "step 1: resolving" in second.lines  # the tail of the log, then live lines
    assert second.lines[-1] == "step 3: done"
    assert Store(root=str(root)).get(KEY) is not None


async def test_joiner_in_another_process_gets_the_failure(
    store: Store, root: Path, workdir: Path
) -> None:
    child = await Child.start(root, workdir, "fail")
    try:
        assert await child.next() == {"joined": False}
        await until((workdir / "started").exists, "the child's build started")
        shared = store.build(KEY, gated_build(workdir), spec={}, source="x")
        assert shared.joined
        follower = asyncio.ensure_future(collect(shared))
        (workdir / "release").touch()
        with pytest.raises(BuildError) as info:
            await shared.wait()
        assert await child.result() == {
            "error": FAIL_MESSAGE,
            "hint": FAIL_HINT,
            "type": "BuildError",
        }
    finally:
        child.kill()

    assert (info.value.message, info.value.hint) == (FAIL_MESSAGE, FAIL_HINT)
    assert await follower == ["step 1: resolving", "step 2: installing"]
    assert runs(workdir) == 1  # the joiner did not build the failed key again
    assert leftovers(root) == {"envs": [], "tmp": []}


@pytest.mark.parametrize("cleaner", ["build", "gc"])
async def test_sigkilled_build_leaves_nothing_usable(
    store: Store, root: Path, workdir: Path, cleaner: str
) -> None:
    child = await Child.start(root, workdir, "hang")
    await until((workdir / "started").exists, "the child's build started")
    child.kill()
    assert await child.proc.wait() == -signal.SIGKILL

    assert store.get(KEY) is None
    assert leftovers(root)["envs"] == []
    [stale] = leftovers(root)["tmp"]
    assert stale.startswith(f"{KEY}.")

    if cleaner == "gc":
        assert store.gc() == []
    else:
        (workdir / "release").touch()
        shared = store.build(KEY, gated_build(workdir), spec={}, source="x")
        assert not shared.joined  # the kernel released the dead process's lock
        await shared.wait()
        assert runs(workdir) == 2
    assert stale not in leftovers(root)["tmp"]
    assert leftovers(root)["tmp"] == []


async def test_joiner_takes_over_when_the_builder_dies(
    store: Store, root: Path, workdir: Path
) -> None:
    child = await Child.start(root, workdir, "hang")
    try:
        await until((workdir / "started").exists, "the child's build started")
        (workdir / "release").touch()
        shared = store.build(KEY, gated_build(workdir), spec={}, source="x")
        assert shared.joined
    finally:
        child.kill()
    env = await shared.wait()
    assert (env.path / "lib" / "payload.bin").exists()
    assert runs(workdir) == 2
    assert leftovers(root) == {"envs": [KEY], "tmp": []}


# -- eviction, removal, sizes ------------------------------------------------------


async def build_envs(store: Store, workdir: Path, keys: list[str]) -> dict[str, Env]:
    (workdir / "release").touch()
    return {
        key: await store.build(key, gated_build(workdir), spec={}, source=key).wait()
        for key in keys
    }


async def test_gc_evicts_least_recently_used_under_budget(store: Store, workdir: Path) -> None:
    envs = await build_envs(store, workdir, ["aaa", "bbb", "ccc", "ddd"])
    size = envs["aaa"].size
    assert all(env.size == size for env in envs.values())
    for key in ["ccc", "aaa", "ddd", "bbb"]:  # least recently used first
        assert store.get(key) is not None

    store.budget = 0
    assert store.gc() == []  # unlimited
    store.budget = 2 * size
    with store.hold("ccc"):  # in use: skipped although least recently used
        assert store.gc() == ["aaa", "ddd"]
    assert [env.key for env in store.list()] == ["bbb", "ccc"]
    assert store.get("aaa") is None
    assert not store.env_path("aaa").exists()
    assert leftovers(Path(store.root))["tmp"] == []

    store.budget = size
    store.min_idle = 3600.0  # everything was used just now
    assert store.gc() == []
    store.min_idle = 0.0
    assert store.gc() == ["ccc"]
    assert [env.key for env in store.list()] == ["bbb"]


async def test_remove(store: Store, workdir: Path) -> None:
    await build_envs(store, workdir, ["aaa"])
    assert store.remove("aaa")
    assert store.get("aaa") is None
    assert not store.env_path("aaa").exists()
    assert not store.remove("aaa")

    (workdir / "release").unlink()
    shared = store.build("bbb", gated_build(workdir), spec={}, source="x")
    await until((workdir / "started").exists, "the build started")
    assert not store.remove("bbb")  # being built
    (workdir / "release").touch()
    await shared.wait()
    with store.hold("bbb"):
        assert not store.remove("bbb")  # in use
    assert store.remove("bbb")
    assert list((Path(store.root) / "locks").iterdir()) == []


async def test_removing_a_vanished_tree_leaves_no_lock_files(
    store: Store, root: Path, workdir: Path
) -> None:
    await build_envs(store, workdir, ["aaa"])
    hold = store.hold("aaa")
    assert hold is not None
    hold.release()
    shutil.rmtree(store.env_path("aaa"))  # deleted behind the store's back
    assert not store.remove("aaa")
    assert store.metadata.get("aaa") is None
    assert list((root / "locks").iterdir()) == []


async def test_get_and_hold_forget_a_vanished_tree(store: Store, workdir: Path) -> None:
    await build_envs(store, workdir, ["aaa", "bbb"])
    for key in ["aaa", "bbb"]:
        shutil.rmtree(store.env_path(key))  # deleted behind the store's back
    assert store.hold("aaa") is None
    assert store.get("bbb") is None
    assert store.metadata.get("aaa") is None and store.metadata.get("bbb") is None
    assert store.list() == []


async def test_showing_an_environment_does_not_count_as_a_use(
    tmp_path: Path, workdir: Path
) -> None:
    data = tmp_path / "data"
    store = Store(root=str(data / "store"), min_idle=0)
    envs = await build_envs(store, workdir, ["aaa", "bbb"])
    store.metadata.touch("aaa", 1000.0)  # least recently used: evicted first
    store.metadata.touch("bbb", 2000.0)

    async with asyncio.timeout(PATIENCE):
        proc = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "binderbox", "envs", "show", "aaa", "--data-dir", str(data)),
            stdout=asyncio.subprocess.PIPE,
            cwd=tmp_path,
        )
        out, _ = await proc.communicate()
    assert proc.returncode == 0
    shown = json.loads(out)
    assert (shown["key"], shown["last_used"]) == ("aaa", 1000.0)
    looked = store.get("aaa", touch=False)
    assert looked is not None and looked.last_used == 1000.0
    record = store.metadata.get("aaa")
    assert record is not None and record.last_used == 1000.0

    store.budget = max(env.size for env in envs.values())
    assert store.gc() == ["aaa"]  # still the least recently used


async def test_gc_removes_orphans_and_old_failure_logs(
    store: Store, root: Path, workdir: Path
) -> None:
    (workdir / "release").touch()
    with pytest.raises(BuildError):
        await store.build("failed", gated_build(workdir, "fail"), spec={}, source="x").wait()
    await build_envs(store, workdir, ["kept"])
    (root / "envs" / "orphan").mkdir()  # e.g. a crash between rename and metadata insert

    assert store.gc() == ["orphan"]
    assert store.log_path("failed").exists()  # younger than log_max_age
    store.log_max_age = 0
    store.gc()
    assert not store.log_path("failed").exists()
    assert store.metadata.status("failed") is None
    assert store.log_path("kept").exists()
    assert sorted(p.name for p in (root / "envs").iterdir()) == ["kept"]


def test_size_counts_bytes_freed_on_deletion(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "shared.bin").write_bytes(b"s" * 256 * 1024)
    tree = tmp_path / "tree"
    tree.mkdir()
    empty = disk_usage(tree)
    (tree / "own.bin").write_bytes(b"o" * 128 * 1024)
    os.link(tree / "own.bin", tree / "own-again.bin")  # counted once
    os.link(cache / "shared.bin", tree / "from-cache.bin")  # not freed by deleting tree
    (tree / "link").symlink_to("own.bin")

    used = disk_usage(tree) - empty
    assert 128 * 1024 <= used < 256 * 1024


async def test_keys_must_be_plain_names(store: Store, workdir: Path) -> None:
    for bad in ["../etc", "a/b", "", "a.b"]:
        assert store.get(bad) is None
        assert store.hold(bad) is None
        assert not store.remove(bad)
        with pytest.raises(ValueError):
            store.build(bad, gated_build(workdir), spec={}, source="x")


async def test_hold_passed_to_a_child_process_protects_from_eviction(
    store: Store, workdir: Path
) -> None:
    await build_envs(store, workdir, ["aaa", "bbb"])
    store.budget = 1
    hold = store.hold("aaa")
    assert hold is not None
    session = await asyncio.create_subprocess_exec(
        "sleep", "3600", pass_fds=[hold.fileno()]
    )  # e.g. the sandbox of a session
    hold.release()
    try:
        assert store.gc() == ["bbb"]
        assert store.get("aaa") is not None
    finally:
        session.kill()
        await session.wait()
    assert store.gc() == ["aaa"]
    assert store.hold("aaa") is None


async def test_build_adopts_a_tree_published_without_metadata(
    store: Store, root: Path, workdir: Path
) -> None:
    tree = root / "envs" / KEY
    tree.mkdir(parents=True)  # a crash between the rename and the metadata insert
    (tree / "marker").write_text("complete")
    env = await store.build(KEY, gated_build(workdir), spec={"a": 1}, source="x").wait()
    assert (env.path / "marker").read_text() == "complete"
    assert env.spec == {"a": 1}
    assert runs(workdir) == 0


def test_keyed_folders_evict_least_recently_used_and_never_what_is_in_use(
    tmp_path: Path,
) -> None:
    """The store's scheme for folder caches (apt layers, conda packages): one eviction
    loop (the store's), use locks that another process holds keep an entry."""
    import subprocess
    import time

    from binderbox.store.lru import KeyedFolders

    root = tmp_path / "cache"
    root.mkdir()
    extras = tmp_path / "extracted"
    extras.mkdir()
    folders = KeyedFolders(root, root, extra=lambda key: [extras / key])
    for age, key in enumerate(["old", "mid", "new", "held"]):
        (root / key).mkdir()
        (root / key / "data").write_bytes(os.urandom(64 * 1024))
        (extras / key).write_bytes(os.urandom(4096))
        stamp = time.time() - 1000 + age * 100
        os.utime(root / key, (stamp, stamp))
    os.utime(root / "held", (1.0, 1.0))  # the least recently used of all
    size = next(e.size for e in folders.entries() if e.key == "old")
    assert size >= 64 * 1024 + 4096  # the entry and what belongs to it

    # another process (a session's supervisor, a build) holds "held"'s use lock
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)\n"
            "fcntl.flock(fd, fcntl.LOCK_SH); print('held', flush=True); time.sleep(60)",
            str(folders.use_path("held")),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        assert folders.evict(0, 0.0) == []  # 0: no budget
        assert folders.evict(10**12, 0.0) == []  # under it
        removed = folders.evict(2 * size, 0.0)
        assert [e.key for e in removed] == ["old", "mid"]  # "held" skipped, in use
    finally:
        holder.kill()
        holder.wait()
    assert sorted(p.name for p in root.iterdir()) == ["held", "locks", "new", "tmp"]
    assert sorted(p.name for p in extras.iterdir()) == ["held", "new"]
    assert list((root / "tmp").iterdir()) == []

    with folders.use("new"):  # used now: kept although over budget
        assert [e.key for e in folders.evict(1, 0.0)] == ["held"]
    assert [e.key for e in folders.evict(1, 3600.0)] == []  # used under min_idle ago
    assert [e.key for e in folders.evict(1, 0.0)] == ["new"]
