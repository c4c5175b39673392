"""Placing a repository into a persistent home (binderbox/sessions/persistent.py), on real
folders: the user's files are never written, postBuild's home changes land in the
placed folder only, links a session planted are never followed, every home has a
uid of its own."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from binderbox.runtime.host import SandboxHost
from binderbox.runtime.options import BadOptions, LaunchOptions
from binderbox.sessions.persistent import PersistentHome, home_name, users_dir


@pytest.fixture
def env_path(tmp_path: Path) -> Path:
    """An environment whose postBuild wrote into the home: a new file, and a change to
    a file the user also has in their home."""
    env = tmp_path / "env"
    overlay = env / ".binderbox" / "home-overlay"
    (overlay / ".jupyter").mkdir(parents=True)
    (overlay / ".jupyter" / "settings.json").write_text("from postBuild")
    (overlay / "notes.txt").write_text("from postBuild")
    (env / ".binderbox" / "home-deleted.json").write_text(json.dumps(["scratch.txt"]))
    return env


@pytest.fixture
def content(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text("v1")
    (repo / "scratch.txt").write_text("removed by postBuild")
    (repo / "start").write_text('#!/bin/sh\nexec "$@"\n')
    return repo


def options(env: Path, content: Path, version: str) -> LaunchOptions:
    return LaunchOptions(
        "key",
        env,
        content,
        start_script="start",
        home="persistent",
        content_folder="proj",
        content_version=version,
    )


def uid_of(policy: PersistentHome, host: SandboxHost, home: Path) -> int | None:
    uid, lease = policy.uid(host, home)
    assert lease is None
    return uid


def test_placing_never_writes_the_users_files(
    tmp_path: Path, env_path: Path, content: Path
) -> None:
    policy, host = PersistentHome(), SandboxHost()
    home = policy.path(tmp_path / "data", "alice", "alice-x")
    uid = uid_of(policy, host, home)
    (home / "notes.txt").write_text("the user's own")  # outside the folder

    setup = policy.prepare(home, options(env_path, content, "a" * 40), uid)
    assert setup.default_url == "/lab/tree/proj"
    assert setup.environment["REPO_DIR"] == "/home/jovyan/proj"
    assert (home / "proj" / "README.md").read_text() == "v1"
    # postBuild's changes are in the placed folder, never over the user's files
    assert (home / "notes.txt").read_text() == "the user's own"
    assert (home / "proj" / "notes.txt").read_text() == "from postBuild"
    assert (home / "proj" / ".jupyter" / "settings.json").exists()
    assert not (home / "proj" / "scratch.txt").exists()
    assert os.access(home / "proj" / "start", os.X_OK)

    # the user edits; the same version again places nothing, a new one goes beside
    (home / "proj" / "README.md").write_text("my edits")
    policy.prepare(home, options(env_path, content, "a" * 40), uid)
    assert sorted(p.name for p in home.iterdir()) == ["notes.txt", "proj"]
    (content / "README.md").write_text("v2")
    policy.prepare(home, options(env_path, content, "b" * 40), uid)
    assert (home / "proj" / "README.md").read_text() == "my edits"
    assert (home / "proj-bbbbbbb" / "README.md").read_text() == "v2"
    # a folder the user removed comes back at the next launch
    for path in sorted((home / "proj").rglob("*"), reverse=True):
        path.rmdir() if path.is_dir() else path.unlink()
    (home / "proj").rmdir()
    policy.prepare(home, options(env_path, content, "b" * 40), uid)
    assert (home / "proj" / "README.md").read_text() == "v2"
    assert not list((tmp_path / "data" / "homes" / "staging").iterdir())  # nothing left


def test_a_link_planted_where_content_goes_is_not_followed(
    tmp_path: Path, env_path: Path, content: Path
) -> None:
    policy, host = PersistentHome(), SandboxHost()
    home = policy.path(tmp_path / "data", "mallory", "m")
    uid = uid_of(policy, host, home)
    outside = tmp_path / "outside"
    outside.mkdir()
    (home / "proj").symlink_to(outside)  # a session plants a link at the folder's name
    policy.prepare(home, options(env_path, content, "a" * 40), uid)
    assert (home / "proj").is_symlink()  # left alone: the content is offered beside it
    assert (home / "proj-aaaaaaa" / "README.md").is_file()
    (home / "proj-ccccccc").symlink_to(outside)  # and at the name a new version takes
    policy.prepare(home, options(env_path, content, "c" * 40), uid)
    assert (home / "proj-ccccccc").is_symlink()
    assert list(outside.iterdir()) == []  # nothing was written through a link


@pytest.mark.skipif(os.geteuid() != 0, reason="homes have uids of their own only as root")
def test_each_home_has_a_uid_of_its_own_for_good(tmp_path: Path) -> None:
    policy, host = PersistentHome(), SandboxHost()
    data = tmp_path / "data"
    first = uid_of(policy, host, policy.path(data, "ann", "a"))
    second = uid_of(policy, host, policy.path(data, "ben", "b"))
    assert first != second
    assert {first, second} <= set(host.home_uid_range)
    assert host.home_uid_range.start > host.uid_base + 1  # leases never hand them out
    assert uid_of(policy, host, policy.path(data, "ann", "a")) == first  # read back
    assert (users_dir(data) / "ann").stat().st_uid == first


def test_user_names_are_one_path_segment() -> None:
    assert home_name("alice") == "alice"
    assert home_name("a.b@example.org") == "a.b@example.org"
    assert "/" not in home_name("../etc")
    assert not home_name("..").startswith(".")
    assert home_name("x/y") != home_name("x%2Fy")


def test_home_options_are_checked_when_read_back(tmp_path: Path) -> None:
    env = tmp_path / "env"
    env.mkdir()
    good = LaunchOptions("k", env, home="persistent", content_folder="proj").to_user_options()
    assert LaunchOptions.from_user_options(good, [tmp_path]).home == "persistent"
    for field, value in [
        ("home", "shared"),
        ("content_folder", "../x"),
        ("content_folder", ".ssh"),
        ("content_version", "a/b"),
    ]:
        with pytest.raises(BadOptions):
            LaunchOptions.from_user_options({**good, field: value}, [tmp_path])
