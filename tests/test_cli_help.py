"""``--help`` and ``--help-all`` of every ``binderbox`` command, as real subprocesses.

Each must exit 0, print its own description and options, and no traceback
(``binderbox serve --help`` once died with ``KeyError: 'ManagedHub'``: its
aliases named classes the command did not list).  ``--help-all`` lists every
section of the config file.  The commands come from the top-level command's
own table, so a new subcommand is covered without editing this test.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from binderbox.cli import Main

#: every command line that leads to a command (with an action for those that take one)
COMMANDS = [
    [],
    *([name] for name in Main.subcommands),
    ["envs", "list"],
    ["data", "fetch", "x"],
    ["sessions", "list"],
    ["sessions", "stop", "x"],
]

#: what each command's --help shows: one of its own options
OWN_OPTION = {
    "": "--data-dir=",
    "build": "--ref=",
    "envs": "--config=",
    "homes": "--config=",
    "data": "--ref=",
    "serve": "--port=<Int>",
    "generate-config": "--output=",
    "status": "--json",
    "sessions": "--all",
}


def run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BINDERBOX_DATA_DIR": str(cwd / "data")}
    return subprocess.run(
        [sys.executable, "-m", "binderbox", *args],
        cwd=cwd,  # no binderbox_config.py here
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("flag", ["--help", "--help-all"])
@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "binderbox")
def test_help_of_every_command(command: list[str], flag: str, tmp_path: Path) -> None:
    result = run([*command, flag], tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Traceback" not in output
    assert "Options\n=======" in result.stdout
    assert OWN_OPTION[command[0] if command else ""] in result.stdout
    if flag == "--help-all" and command:
        assert "Class options" in result.stdout
        assert "--ManagedHub.public_port=<Int>" in result.stdout  # every section
    assert not (tmp_path / "data").exists()  # asking for help changes nothing


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ('c.SandboxHost.build_mem_limit = "-1G"', "SandboxHost.build_mem_limit: '-1G' is not"),
        ('c.Store.budget = "lots"', "'budget' trait of a Store instance expected an int"),
    ],
)
def test_a_bad_setting_is_a_plain_error(setting: str, words: str, tmp_path: Path) -> None:
    (tmp_path / "binderbox_config.py").write_text(setting + "\n")
    (tmp_path / "repo").mkdir()
    result = run(["build", str(tmp_path / "repo"), "--data-dir", str(tmp_path / "data")], tmp_path)
    assert result.returncode == 1
    assert result.stderr.startswith("error: a setting is not valid: "), result.stderr
    assert words in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("args", [["frob"], ["frob", "--help"], ["statsu", "--json"]])
def test_an_unknown_command_is_named(args: list[str], tmp_path: Path) -> None:
    result = run(args, tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == f"unknown command {args[0]!r}; see binderbox --help\n"
