"""Datasets: data_requirement.json parsing, fetchers and the cache, against real servers.

Every remote is a real HTTP server on 127.0.0.1 (tests/data_helpers.py), so
the caches allow private hosts (``DataCache.allow_private_hosts``; the policy
itself is tested in tests/test_fetch_policy.py);
Zenodo, OSF, S3 and Google Drive answers are recorded responses in their real
shapes (tests/data/recorded/).  Code sources run in a real bubblewrap sandbox
with a real virtualenv.
"""

from __future__ import annotations

import asyncio
import gzip
import io
import json
import os
import shutil
import stat
import tarfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from data_helpers import (
    RECORDED,
    FileServer,
    Route,
    code_env,
    md5,
    tar_bytes,
    tar_members,
    zip_bytes,
)
from nethosts import namespace_host

from binderbox.data import DataCache, DataConfigError, DataEntry, read_requirements
from binderbox.data.fetchers.code import CodeFetcher
from binderbox.data.fetchers.gdrive import GoogleDriveFetcher
from binderbox.data.fetchers.osf import OsfFetcher
from binderbox.data.fetchers.s3 import S3Fetcher
from binderbox.data.fetchers.zenodo import ZenodoFetcher
from binderbox.data.requirement import FILENAME, parse_requirements
from binderbox.environments.detect import config_dir
from binderbox.errors import DataError
from binderbox.events import Event, Fetching

# -- fixtures -------------------------------------------------------------------


@pytest.fixture
def server() -> Iterator[FileServer]:
    srv = FileServer()
    yield srv
    srv.close()


@pytest.fixture
async def cache(tmp_path: Path, server: FileServer) -> AsyncIterator[DataCache]:
    # these tests fetch from a server on 127.0.0.1: private hosts allowed (the policy
    # is tests/test_fetch_policy.py's subject)
    c = DataCache(root=str(tmp_path / "cache"), min_idle=0.0, allow_private_hosts=True)
    c.fetchers  # noqa: B018 - instantiate, then point the API fetchers at the local server
    for fetcher in c.fetchers:
        if isinstance(fetcher, ZenodoFetcher):
            fetcher.api_url = server.url("/api")
        elif isinstance(fetcher, OsfFetcher):
            fetcher.api_url = server.base
        elif isinstance(fetcher, S3Fetcher):
            fetcher.endpoint = server.base
        elif isinstance(fetcher, GoogleDriveFetcher):
            fetcher.base_url = server.base
    yield c
    await c.aclose()


def entries_of(obj: object) -> list[DataEntry]:
    return parse_requirements(json.dumps(obj))


async def ensure(
    cache: DataCache,
    entries: list[DataEntry],
    env_path: Path | None = None,
    env_key: str | None = None,
) -> list[Event]:
    folders = cache.folders(entries, env_key=env_key)
    return [event async for event in cache.ensure(folders, env_path=env_path)]


def mounted(
    cache: DataCache, entries: list[DataEntry], env_key: str | None = None
) -> dict[str, Path]:
    """``projectName`` -> published folder of ``entries`` (fetched already)."""
    return cache.mounts(cache.folders(entries, env_key=env_key))


