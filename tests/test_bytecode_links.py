"""Bytecode finishing never writes through a link build code left in an environment.

After publishing, the host (root) compiles an environment's modules
(builders/bytecode.py).  A postBuild could have replaced ``lib`` (or an old
Python's ``server`` tree) with a link to a host folder: the host must then
compile nothing there rather than write ``__pycache__`` files into the target.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

from binderbox.builders.bytecode import BytecodeCache


@pytest.mark.parametrize("linked", ["lib", "tree"])
def test_a_linked_lib_or_tree_is_not_compiled(tmp_path: Path, linked: str) -> None:
    host = tmp_path / "host-folder"  # a folder of the host's, outside every environment
    (host / "python3.11" / "site-packages").mkdir(parents=True)
    module = host / "python3.11" / "site-packages" / "victim.py"
    module.write_text("x = 1\n")
    env = tmp_path / "env"
    env.mkdir()
    if linked == "lib":
        (env / "lib").symlink_to(host)
        tree = env
    else:  # the tree itself is the link (e.g. /srv/env/server)
        real = tmp_path / "elsewhere"
        real.mkdir()
        (real / "lib").symlink_to(host)  # even a plain lib below would be the host's
        (env / "server").symlink_to(real)
        tree = env / "server"
    cache = BytecodeCache(tmp_path / "bytecode", "cpython-311")
    counts = asyncio.run(cache.compile_tree(Path(sys.executable), tree, spare=0))
    assert counts == {"reused": 0, "compiled": 0, "failed": 0}
    assert not (module.parent / "__pycache__").exists()


def test_a_real_lib_is_compiled(tmp_path: Path) -> None:
    """The same tree without links is compiled (the test above can fail)."""
    lib = tmp_path / "env" / "lib" / "python3.11" / "site-packages"
    lib.mkdir(parents=True)
    (lib / "mine.py").write_text("x = 1\n")
    cache = BytecodeCache(tmp_path / "bytecode", "cpython-311")
    counts = asyncio.run(cache.compile_tree(Path(sys.executable), tmp_path / "env", spare=0))
    assert counts["compiled"] == 1
    assert list((lib / "__pycache__").glob("mine.*.pyc"))
