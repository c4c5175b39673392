"""binderbox's own files in a new environment, written before any build code runs."""

from __future__ import annotations

import json
from pathlib import Path

from .interpreters import Interpreter

#: the module every environment imports at start (see its docstring)
STARTUP_HOOK = Path(__file__).with_name("env_startup.py")

#: JupyterLab settings every environment gets (a postBuild may replace them):
#: sessions are fresh each launch, so JupyterLab's "fetch news?" question would
#: be asked at every launch, and a public service should not phone out for users
LAB_OVERRIDES = {
    "@jupyterlab/apputils-extension:notification": {
        "fetchNews": "false",
        "checkForUpdates": False,
    }
}


def seed(prefix: Path, interp: Interpreter) -> None:
    """binderbox's own files in a new venv, before any build code runs (which could
    plant links where they go): JupyterLab's overrides and the startup hook."""
    _lab_settings(prefix)
    site = prefix / "lib" / f"python{interp.minor}" / "site-packages"
    site.mkdir(parents=True, exist_ok=True)
    (site / "_binderbox_startup.py").write_text(STARTUP_HOOK.read_text())
    (site / "_binderbox_startup.pth").write_text("import _binderbox_startup\n")


def _lab_settings(prefix: Path) -> None:
    """Write JupyterLab's overrides.json (see :data:`LAB_OVERRIDES`) unless present."""
    path = prefix / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(LAB_OVERRIDES, indent=1) + "\n")
