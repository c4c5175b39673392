"""Old Pythons: the kernel in the repository's Python, the Jupyter server beside it.

Python 3.6 and 3.7 cannot run what a session needs today: jupyter-server 2,
JupyterLab 4 and notebook 7 need 3.8, and the hub's own
``jupyterhub-singleuser`` (jupyterhub 6) needs 3.10.  The newest releases that
still install there are old and partly unmaintained (measured with uv: on 3.7,
jupyterhub 4.1.6, jupyterlab 3.6.8, jupyter-server 1.24, notebook 6.5.7; on
3.6, jupyterhub 2.3.1, jupyterlab 2.3.2, jupyter-server 1.0.11, notebook
6.4.10), and an old ``jupyterhub-singleuser`` would have to talk to a hub
four major releases newer.  So an environment whose interpreter is older than
``PythonBuilder.kernel_only_below`` (3.8) is made of two virtualenvs, as
repo2docker does for Python 2 kernels:

* ``/srv/env``: the repository's Python with its packages and ``ipykernel``
  (the user's pin, or the newest that runs there).  It stays the environment
  users see: ``python``, ``pip`` and ``NB_PYTHON_PREFIX`` are its;
* ``/srv/env/server`` (:data:`SERVER_DIR`): the session packages and the
  hub's ``jupyterhub-singleuser`` in ``PythonBuilder.server_python``, with a
  kernel spec ``python3`` that starts ``/srv/env/bin/python -m
  ipykernel_launcher`` (:func:`write_kernelspec`).  Its ``jupyter*`` commands
  are linked into ``/srv/env/bin`` (:func:`link_scripts`) where the kernel's
  environment has none of that name, so sessions start
  ``/srv/env/bin/jupyterhub-singleuser`` as for every environment and
  ``jupyter lab`` or ``jupyter labextension`` work in postBuild and terminals.

A server and a kernel of different releases talk the Jupyter messaging
protocol (5.x), which old ipykernels (4.7 and newer have
``ipykernel_launcher``) speak.  The server environment is made, and the
host writes these files, before any repository code runs (see
``PythonBuilder._install``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..environments import ENV_PREFIX
from .interpreters import Interpreter, version_tuple

#: the server's environment, inside the kernel's
SERVER_DIR = "server"
SERVER_PREFIX = f"{ENV_PREFIX}/{SERVER_DIR}"
#: the kernel spec's name: the one JupyterLab and notebooks ask for
KERNEL_NAME = "python3"


def kernel_only(interp: Interpreter, below: str) -> bool:
    """Whether ``interp`` gets only a kernel (its server in :data:`SERVER_DIR`)."""
    floor = version_tuple(below)
    return floor is not None and interp.version_tuple()[:2] < floor


def kernelspec(interp: Interpreter) -> dict[str, object]:
    """The kernel spec that starts the kernel's environment's Python."""
    return {
        "argv": [f"{ENV_PREFIX}/bin/python", "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": f"Python {interp.minor}",
        "language": "python",
    }


def write_kernelspec(prefix: Path, interp: Interpreter) -> None:
    """The server's ``python3`` kernel spec, for the kernel in ``prefix`` (the host's
    path of ``/srv/env``).  Only before build code runs."""
    folder = prefix / SERVER_DIR / "share" / "jupyter" / "kernels" / KERNEL_NAME
    folder.mkdir(parents=True, exist_ok=True)
    # a new file, never a write into the one ipykernel installed there: that one may be
    # a hard link into the shared package cache, and so into every environment built
    # from it (builders/caches.py)
    staged = folder / ".kernel.json.binderbox"
    staged.write_text(json.dumps(kernelspec(interp), indent=1) + "\n")
    staged.replace(folder / "kernel.json")


def link_scripts(prefix: Path) -> list[str]:
    """Link the server's ``jupyter*`` commands (not the hub's ``jupyterhub``) into
    ``prefix/bin`` where no command of
    that name is; returns their names.  Only before build code runs (a later install
    of a command of the same name replaces the link: the kernel's own wins)."""
    server_bin = prefix / SERVER_DIR / "bin"
    linked = []
    for entry in sorted(server_bin.iterdir()):
        target = prefix / "bin" / entry.name
        session = entry.name.startswith("jupyter") and entry.name != "jupyterhub"  # not the hub
        if not session or os.path.lexists(target):
            continue
        target.symlink_to(f"../{SERVER_DIR}/bin/{entry.name}")
        linked.append(entry.name)
    return linked
