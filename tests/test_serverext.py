"""The server extension every session loads (binderbox/sessions/serverext) imports on every
Python a session environment may have: jupyter_server runs on 3.8 and later, and an
extension that fails to import is only a warning in the server's log (the busy-kernel
activity then silently stops counting)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

import binderbox.sessions.serverext

EXT_DIR = Path(binderbox.sessions.serverext.__file__).parent
PYENV = Path("/root/.pyenv/versions")
#: the Pythons jupyter_server supports, as pyenv has them on this machine
PYTHONS = sorted(PYENV.glob("3.*/bin/python3")) if PYENV.is_dir() else []
SUPPORTED = [p for p in PYTHONS if int(p.parent.parent.name.split(".")[1]) >= 8]

# Tornado is not in pyenv's bare interpreters: a module named tornado.ioloop with the one
# name the extension imports stands in for it, so what is checked is the extension's own
# code (its imports and its definitions) on that Python.
PROBE = """
import sys, types
ioloop = types.ModuleType("tornado.ioloop")
ioloop.PeriodicCallback = object
sys.modules["tornado"] = types.ModuleType("tornado")
sys.modules["tornado.ioloop"] = ioloop
sys.path.insert(0, sys.argv[1])
import binderbox_busy_activity as ext
assert ext._jupyter_server_extension_points() == [{"module": "binderbox_busy_activity"}]
from datetime import datetime, timezone
print("ok")
"""


@pytest.mark.skipif(not SUPPORTED, reason="no pyenv Pythons 3.8+ on this machine")
@pytest.mark.parametrize("python", SUPPORTED, ids=lambda p: p.parent.parent.name)
def test_the_busy_activity_extension_imports_on_every_supported_python(python: Path) -> None:
    done = subprocess.run(
        [str(python), "-c", PROBE, str(EXT_DIR)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
