"""Finding interpreters: real CPythons on this machine, real wrapper executables.

A lookup for one ``X.Y`` probes only the executables named for it; these tests
check that the probe, not the file name, still decides, and that the search
order still holds.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from binderbox.builders.interpreters import Interpreter
from binderbox.builders.python import PythonBuilder
from binderbox.environments import EnvSpec
from binderbox.errors import PythonVersionUnavailable


def spec(python: str) -> EnvSpec:
    return EnvSpec(kind="python", python=python)


def real(minor: str) -> Interpreter:
    found = [i for i in PythonBuilder().interpreters() if i.minor == minor]
    if not found:
        pytest.skip(f"no Python {minor} on this machine")
    return found[0]


def wrapper(folder: Path, name: str, target: Path) -> Path:
    """An executable ``folder/name`` that runs ``target``."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(f'#!/bin/sh\nexec {target} "$@"\n')
    path.chmod(0o755)
    return path


def test_a_misnamed_executable_is_not_taken_for_the_version_it_is_named(
    tmp_path: Path,
) -> None:
    py311 = real("3.11")
    liar = wrapper(tmp_path / "bin", "python3.10", py311.path)  # really 3.11
    builder = PythonBuilder(search_dirs=[str(tmp_path / "bin")])
    found = builder.find_interpreter(spec("3.10"))
    assert found.minor == "3.10" and found.path != liar
    # the version it really is still counts: it is found for 3.11
    assert builder.find_interpreter(spec("3.11")).identity == py311.identity


def test_operator_search_dirs_come_first_for_the_same_version(tmp_path: Path) -> None:
    py310 = real("3.10")
    mine = wrapper(tmp_path / "mine" / "bin", "python3.10", py310.path)
    builder = PythonBuilder(search_dirs=[str(tmp_path / "mine")])
    assert builder.find_interpreter(spec("3.10")).path == mine


def test_an_unavailable_version_lists_what_every_folder_offers(tmp_path: Path) -> None:
    py311 = real("3.11")
    wrapper(tmp_path / "bin", "python3.10", py311.path)
    builder = PythonBuilder(search_dirs=[str(tmp_path / "bin")], min_python="3.8")
    with pytest.raises(PythonVersionUnavailable) as info:
        builder.find_interpreter(spec("3.99"))
    offered = info.value.hint.removeprefix("Available: ").rstrip(".").split(", ")
    assert {"3.10", "3.11", "3.12"} <= set(offered)
    assert offered == sorted(offered, key=lambda m: tuple(int(p) for p in m.split(".")))
