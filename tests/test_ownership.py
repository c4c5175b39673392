"""Handing trees to sandbox uids and back never follows a link out of the tree."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from binderbox.runtime.ownership import give_tree, take_back
from binderbox.sessions.homes import make_executable

UID = 2_100_065_000  # a sandbox-range uid no test leases

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="changing owners needs root")


def tree(root: Path, outside: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "private.txt").write_text("p")
    (root / "private.txt").chmod(0o600)
    (root / "open.txt").write_text("o")
    (root / "open.txt").chmod(0o666)
    (root / "tool").write_text("#!/bin/sh\n")
    (root / "tool").chmod(0o4755)  # set-uid
    (root / "sub" / "link").symlink_to(outside)
    (root / "sub" / "dirlink").symlink_to(outside.parent, target_is_directory=True)
    return root


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def test_a_tree_goes_to_a_uid_and_back_without_touching_what_its_links_name(
    tmp_path: Path,
) -> None:
    outside = tmp_path / "host" / "victim"
    outside.parent.mkdir()
    outside.write_text("host file")
    outside.chmod(0o600)
    root = tree(tmp_path / "home", outside)

    give_tree(root, UID)
    for path in (root, root / "sub", root / "private.txt", root / "sub" / "link"):
        assert (path.lstat().st_uid, path.lstat().st_gid) == (UID, UID)
    assert mode(root / "tool") == 0o755  # set-uid dropped
    assert mode(root / "open.txt") == 0o644  # group/other write dropped
    assert mode(root / "private.txt") == 0o600  # still private to its owner
    assert (outside.stat().st_uid, mode(outside)) == (0, 0o600)  # the link's target
    assert outside.parent.stat().st_uid == 0

    take_back(root)
    assert {p.lstat().st_uid for p in (root, *root.rglob("*"))} == {os.geteuid()}
    assert mode(root / "private.txt") == 0o644  # published: readable by every sandbox uid
    assert mode(root / "tool") == 0o755 and mode(root / "sub") & 0o005 == 0o005
    assert (outside.stat().st_uid, mode(outside)) == (0, 0o600)


def test_a_start_script_is_made_executable_only_inside_the_home(tmp_path: Path) -> None:
    home = tmp_path / "home"
    (home / "binder").mkdir(parents=True)
    (home / "binder" / "start").write_text('#!/bin/sh\nexec "$@"\n')
    (home / "start").symlink_to("binder/start")
    victim = tmp_path / "victim"
    victim.write_text("x")
    victim.chmod(0o600)
    (home / "evil").symlink_to(victim)
    (home / "sub").symlink_to(tmp_path, target_is_directory=True)

    assert make_executable(home, "start")  # a link that stays inside the home
    assert mode(home / "binder" / "start") & 0o111 == 0o111
    assert not make_executable(home, "evil")
    assert not make_executable(home, "sub/victim")
    assert not make_executable(home, "missing")
    assert mode(victim) == 0o600
