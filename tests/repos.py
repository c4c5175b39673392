"""Real git repositories for tests, made in temporary directories."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Mapping
from pathlib import Path

GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
    "PATH": "/usr/bin:/bin",
}


def git(repo: Path, *args: str) -> str:
    """Run git in ``repo``; returns stdout."""
    result = subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=GIT_ENV
    )
    return result.stdout.strip()


def write_files(root: Path, files: Mapping[str, str], executable: tuple[str, ...] = ()) -> None:
    """Write ``files`` (relative path -> text) under ``root``."""
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        if name in executable:
            path.chmod(0o755)


def make_repo(root: Path, files: Mapping[str, str], executable: tuple[str, ...] = ()) -> Path:
    """A git repository at ``root`` with one commit of ``files``."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", "main")
    return commit(root, files, executable)


def commit(
    root: Path, files: Mapping[str, str], executable: tuple[str, ...] = (), message: str = "change"
) -> Path:
    """Write ``files`` and commit them; returns ``root``."""
    write_files(root, files, executable)
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", message)
    return root


def head(root: Path) -> str:
    """The full sha of HEAD."""
    return git(root, "rev-parse", "HEAD")


def notebook(*sources: str) -> str:
    """A minimal nbformat-4 notebook with one code cell per source."""
    cells = [
        {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": [], "source": src}
        for src in sources
    ]
    doc = {
        "cells": cells,
        "metadata": {
            "kernelspec": {"name": "python3", "display_name": "Python 3", "language": "python"}
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    }
    return json.dumps(doc, indent=1)
