"""What binderbox adds to every session's Jupyter server, from outside its environment.

The files of this folder (the :mod:`.binderbox_busy_activity` extension and the
config that enables it) are copied to ``<data>/sessions-ext`` (:func:`install`,
owned by the service, read-only to sessions) and shown at :data:`INSIDE` in each
sandbox, with :func:`environment` pointing the server at them.
"""

from __future__ import annotations

from pathlib import Path

#: where the folder is in the sandbox
INSIDE = "/srv/binderbox-ext"
_FILES = ("binderbox_busy_activity.py", "config/jupyter_server_config.d/binderbox.json")


def install(data_dir: Path) -> Path:
    """The host folder of the extension under ``data_dir`` (written when missing or
    different from this version's files)."""
    source = Path(__file__).parent
    target = data_dir / "sessions-ext"
    for rel in _FILES:
        new = (source / rel).read_bytes()
        path = target / rel
        try:
            if path.read_bytes() == new and not path.is_symlink():
                continue
        except OSError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        temp = path.with_suffix(".tmp")
        temp.write_bytes(new)
        temp.chmod(0o644)
        temp.replace(path)
    for folder in (target, *(p for p in target.rglob("*") if p.is_dir())):
        folder.chmod(0o755)
    return target


def environment(busy_interval: float) -> dict[str, str]:
    """The variables that load the extension in the session's server (which looks at
    its kernels every ``busy_interval`` seconds)."""
    return {
        "PYTHONPATH": INSIDE,
        "JUPYTER_CONFIG_PATH": f"{INSIDE}/config",
        "BINDERBOX_BUSY_INTERVAL": str(busy_interval),
    }
