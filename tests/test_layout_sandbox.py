"""The sandbox layout's shared pieces: the passwd/group pair, the interpreter
record a sandbox binds, the code-source sandbox built on it, and the one
base-URL normalisation.

Real files in temp dirs and real sandboxes (bubblewrap) where one runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from binderbox.data.fetchers.base import FetchContext
from binderbox.data.fetchers.code import CodeFetcher
from binderbox.data.requirement import DataEntry
from binderbox.environments import ENV_PREFIX, HOME
from binderbox.errors import DataError
from binderbox.hub import ManagedHub
from binderbox.hub.config import normalise_base_url, render_config
from binderbox.runtime.layout import META, env_interpreter_mounts, private_tmp
from binderbox.runtime.sandbox import GROUP_TEXT, PASSWD_TEXT, Sandbox, passwd_file
from binderbox.web.app import WebApp

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap missing")


# -- passwd/group -----------------------------------------------------------------


def test_shared_tmp_folder_planted_by_someone_else_is_not_used(tmp_path: Path) -> None:
    mine = private_tmp(tmp_path)
    assert mine == tmp_path / f"binderbox-{os.getuid()}" and (mine.stat().st_mode & 0o777) == 0o700
    # a symlink planted under that name (to /etc, say) is never written through
    target = tmp_path / "victim"
    target.mkdir()
    mine.rmdir()
    mine.symlink_to(target)
    other = private_tmp(tmp_path)
    assert other != mine and other.parent == tmp_path and not other.is_symlink()
    passwd_file(other / "etc")
    assert list(target.iterdir()) == []
    # nor a folder others may write to
    mine.unlink()
    mine.mkdir(mode=0o777)
    mine.chmod(0o777)
    assert private_tmp(tmp_path) == other


def test_passwd_pair_is_written_once_and_again_after_a_tmp_cleaner(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "passwd").write_text("stale\n")  # left by an older version: fixed at the first use
    assert passwd_file(etc) == etc
    assert (etc / "passwd").read_text() == PASSWD_TEXT
    assert (etc / "group").read_text() == GROUP_TEXT
    assert "jovyan:x:1000:1000:jovyan:/home/jovyan:/bin/bash" in PASSWD_TEXT
    # checked once per process: later sandboxes do not read the files again
    (etc / "group").write_text("changed meanwhile\n")
    passwd_file(etc)
    assert (etc / "group").read_text() == "changed meanwhile\n"
    # a tmp cleaner removed a file, or the whole folder: written again
    (etc / "passwd").unlink()
    passwd_file(etc)
    assert (etc / "passwd").read_text() == PASSWD_TEXT
    assert (etc / "group").read_text() == GROUP_TEXT
    shutil.rmtree(etc)
    passwd_file(etc)
    assert (etc / "passwd").read_text() == PASSWD_TEXT
    assert sorted(p.name for p in etc.iterdir()) == ["group", "passwd"]  # no temp files left


@needs_bwrap
def test_sandboxes_see_the_jovyan_user_after_the_files_were_removed(tmp_path: Path) -> None:
    etc = passwd_file(tmp_path / "etc")
    shutil.rmtree(etc)  # what a tmp cleaner does between two sandboxes
    etc = passwd_file(etc)
    box = Sandbox().file(etc / "passwd", "/etc/passwd").file(etc / "group", "/etc/group")
    argv = box.argv(["sh", "-c", "id -un; id -gn"])
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["jovyan", "jovyan"]


# -- the interpreter record and the code-source sandbox ---------------------------


def fake_env(root: Path, prefixes: list[Path]) -> Path:
    """An environment folder with the record the builder writes (``build.json``)."""
    env = root / "env"
    (env / META).mkdir(parents=True)
    info = {"interpreter_prefixes": [str(p) for p in prefixes]}
    (env / META / "build.json").write_text(json.dumps(info))
    return env


def mounted(argv: list[str]) -> list[tuple[str, str, str]]:
    """The (kind, host, inside) binds of a bwrap command line."""
    binds = ("--ro-bind", "--bind")
    return [(a, argv[i + 1], argv[i + 2]) for i, a in enumerate(argv) if a in binds]


@needs_bwrap
def test_code_sandbox_binds_what_build_json_names_not_pyvenv_cfg(tmp_path: Path) -> None:
    """pyvenv.cfg is in the environment, where build code could rewrite it; a code
    source's sandbox (untrusted code, network on) must not show what it names."""
    secret = tmp_path / "secret"
    (secret / "bin").mkdir(parents=True)
    interpreter = Path(sys.base_prefix)
    env = fake_env(tmp_path, [interpreter])
    (env / "pyvenv.cfg").write_text(f"home = {secret / 'bin'}\n")
    dest = tmp_path / "dest"
    dest.mkdir()
    inside = f"{HOME}/data/set"
    box = CodeFetcher().sandbox(env, dest, inside)
    argv = box.argv(["python"])
    binds = mounted(argv)
    assert not [b for b in binds if b[1].startswith(str(secret))]
    assert ("--ro-bind", str(interpreter), str(interpreter)) in binds
    assert ("--ro-bind", str(env.resolve()), ENV_PREFIX) in binds
    writable = [b for b in binds if b[0] == "--bind"]
    assert writable == [("--bind", str(dest), inside)]  # the only writable host path
    assert argv[argv.index("--tmpfs", argv.index(str(interpreter))) + 1] == HOME
    assert argv[argv.index("--chdir") + 1] == inside
    assert "--clearenv" in argv
    values = {argv[i + 1]: argv[i + 2] for i, a in enumerate(argv) if a == "--setenv"}
    assert values["HOME"] == HOME and values["MPLBACKEND"] == "Agg"
    assert values["PATH"].startswith(f"{ENV_PREFIX}/bin:")


def test_an_environment_without_build_json_is_refused(tmp_path: Path) -> None:
    env = tmp_path / "env"
    env.mkdir()
    (env / "pyvenv.cfg").write_text("home = /usr/bin\n")
    with pytest.raises(FileNotFoundError, match="not a built environment"):
        env_interpreter_mounts(env)


async def test_code_source_with_an_unbuilt_environment_is_a_plain_error(tmp_path: Path) -> None:
    env = tmp_path / "env"
    env.mkdir()
    dest = tmp_path / "dest"
    dest.mkdir()
    entry = DataEntry(label="", src="import os", project_name="c")
    ctx = FetchContext(emit=lambda event: None, limit=0, deadline=0.0, env_path=env)
    with pytest.raises(DataError, match="not a built environment") as info:
        await CodeFetcher().fetch(entry, dest, ctx)
    assert info.value.reason == "data_code_env"
    assert list(dest.iterdir()) == []


# -- the base URL ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("given", "expected"),
    [("", "/"), ("/", "/"), ("//", "/"), ("binder", "/binder/"), ("/a/b", "/a/b/")],
)
def test_base_url_is_normalised_alike_everywhere(given: str, expected: str) -> None:
    assert normalise_base_url(given) == expected
    assert WebApp(base_url=given).base_url == expected
    hub = ManagedHub(data_dir="/nonexistent", base_url=given, hub_port=8081, proxy_api_port=8001)
    assert hub.base_url == expected
    assert hub.hub_api_url == f"http://{hub.hub_ip}:8081{expected}hub/api/"
    assert hub.public_url.endswith(f":8000{expected}")
    config = render_config(hub.params())
    assert f"c.JupyterHub.base_url = {expected!r}" in config
    assert f"c.JupyterHub.hub_routespec = {expected + 'hub/'!r}" in config