def files_under(path: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(path)): p.read_bytes()
        for p in sorted(path.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def lock_files(cache: DataCache) -> list[str]:
    locks = Path(cache.root) / "locks"
    return sorted(p.name for p in locks.iterdir()) if locks.exists() else []


def assert_no_leftovers(cache: DataCache) -> None:
    root = Path(cache.root)
    assert list((root / "datasets").iterdir()) == []
    assert list((root / "tmp").iterdir()) == []
    assert lock_files(cache) == []


# -- parsing --------------------------------------------------------------------


def test_read_requirements_precedence_and_shapes(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "binder").mkdir(parents=True)
    (repo / "data_requirement.json").write_text('{"src": "https://x/a.zip", "projectName": "root"}')
    assert read_requirements(repo) == []  # a binder/ folder is the only place looked at
    (repo / "binder" / "data_requirement.json").write_text(
        json.dumps(
            {
                "atlas": {"src": "https://x/a.zip", "dst": "../../data", "projectName": "atlas"},
                "scores": {
                    "src": "10.5281/zenodo.1",
                    "dst": "/data",
                    "projectName": "atlas",
                    "version": 2,
                },
            }
        )
    )
    entries = read_requirements(repo)
    assert [(e.label, e.project_name) for e in entries] == [("atlas", "atlas"), ("scores", "atlas")]
    assert entries[1].get("version") == 2 and entries[0].get("dst") == "../../data"
    (repo / ".binder").mkdir()
    # the environment files' rule and message (detect.config_dir), as a DataConfigError
    with pytest.raises(DataConfigError, match=r"Both binder/ and \.binder/ exist"):
        read_requirements(repo)
    single = tmp_path / "single"
    single.mkdir()
    (single / "data_requirement.json").write_text('{"src": "s3://b/p", "projectName": "ds"}')
    assert [e.project_name for e in read_requirements(single)] == ["ds"]


def test_requirements_follow_the_environment_files_folder(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / ".binder").mkdir(parents=True)
    (repo / "data_requirement.json").write_text('{"src": "s3://b/root", "projectName": "root"}')
    (repo / ".binder" / FILENAME).write_text('{"src": "s3://b/dot", "projectName": "dot"}')
    assert config_dir(repo) == ".binder"
    assert [e.project_name for e in read_requirements(repo)] == ["dot"]
    # the folder detection found (EnvSpec.config_dir) is used as given, not looked up again
    assert [e.project_name for e in read_requirements(repo, "")] == ["root"]
    assert [e.project_name for e in read_requirements(repo, ".binder")] == ["dot"]
    assert read_requirements(repo, "binder") == []


@pytest.mark.parametrize(
    ("name", "problem"),
    [
        ("../../etc", "slash"),
        ("..", "not a folder"),
        (".", "not a folder"),
        ("a/b", "slash"),
        ("a\nb", "control"),
        ("x" * 200, "longer"),
        ("", "no projectName"),
    ],
)
def test_unsafe_project_names_are_refused(name: str, problem: str) -> None:
    with pytest.raises(DataConfigError, match=problem) as info:
        entries_of({"evil": {"src": "https://x/a.zip", "projectName": name}})
    assert "'evil'" in info.value.message


def test_identity_ignores_label_but_not_other_keys() -> None:
    a = entries_of({"one": {"src": "https://x/a", "projectName": "p", "version": 1}})[0]
    b = entries_of({"two": {"src": "https://x/a", "projectName": "p", "version": 1}})[0]
    c = entries_of({"one": {"src": "https://x/a", "projectName": "p", "version": 2}})[0]
    assert a.identity_hash() == b.identity_hash() != c.identity_hash()


def test_malformed_files_fail_plainly() -> None:
    with pytest.raises(DataConfigError, match="not valid JSON"):
        parse_requirements("{nope")
    with pytest.raises(DataConfigError, match="no src"):
        entries_of({"x": {"projectName": "p"}})


# -- http sources, the cache ------------------------------------------------------------


def serve_three(server: FileServer) -> list[DataEntry]:
    server.add("/rel/atlas.tar.gz", tar_bytes({"atlas/a.txt": b"A", "atlas/sub/b.txt": b"B"}))
    server.add("/dl/course.zip", zip_bytes({"notes/n1.txt": b"N1", "top.txt": b"T"}))
    server.add("/files/scores.csv", b"id,score\n1,2\n")
    return entries_of(
        {
            "atlas": {
                "src": server.url("/rel/atlas.tar.gz"),
                "dst": "../../data",
                "projectName": "atlas",
            },
            "course": {
                "src": server.url("/dl/course.zip"),
                "dst": "/data",
                "projectName": "course",
            },
            "scores": {
                "src": server.url("/files/scores.csv"),
                "dst": "./data",
                "projectName": "course",
            },
        }
    )


async def test_entries_land_in_their_project_folders(cache: DataCache, server: FileServer) -> None:
    entries = serve_three(server)
    events = await ensure(cache, entries)
    mounts = mounted(cache, entries)
    assert set(mounts) == {"atlas", "course"}
    assert files_under(mounts["atlas"]) == {"atlas/a.txt": b"A", "atlas/sub/b.txt": b"B"}
    assert files_under(mounts["course"]) == {
        "notes/n1.txt": b"N1",
        "top.txt": b"T",
        "scores.csv": b"id,score\n1,2\n",
    }
    assert all(isinstance(e, Fetching) for e in events)
    progress = [e for e in events if isinstance(e, Fetching) and e.total]
    assert any("course.zip" in e.message and server.base in e.message for e in progress)
    assert any(e.done == e.total and "100%" in e.message for e in progress)
    assert not (Path(cache.root) / "tmp").exists() or not list((Path(cache.root) / "tmp").iterdir())


async def test_folders_group_by_project_name_and_key_each_folder(cache: DataCache) -> None:
    code = "import os; os.mkdir(_dst + '/x');"
    entries = entries_of(
        {
            "b1": {"src": "https://example.org/b1.zip", "projectName": "b"},
            "a": {"src": "https://example.org/a.zip", "projectName": "a"},
            "b2": {"src": code, "projectName": "b"},
        }
    )
    folders = cache.folders(entries, env_key="env-1")
    # first appearance first, entries in file order: what ensure fetches, in that order
    assert [(f.name, [e.label for e in f.entries]) for f in folders] == [
        ("b", ["b1", "b2"]),
        ("a", ["a"]),
    ]
    assert [f.key for f in folders] == [
        cache.key_for([entries[0], entries[2]], "env-1"),
        cache.key_for([entries[1]]),
    ]
    # a code source's folder depends on the environment; a plain folder does not
    other = cache.folders(entries, env_key="env-2")
    assert other[0].key != folders[0].key and other[1] == folders[1]
    with pytest.raises(DataError, match="cannot fetch the source"):
        cache.folders(entries_of({"src": "ftp://example.org/x.zip", "projectName": "f"}))


async def test_cached_datasets_are_not_downloaded_again(
    cache: DataCache, server: FileServer, tmp_path: Path
) -> None:
    entries = serve_three(server)
    await ensure(cache, entries)
    hits = dict(server.hits)
    await ensure(cache, entries)
    # another commit of the repository: same file, other labels and order
    repo = tmp_path / "repo2"
    (repo / ".binder").mkdir(parents=True)
    raw = {
        e.label + "-renamed": {
            "src": e.src,
            "projectName": e.project_name,
            **{k: json.loads(v) for k, v in e.extra},
        }
        for e in reversed(entries)
    }
    (repo / ".binder" / "data_requirement.json").write_text(json.dumps(raw))
    other = read_requirements(repo)
    await ensure(cache, other)
    assert dict(server.hits) == hits
    assert mounted(cache, other) == mounted(cache, entries)
    # a changed version means new content: downloaded again (only that folder)
    bumped = entries_of(
        {
            "atlas": {
                "src": entries[0].src,
                "dst": "../../data",
                "projectName": "atlas",
                "version": "2",
            }
        }
    )
    await ensure(cache, bumped)
    assert server.hits["/rel/atlas.tar.gz"] == hits["/rel/atlas.tar.gz"] + 1
    assert mounted(cache, bumped)["atlas"] != mounted(cache, entries)["atlas"]


async def test_concurrent_ensures_download_once(cache: DataCache, server: FileServer) -> None:
    server.add("/big.tar", tar_bytes({f"f{i}.bin": bytes(200_000) for i in range(20)}, ""))
    entries = entries_of({"src": server.url("/big.tar"), "projectName": "big"})
    results = await asyncio.gather(*(ensure(cache, entries) for _ in range(10)))
    assert server.hits["/big.tar"] == 1
    assert all(any("ready" in e.message for e in events) for events in results)
    assert len(files_under(mounted(cache, entries)["big"])) == 20


async def test_two_caches_on_one_root_share_the_download(
    cache: DataCache, server: FileServer
) -> None:
    # a second cache object stands for a second process (flock on the same files)
    server.add("/shared.tar", tar_bytes({"x.bin": bytes(3_000_000)}, ""))
    entries = entries_of({"src": server.url("/shared.tar"), "projectName": "shared"})
    other = DataCache(root=cache.root, allow_private_hosts=True)
    await asyncio.gather(ensure(cache, entries), ensure(other, entries))
    assert server.hits["/shared.tar"] == 1
    assert mounted(cache, entries) == mounted(other, entries)


def _failing_cases(server: FileServer) -> dict[str, tuple[Route, str, str]]:
    body = tar_bytes({"a.txt": b"x" * 100_000})
    return {
        "missing": (Route(b"nope", status=404), "/m/data.tar.gz", "answered 404"),
        "reset": (Route(body, failure="reset"), "/r/data.tar.gz", "broke off"),
        "truncated": (Route(b"abcdef" * 1000, failure="truncate"), "/t/plain.bin", "incomplete"),
        "zipslip": (Route(zip_bytes({"../../evil.txt": b"x"})), "/z/slip.zip", "climbs out"),
        "abs": (Route(tar_bytes({"/etc/evil": b"x"})), "/a/abs.tar.gz", "absolute path"),
        "chain": (
            Route(
                tar_members(
                    ("deep", tarfile.SYMTYPE, "."),
                    ("l", tarfile.SYMTYPE, "deep/.."),
                    ("l/evil.txt", tarfile.REGTYPE, "x"),
                )
            ),
            "/c/chain.tar.gz",
            "outside the folder",
        ),
        "corrupt": (Route(b"not gzip at all" * 100), "/g/bad.tar.gz", "not valid gz data"),
        "device": (
            Route(tar_members(("null", tarfile.CHRTYPE, ""))),
            "/d/dev.tar.gz",
            "device file",
        ),
        "symlink": (
            Route(tar_bytes({"ok.txt": b"1"}, link="../../../etc")),
            "/s/link.tar.gz",
            "outside the folder",
        ),
    }


@pytest.mark.parametrize(
    "case",
    ["missing", "reset", "truncated", "zipslip", "abs", "symlink", "chain", "device", "corrupt"],
)
async def test_failures_leave_no_entry_and_recover(
    cache: DataCache, server: FileServer, tmp_path: Path, case: str
) -> None:
    route, path, message = _failing_cases(server)[case]
    server.routes[path] = route
    entries = entries_of({"d": {"src": server.url(path), "projectName": "d", "dst": "../.."}})
    with pytest.raises(DataError, match=message) as info:
        await ensure(cache, entries)
    assert "\n" not in info.value.message and "'d'" in info.value.message
    assert_no_leftovers(cache)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()
    with pytest.raises(DataError, match="not been fetched"):
        mounted(cache, entries)
    # the author (or the server) fixes the source: the next ensure succeeds
    server.routes[path] = Route(
        zip_bytes({"good.txt": b"ok"})
        if path.endswith(".zip")
        else tar_bytes({"good.txt": b"ok"})
        if path.endswith(".tar.gz")
        else b"good"
    )
    await ensure(cache, entries)
    published = files_under(mounted(cache, entries)["d"])
    assert published in ({"good.txt": b"ok"}, {"plain.bin": b"good"})


def _tar_with_modes() -> bytes:
    """An uncompressed tar: a multi-chunk executable, a private file, an empty file,
    a folder and a hard link, each with its own mtime."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        members = [
            ("tool/run.sh", tarfile.REGTYPE, 0o4755, BIG, 1_600_000_000),
            ("tool/secret.txt", tarfile.REGTYPE, 0o600, b"s", 1_600_000_100),
            ("tool/empty", tarfile.REGTYPE, 0o644, b"", 1_600_000_200),
            ("docs", tarfile.DIRTYPE, 0o755, b"", 1_600_000_300),
            ("docs/run-copy.sh", tarfile.LNKTYPE, 0o755, b"", 1_600_000_400),
        ]
        for name, kind, mode, data, mtime in members:
            info = tarfile.TarInfo(name)
            info.type, info.mode, info.mtime = kind, mode, mtime
            if kind == tarfile.LNKTYPE:
                info.linkname = "tool/run.sh"
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
    return buf.getvalue()


#: larger than the extractor's chunk, so a member is copied in several pieces
BIG = bytes(range(256)) * (2 * 1024 * 4 + 17)


@pytest.mark.parametrize("compression", ["", "gz"])
async def test_tar_members_keep_data_modes_and_times(
    cache: DataCache, server: FileServer, compression: str
) -> None:
    body = _tar_with_modes()
    path = "/modes.tar" if not compression else "/modes.tar.gz"
    server.add(path, gzip.compress(body) if compression else body)
    entries = entries_of({"src": server.url(path), "projectName": "modes"})
    await ensure(cache, entries)
    root = mounted(cache, entries)["modes"]
    assert files_under(root) == {
        "docs/run-copy.sh": BIG,
        "tool/empty": b"",
        "tool/run.sh": BIG,
        "tool/secret.txt": b"s",
    }
    modes = {name: stat.S_IMODE((root / name).stat().st_mode) for name in files_under(root)}
    # no set-uid, no group/other write; executables stay executable
    assert modes == {
        "docs/run-copy.sh": 0o755,  # a copy of its target, with the target's mode
        "tool/empty": 0o644,
        "tool/run.sh": 0o755,
        "tool/secret.txt": 0o644,
    }
    assert (root / "tool/run.sh").stat().st_mtime == 1_600_000_000
    assert (root / "tool/secret.txt").stat().st_mtime == 1_600_000_100
    assert (root / "tool/run.sh").stat().st_ino != (root / "docs/run-copy.sh").stat().st_ino


async def test_tar_cut_inside_a_member_fails_and_leaves_nothing(
    cache: DataCache, server: FileServer
) -> None:
    """A complete HTTP answer whose tar stops in the middle of a member's data."""
    body = _tar_with_modes()
    server.add("/cut.tar", body[: tarfile.BLOCKSIZE + len(BIG) // 2])
    entries = entries_of({"src": server.url("/cut.tar"), "projectName": "cut"})
    with pytest.raises(DataError, match="not a valid tar archive") as info:
        await ensure(cache, entries)
    assert "unexpected end of data" in info.value.message
    assert_no_leftovers(cache)


async def test_stalled_servers_time_out(cache: DataCache, server: FileServer) -> None:
    server.add("/slow.bin", bytes(100_000), failure="stall")
    entries = entries_of({"src": server.url("/slow.bin"), "projectName": "slow"})
    cache.timeout = 1.0
    with pytest.raises(DataError, match="took longer than allowed"):
        await ensure(cache, entries)
    assert_no_leftovers(cache)
    cache.timeout, cache.read_timeout = 60.0, 0.5
    with pytest.raises(DataError, match="sent nothing for"):
        await ensure(cache, entries)
    assert_no_leftovers(cache)


async def test_checksum_mismatch_fails(cache: DataCache, server: FileServer) -> None:
    url = server.add("/c/file.txt", b"content")
    bad = entries_of({"src": url, "projectName": "c", "md5": md5(b"other")})
    with pytest.raises(DataError, match="checksum mismatch"):
        await ensure(cache, bad)
    assert_no_leftovers(cache)
    good = entries_of({"src": url, "projectName": "c", "md5": md5(b"content")})
    await ensure(cache, good)
    assert files_under(mounted(cache, good)["c"]) == {"file.txt": b"content"}


async def test_over_limit_dataset_is_stopped_early(cache: DataCache, server: FileServer) -> None:
    cache.max_dataset_bytes = 1_000_000
    # compressed it is small, so the limit must bite while extracting
    server.add("/huge.tar.gz", tar_bytes({f"part{i}": bytes(400_000) for i in range(10)}))
    entries = entries_of({"src": server.url("/huge.tar.gz"), "projectName": "huge"})
    with pytest.raises(DataError, match="larger than the limit") as info:
        await ensure(cache, entries)
    assert info.value.status_code == 413
    assert_no_leftovers(cache)
    server.add("/plain.bin", bytes(2_000_000))  # announced by Content-Length: refused at once
    entries = entries_of({"src": server.url("/plain.bin"), "projectName": "plain"})
    with pytest.raises(DataError, match="larger than the limit"):
        await ensure(cache, entries)
    cache.max_dataset_bytes = 10_000_000
    await ensure(cache, entries)
    assert mounted(cache, entries)["plain"].joinpath("plain.bin").stat().st_size == 2_000_000


async def test_content_disposition_names_and_gz(cache: DataCache, server: FileServer) -> None:
    import gzip

    server.add(
        "/download", b"a,b\n", headers={"Content-Disposition": 'attachment; filename="t.csv"'}
    )
    server.add("/x/series.csv.gz", gzip.compress(b"1,2,3\n"))
    entries = entries_of(
        {
            "one": {"src": server.url("/download?id=3"), "projectName": "p"},
            "two": {"src": server.url("/x/series.csv.gz"), "projectName": "p"},
        }
    )
    await ensure(cache, entries)
    assert files_under(mounted(cache, entries)["p"]) == {
        "t.csv": b"a,b\n",
        "series.csv": b"1,2,3\n",
    }


async def test_git_sources_are_refused(cache: DataCache) -> None:
    entries = entries_of(
        {"ds": {"src": "https://github.com/OpenNeuroDatasets/ds000001.git", "projectName": "ds"}}
    )
    with pytest.raises(DataError, match="not supported yet") as info:
        await ensure(cache, entries)
    assert "'ds'" in info.value.message


async def test_budget_evicts_least_recently_used(cache: DataCache, server: FileServer) -> None:
    cache.budget = 2_500_000
    made = []
    for name in ("one", "two", "three"):
        server.add(f"/{name}.bin", bytes(1_000_000))
        made.append(entries_of({"src": server.url(f"/{name}.bin"), "projectName": name}))
        await ensure(cache, made[-1])
        await asyncio.sleep(0.02)
    assert sorted(d.project_name for d in cache.list()) == ["three", "two"]
    # a running session holds its dataset: neither eviction nor removal touch it
    locks = cache.hold(cache.folders(made[1]))
    server.add("/four.bin", bytes(1_000_000))
    await ensure(cache, entries_of({"src": server.url("/four.bin"), "projectName": "four"}))
    assert sorted(d.project_name for d in cache.list()) == ["four", "two"]
    assert not cache.remove("two")
    for lock in locks:
        lock.release()
    assert cache.remove("two") and [d.project_name for d in cache.list()] == ["four"]


async def test_remove_and_eviction_delete_lock_files(cache: DataCache, server: FileServer) -> None:
    made = {}
    for name in ("one", "two"):
        server.add(f"/{name}.bin", bytes(1000))
        made[name] = entries_of({"src": server.url(f"/{name}.bin"), "projectName": name})
        await ensure(cache, made[name])
        for lock in cache.hold(cache.folders(made[name])):  # a session came and went
            lock.release()
    one, two = (cache.key_for(made[name]) for name in ("one", "two"))
    both = sorted(f"{key}.{kind}" for key in (one, two) for kind in ("lock", "use"))
    assert lock_files(cache) == both
    assert cache.remove("one")
    assert lock_files(cache) == [f"{two}.lock", f"{two}.use"]
    cache.budget = 1
    assert cache.gc() == [two]
    assert_no_leftovers(cache)


async def test_gc_removes_a_dead_fetch_and_its_lock_files(cache: DataCache) -> None:
    root = Path(cache.root)
    key = "0123456789abcdef0123456789abcdef"
    for sub in ("tmp", "locks"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    (root / "tmp" / f"{key}.x1y2" / "data").mkdir(parents=True)  # a fetcher was SIGKILLed
    (root / "locks" / f"{key}.lock").touch()
    (root / "tmp" / "unrelated").mkdir()  # not ours: left alone, no lock file made for it
    cache.gc()
    assert [p.name for p in (root / "tmp").iterdir()] == ["unrelated"]
    assert lock_files(cache) == []


async def test_hold_refuses_a_folder_deleted_meanwhile(
    cache: DataCache, server: FileServer
) -> None:
    entries = entries_of(
        {
            "a": {"src": server.add("/a.bin", b"a"), "projectName": "a"},
            "b": {"src": server.add("/b.bin", b"b"), "projectName": "b"},
        }
    )
    await ensure(cache, entries)
    mounts = mounted(cache, entries)
    # another process's eviction deletes 'b' between the launch's data step and its hold
    assert DataCache(root=cache.root).remove("b")
    with pytest.raises(DataError, match="'b' was removed") as info:
        cache.hold(cache.folders(entries))
    assert "\n" not in info.value.user_message and info.value.hint
    assert not mounts["b"].exists()
    # nothing stays held or behind: 'a' can be removed, no lock file of 'b' was made again
    assert cache.remove("a")
    assert_no_leftovers(cache)


# -- API sources ------------------------------------------------------------------


async def test_zenodo_doi_fetches_every_file(cache: DataCache, server: FileServer) -> None:
    server.add_recorded("/api/records/6941758", "zenodo-record-6941758.json")
    for name in ("atlas.zip", "scores.csv"):
        body = (RECORDED / "zenodo-6941758" / name).read_bytes()
        server.add(f"/api/records/6941758/files/{name}/content", body)
    for src in (
        "10.5281/zenodo.6941758",
        "https://doi.org/10.5281/zenodo.6941758",
        "https://zenodo.org/records/6941758",
    ):
        entries = entries_of({"src": src, "projectName": "zen", "dst": "../data"})
        await ensure(cache, entries)
        assert files_under(mounted(cache, entries)["zen"]) == {
            "atlas/labels.tsv": b"index\tname\n1\tcortex\n2\tcerebellum\n",
            "atlas/README.txt": b"Toy atlas for tests\n",
            "scores.csv": (RECORDED / "zenodo-6941758" / "scores.csv").read_bytes(),
        }
    # a file whose bytes differ from the record's checksum fails the dataset
    server.add("/api/records/6941758/files/scores.csv/content", b"tampered")
    entries = entries_of({"src": "10.5281/zenodo.6941758", "projectName": "zen2"})
    with pytest.raises(DataError, match="checksum mismatch"):
        await ensure(cache, entries)


async def test_osf_project_with_pages_and_folders(cache: DataCache, server: FileServer) -> None:
    pages = {
        p: (RECORDED / f"osf-t8h9c-root-page{p}.json").read_text().replace("{base}", server.base)
        for p in ("1", "2")
    }
    json_type = {"Content-Type": "application/vnd.api+json"}
    server.routes["/v2/nodes/t8h9c/files/osfstorage/"] = Route(
        fn=lambda q: (200, json_type, pages[q.get("page", ["1"])[0]].encode())
    )
    server.add_recorded(
        "/v2/nodes/t8h9c/files/osfstorage/5f3a1c2b9e1d4a0012a1f001/", "osf-t8h9c-derivatives.json"
    )
    server.add_recorded(
        "/v2/nodes/t8h9c/files/osfstorage/5f3a1c2b9e1d4a0012a1f002/", "osf-t8h9c-maps.json"
    )
    for item in (RECORDED / "osf-t8h9c").iterdir():
        server.add(f"/download/{item.name}/", item.read_bytes())
    entries = entries_of({"src": "https://osf.io/t8h9c/", "projectName": "osf"})
    await ensure(cache, entries)
    assert files_under(mounted(cache, entries)["osf"]) == {
        "README.md": b"# Toy OSF project\n",
        "derivatives/scores.tsv": b"sub\tscore\nsub-01\t0.5\n",
        "derivatives/maps/map1.txt": b"0 1 2 3\n",
    }
    only = entries_of(
        {
            "src": "https://osf.io/t8h9c",
            "projectName": "osf-maps",
            "remote_filepath": "derivatives/maps",
        }
    )
    await ensure(cache, only)
    assert files_under(mounted(cache, only)["osf-maps"]) == {
        "derivatives/maps/map1.txt": b"0 1 2 3\n"
    }


def _s3_listing(keys: list[tuple[str, bytes]], prefix: str, token: str | None) -> bytes:
    start = int(token or 0)
    page = [(k, d) for k, d in keys if k.startswith(prefix)][start : start + 2]
    more = start + 2 < len([k for k, _ in keys if k.startswith(prefix)])
    contents = "".join(
        f"<Contents><Key>{k}</Key><LastModified>2020-05-01T10:00:00.000Z</LastModified>"
        f"<ETag>&quot;{md5(d)}&quot;</ETag><Size>{len(d)}</Size>"
        "<StorageClass>STANDARD</StorageClass></Contents>"
        for k, d in page
    )
    nxt = f"<NextContinuationToken>{start + 2}</NextContinuationToken>" if more else ""
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        '<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/">'
        f"<Name>openneuro.org</Name><Prefix>{prefix}</Prefix><KeyCount>{len(page)}</KeyCount>"
        f"<MaxKeys>2</MaxKeys><IsTruncated>{'true' if more else 'false'}</IsTruncated>"
        f"{'<ContinuationToken>' + token + '</ContinuationToken>' if token else ''}{nxt}"
        f"{contents}</ListBucketResult>"
    ).encode()


async def test_s3_prefix_with_continuation(cache: DataCache, server: FileServer) -> None:
    keys = [
        ("ds001037/dataset_description.json", b'{"Name": "toy"}'),
        ("ds001037/participants.tsv", b"participant_id\nsub-01\n"),
        ("ds001037/sub-01/anat/sub-01_T1w.nii.gz", b"\x1f\x8b not really nifti"),
        ("ds0010370/other.txt", b"not this dataset"),
    ]

    def listing(q: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        token = q.get("continuation-token", [None])[0]
        body = _s3_listing(keys, q["prefix"][0], token)
        return 200, {"Content-Type": "application/xml"}, body

    server.routes["/openneuro.org/"] = Route(fn=listing)
    for key, data in keys:
        server.add(f"/openneuro.org/{key}", data)
    entries = entries_of({"src": "s3://openneuro.org/ds001037", "projectName": "ds001037"})
    await ensure(cache, entries)
    assert files_under(mounted(cache, entries)["ds001037"]) == {
        k.removeprefix("ds001037/"): d for k, d in keys[:3]
    }
    assert server.hits["/openneuro.org/"] == 2  # two listing pages


async def test_google_drive_confirmation_page(cache: DataCache, server: FileServer) -> None:
    fid = "1AbCdEfGhIjKlMnOpQrStUvWxYz012345"
    page = (RECORDED / "gdrive-confirm.html").read_text().replace("{base}", server.base)
    payload = tar_bytes({"big/data.txt": b"large file"})

    def download(q: dict[str, list[str]]) -> tuple[int, dict[str, str], bytes]:
        if q.get("confirm") == ["t"] and q.get("uuid") and q.get("id") == [fid]:
            disposition = 'attachment; filename="bigdata.tar.gz"'
            return 200, {"Content-Disposition": disposition}, payload
        return 403, {}, b"denied"

    server.routes["/uc"] = Route(
        page.encode(), headers={"Content-Type": "text/html; charset=utf-8"}
    )
    server.routes["/download"] = Route(fn=download)
    entries = entries_of(
        {"src": f"https://drive.google.com/file/d/{fid}/view?usp=sharing", "projectName": "gd"}
    )
    await ensure(cache, entries)
    assert files_under(mounted(cache, entries)["gd"]) == {"big/data.txt": b"large file"}
    # a page that is not a confirmation (file not shared) fails plainly
    server.routes["/uc"] = Route(b"<html>Sign in</html>", headers={"Content-Type": "text/html"})
    other = entries_of({"src": "https://drive.google.com/uc?id=other", "projectName": "gd2"})
    with pytest.raises(DataError, match="web page instead of the file"):
        await ensure(cache, other)
    assert not (Path(cache.root) / "datasets").exists() or len(cache.list()) == 1


# -- code sources -----------------------------------------------------------------


@pytest.fixture(scope="module")
def env() -> Path:
    if shutil.which("bwrap") is None:
        pytest.skip("bubblewrap is not installed")
    return code_env()


async def test_code_source_writes_only_its_folder(
    cache: DataCache, env: Path, tmp_path: Path
) -> None:
    """The code runs in a network of its own: it downloads from a host the operator
    allowed (an internal mirror on a private address, a real test host here)."""
    site = tmp_path / "site"
    (site / "remote").mkdir(parents=True)
    (site / "remote" / "values.txt").write_bytes(b"42\n")
    with namespace_host("10.254.0.0/16", site) as mirror:
        for fetcher in cache.fetchers:
            if isinstance(fetcher, CodeFetcher):
                fetcher.host.network.destinations.allowed = [f"{mirror.address}/32"]
        url = f"{mirror.url}remote/values.txt"
        outside = tmp_path / "outside.txt"
        code = (
            "import pathlib, urllib.request; "
            f"urllib.request.urlretrieve({url!r}, _dst + '/values.txt'); "
            "tries = {}; "
            f"paths = [{str(outside)!r}, '/srv/env/evil.txt', _dst + '/../escape.txt', "
            f"{str(Path(cache.root) / 'evil.txt')!r}]; "
            'exec(\'for p in paths:\\n try:\\n  pathlib.Path(p).write_text("x"); tries[p] = "ok"\\n'
            " except OSError as e:\\n  tries[p] = type(e).__name__'); "
            "pathlib.Path(_dst, 'tries.txt').write_text(repr(tries)); print('done');"
        )
        entries = entries_of({"nilearn": {"src": code, "projectName": "code", "dst": "../data"}})
        events = await ensure(cache, entries, env_path=env, env_key="env-1")
        folder = mounted(cache, entries, env_key="env-1")["code"]
        assert (folder / "values.txt").read_bytes() == b"42\n"
        tries = (folder / "tries.txt").read_text()
        assert "'/srv/env/evil.txt': 'OSError'" in tries or "/srv/env/evil.txt': 'Read" in tries
        assert not outside.exists() and not (env / "evil.txt").exists()
        assert not (Path(cache.root) / "evil.txt").exists()
        assert sorted(p.name for p in folder.iterdir()) == ["tries.txt", "values.txt"]
        assert any("done" in e.message for e in events)
        # what the code wrote is the service's now: no sandbox uid can change it
        assert {p.stat().st_uid for p in (folder, *folder.iterdir())} == {os.geteuid()}
        # the key includes the environment: another env key fetches again
        await ensure(cache, entries, env_path=env, env_key="env-2")
        other = mounted(cache, entries, env_key="env-2")["code"]
        assert other != folder and (other / "values.txt").read_bytes() == b"42\n"


async def test_failing_code_source_reports_its_output(cache: DataCache, env: Path) -> None:
    code = "import sys; print('fetching...'); raise RuntimeError('no such subject: sub-99');"
    entries = entries_of({"bad": {"src": code, "projectName": "bad"}})
    with pytest.raises(DataError, match="RuntimeError: no such subject: sub-99") as info:
        await ensure(cache, entries, env_path=env, env_key="k")
    assert "fetching..." in info.value.log_message
    assert_no_leftovers(cache)


async def test_code_sources_can_be_turned_off(cache: DataCache, env: Path) -> None:
    for fetcher in cache.fetchers:
        if isinstance(fetcher, CodeFetcher):
            fetcher.allow_code_sources = False
    entries = entries_of({"src": "import os; os.mkdir(_dst + '/x');", "projectName": "c"})
    with pytest.raises(DataError, match="does not run code sources"):
        await ensure(cache, entries, env_path=env, env_key="k")


def test_data_requirement_linked_outside_the_repository_is_refused(tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_text('{"projectName": "stolen", "src": "https://example.org/x"}')
    repo = tmp_path / "repo"
    (repo / "binder").mkdir(parents=True)
    (repo / "binder" / "data_requirement.json").symlink_to(secret)
    with pytest.raises(DataError) as info:
        read_requirements(repo)
    assert "outside the repository" in info.value.user_message
    assert "stolen" not in info.value.user_message
