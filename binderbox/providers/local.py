"""``local/<url-escaped absolute path>/<ref>``: a directory on this machine.

For the operator's CLI and for tests; the web service refuses it unless the
operator allows local repositories (see :func:`binderbox.providers.make_provider`).

* A git checkout (the directory holds ``.git``) or a bare repository: the ref
  (default ``HEAD``; a branch, tag, full or abbreviated sha, anything
  ``git rev-parse`` understands) resolves to a commit, and the content is
  that commit, fetched like any git repository: uncommitted changes are not
  part of it (a launch of HEAD says so when there are some).  A directory
  *inside* a checkout counts as a plain folder.
* A plain folder: the version is a SHA-256 content hash of the tree (paths,
  file contents, executable bits, symlink targets).  The ref must be empty,
  ``HEAD`` or that hash; fetching copies the folder and checks that the copy
  still has that hash, so a folder edited in the meantime fails cleanly.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import os
import re
import shutil
import stat
from pathlib import Path
from urllib.parse import unquote

from ..errors import FetchError, RefNotFound, RepositoryNotFound, SpecError
from ..logs import LogFn
from .base import Resolved
from .git import GitProvider, check_ref, clear_dir, make_spec, prepare_dest
from .gitutil import run_git

TREE_HASH_RE = re.compile(r"^[0-9a-f]{64}$")


def tree_hash(root: Path) -> str:
    """A SHA-256 over the tree under ``root`` (symlinks not followed).

    Sockets, fifos and devices are skipped; unreadable files raise OSError.
    """
    manifest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        base = Path(dirpath)
        for name in sorted(filenames + [d for d in dirnames if (base / d).is_symlink()]):
            path = base / name
            rel = path.relative_to(root).as_posix()
            st = path.lstat()
            if stat.S_ISLNK(st.st_mode):
                entry = f"link {rel} {path.readlink()}"
            elif stat.S_ISREG(st.st_mode):
                digest = hashlib.sha256()
                with path.open("rb") as f:
                    while chunk := f.read(1 << 20):
                        digest.update(chunk)
                mode = "x" if st.st_mode & 0o111 else "f"
                entry = f"file {rel} {mode} {digest.hexdigest()}"
            else:
                continue
            manifest.update(entry.encode("utf-8", "surrogateescape") + b"\0")
        for d in dirnames:
            if not (base / d).is_symlink():
                rel = (base / d).relative_to(root).as_posix()
                manifest.update(f"dir {rel}".encode("utf-8", "surrogateescape") + b"\0")
    return manifest.hexdigest()


def is_git_repository(path: Path) -> bool:
    """True for the top of a checkout (``.git`` dir or file) or a bare repository."""
    if (path / ".git").exists():
        return True
    return (path / "HEAD").is_file() and (path / "objects").is_dir() and (path / "refs").is_dir()


class LocalProvider(GitProvider):
    """A directory on this machine.  See the module docstring."""

    prefix = "local"
    display_name = "Local directory"
    spec_label = "Absolute path of a directory on the server"
    spec_placeholder = "/srv/repositories/example"
    expected_form = "local/<url-escaped absolute path>/<ref>, e.g. local/%2Fsrv%2Frepo/HEAD"

    def parse(self, spec: str) -> None:
        escaped, _, ref = spec.partition("/")
        path = unquote(escaped)
        if not path.startswith("/") or any(ord(c) < 32 for c in path):
            raise SpecError(f"Malformed spec {spec!r}.", hint=f"Expected {self.expected_form}.")
        self.path = Path(os.path.normpath(path))
        self._local = True
        self.unresolved_ref = check_ref(unquote(ref) or "HEAD", self.expected_form)
        self.clone_url = self.path.as_uri()
        self._notices: list[str] = []

    @property
    def repo_url(self) -> str:
        return self.clone_url

    def persistent_spec(self, sha: str) -> str:
        return make_spec(str(self.path), sha)

    async def resolve(self) -> Resolved:
        if not self.path.is_dir():
            raise RepositoryNotFound(
                f"Could not find the directory {self.path}.",
                hint="Check the path: it must be an existing directory on this machine.",
            )
        if is_git_repository(self.path):
            return await self._resolve_git()
        return await self._resolve_folder()

    async def _resolve_git(self) -> Resolved:
        ref = self.unresolved_ref
        result = await run_git(
            ["rev-parse", "--verify", "--end-of-options", ref + "^{commit}"],
            cwd=self.path,
            time_limit=self.resolve_timeout,
        )
        if not result.ok:
            hint = "The repository has no commits yet." if ref == "HEAD" else ""
            raise self.ref_not_found(ref, result.describe(), hint=hint)
        sha = result.stdout.strip()
        if ref == "HEAD":
            await self._note_uncommitted(sha)
        return self.resolved(sha)

    async def _note_uncommitted(self, sha: str) -> None:
        """A notice when the checkout has changes its HEAD commit does not hold (a bare
        repository has none)."""
        status = await run_git(
            ["status", "--porcelain", "--no-renames"],
            cwd=self.path,
            time_limit=self.resolve_timeout,
        )
        changed = [line for line in status.stdout.splitlines() if line.strip()]
        if status.ok and changed:
            self._notices = [
                f"{self.path} has {len(changed)} uncommitted change(s) (e.g. {changed[0][3:]}): "
                f"they are not part of the build, which uses commit {sha[:12]}. "
                "Commit them to include them."
            ]

    def notices(self) -> list[str]:
        return list(self._notices)

    async def _resolve_folder(self) -> Resolved:
        ref = self.unresolved_ref
        if ref != "HEAD" and not TREE_HASH_RE.match(ref):
            raise RefNotFound(
                f"{self.path} is not a git repository, so it has no ref {ref!r}.",
                hint="Leave the ref out (or use HEAD) to launch the folder as it is.",
            )
        version = await self._hash(self.path)
        if ref != "HEAD" and ref != version:
            raise RefNotFound(
                f"The content of {self.path} has changed since version {ref[:12]}.",
                hint="Launch it without a ref to use the current content.",
                log_message=f"local/{self.spec}: tree hash is now {version}",
            )
        return dataclasses.replace(self.resolved(version), clone_url="")

    async def _hash(self, root: Path) -> str:
        try:
            return await asyncio.to_thread(tree_hash, root)
        except OSError as e:
            raise FetchError(
                f"Could not read {self.path}: {e.strerror}.", log_message=repr(e)
            ) from e

    async def fetch(self, resolved: Resolved, dest: Path, log: LogFn) -> None:
        if resolved.clone_url:
            await super().fetch(resolved, dest, log)
            return
        prepare_dest(dest)
        try:
            log(f"Copying {self.path}")
            await asyncio.to_thread(
                shutil.copytree, self.path, dest, symlinks=True, dirs_exist_ok=True
            )
            if await self._hash(dest) != resolved.version:
                raise FetchError(
                    f"The content of {self.path} changed while it was being copied.",
                    hint="Try again once it stops changing.",
                )
            log(f"Copied {self.path} (version {resolved.version[:12]})")
        except BaseException as e:
            clear_dir(dest)
            if isinstance(e, shutil.Error | OSError):
                raise FetchError(f"Could not copy {self.path}.", log_message=repr(e)) from e
            raise
