"""The content digest: which repository files can change a build.

:func:`content_digest` is part of an environment's key when the environment
depends on the repository content (a local requirement such as ``-e .``, a
package at the root, a postBuild script).  It is a sha256 over, for every
file that can affect a build, in the sorted order of their relative paths:

* the relative path (POSIX separators, bytes as on disk),
* the file's type and mode as git records them: a regular file, an
  executable file (any ``x`` bit) or a symbolic link.  Other permission
  bits are not hashed: they depend on the umask of whoever checked out the
  repository, not on the repository,
* the content: a regular file's bytes; a symbolic link's *target string*
  (links are never followed, so a link cannot pull files from outside the
  repository into the digest).

Skipped, because they cannot change what a build produces by convention,
so that a commit that edits only them reuses the environment:

* ``.git`` folders (at any depth: submodules), and ``.ipynb_checkpoints``;
* notebooks (``*.ipynb``);
* documents (``*.md``, ``*.rst``; a package whose metadata embeds its
  README keeps the old long description until something else changes);
* images (``*.png``, ``*.jpg``, ``*.jpeg``, ``*.gif``, ``*.svg``).

A ``data/`` folder is **not** skipped: postBuild scripts and packages
(``package_data``) read data files at build time, and a stale environment
is worse than a rebuild.  Empty folders, sockets and other special files
are ignored (git does not record them).  Matching is case-insensitive on
the suffix (``Figure.PNG`` is an image).
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path, PurePath

#: bump when the digest's definition changes (old keys then never match)
DIGEST_VERSION = b"binderbox-content-v1"
#: folder names never descended into
SKIPPED_DIRS = frozenset({".git", ".ipynb_checkpoints"})
#: file suffixes that cannot affect a build (lower case)
SKIPPED_SUFFIXES = frozenset({".ipynb", ".md", ".rst", ".png", ".jpg", ".jpeg", ".gif", ".svg"})

_CHUNK = 1 << 20


def affects_build(name: str) -> bool:
    """True when a file named ``name`` can change what a build produces."""
    return PurePath(name).suffix.lower() not in SKIPPED_SUFFIXES


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _entries(folder: Path, rel: str, out: list[tuple[bytes, bytes, str]]) -> None:
    """Collect ``(relative path, kind, content digest)`` below ``folder``."""
    with os.scandir(folder) as it:
        for entry in it:
            path = Path(entry.path)
            relpath = f"{rel}/{entry.name}" if rel else entry.name
            st = entry.stat(follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                if entry.name not in SKIPPED_DIRS:
                    _entries(path, relpath, out)
            elif not affects_build(entry.name):
                continue
            elif stat.S_ISLNK(st.st_mode):
                target = os.fsencode(path.readlink())
                out.append((os.fsencode(relpath), b"l", hashlib.sha256(target).hexdigest()))
            elif stat.S_ISREG(st.st_mode):
                kind = b"x" if st.st_mode & 0o111 else b"f"
                out.append((os.fsencode(relpath), kind, _file_sha256(path)))


def build_inputs(repo: Path) -> list[str]:
    """The relative paths :func:`content_digest` covers, sorted."""
    out: list[tuple[bytes, bytes, str]] = []
    _entries(repo, "", out)
    return [os.fsdecode(relpath) for relpath, _, _ in sorted(out)]


def content_digest(repo: Path) -> str:
    """The sha256 (hex) of the files of ``repo`` that can affect a build.

    See the module docstring for what is covered.  Raises ``OSError`` when
    the repository cannot be read (the caller turns it into a user error).
    """
    out: list[tuple[bytes, bytes, str]] = []
    _entries(repo, "", out)
    h = hashlib.sha256(DIGEST_VERSION + b"\n")
    for relpath, kind, digest in sorted(out):
        h.update(kind + b"\0" + relpath + b"\0" + digest.encode() + b"\n")
    return h.hexdigest()
