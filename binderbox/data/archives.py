"""Safe extraction of dataset archives (zip, tar, tar.gz/bz2/xz, gz).

Archives come from the internet: every member is checked before anything is
written, and what is written goes through :class:`Extractor`, which refuses

* absolute member names and names with a ``..`` component,
* symbolic and hard links whose target leaves the dataset folder,
* device files, FIFOs and sockets,
* writing through a link: the real path of every parent folder is checked to
  be inside the dataset folder before a member is created, and an existing
  link at a member's own path is replaced, never followed.

Refusals are :class:`~binderbox.errors.DataError` with a one-line message
naming the archive and the member.  The layout of the archive is kept
(members at the archive root land at the dataset root).  Every byte written is
counted against the dataset's size limit as it is written.
"""

# string paths on purpose: the per-member hot path avoids Path objects
# ruff: noqa: PTH101, PTH103, PTH108, PTH112, PTH113, PTH114, PTH116, PTH117, PTH118, PTH120, PTH123, PTH211
from __future__ import annotations

import os
import stat
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from ..errors import DataError
from .fetchers.base import FetchContext
from .requirement import DataEntry

#: bytes per read/write while copying members
CHUNK = 1 << 20

_SUFFIXES = (
    (".tar.gz", "tar.gz"),
    (".tgz", "tar.gz"),
    (".tar.bz2", "tar.bz2"),
    (".tbz2", "tar.bz2"),
    (".tar.xz", "tar.xz"),
    (".txz", "tar.xz"),
    (".tar", "tar"),
    (".zip", "zip"),
    (".gz", "gz"),
)


def archive_kind(name: str) -> str | None:
    """``"zip"``, ``"tar"``, ``"tar.gz"``, ``"tar.bz2"``, ``"tar.xz"``, ``"gz"`` or ``None``."""
    lower = name.lower()
    for suffix, kind in _SUFFIXES:
        if lower.endswith(suffix) and len(lower) > len(suffix):
            return kind
    return None


def gunzipped_name(name: str) -> str:
    """``scores.csv.gz`` -> ``scores.csv``."""
    return name[:-3] if name.lower().endswith(".gz") and len(name) > 3 else name + ".out"


class Readable(Protocol):
    """A binary stream (what the extractors read)."""

    def read(self, n: int = -1, /) -> bytes: ...


class Extractor:
    """Writes members into ``dest`` safely; see the module docstring."""

    def __init__(self, dest: Path, ctx: FetchContext, entry: DataEntry, archive: str) -> None:
        self.dest = dest
        self.real_dest = os.path.realpath(dest)
        self.ctx = ctx
        self.entry = entry
        self.archive = archive
        self._safe_dirs: set[str] = set()

    def refuse(self, member: str, why: str) -> DataError:
        """The error for an unsafe member."""
        return DataError(
            f"Dataset {self.entry.describe()}: the archive {self.archive} is unsafe: "
            f"member '{member}' {why}.",
            hint="Nothing of it was kept; fix the archive.",
            reason="data_unsafe_archive",
        )

    def relative(self, name: str) -> str | None:
        """The checked relative path of a member (``None``: the archive root itself)."""
        if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
            raise self.refuse(name, "has an absolute path")
        parts = [p for p in name.split("/") if p not in ("", ".")]
        if ".." in parts:
            raise self.refuse(name, "climbs out of the folder with '..'")
        if any("\0" in p for p in parts):
            raise self.refuse(name, "has a NUL character in its name")
        return "/".join(parts) if parts else None

    def _inside(self, real: str) -> bool:
        return real == self.real_dest or real.startswith(self.real_dest + os.sep)

    def target(self, name: str, rel: str) -> str:
        """The host path of member ``rel`` after checking its parent's real path."""
        path = os.path.join(self.dest, rel)
        parent = os.path.dirname(path)
        if parent not in self._safe_dirs:
            if not self._inside(os.path.realpath(parent)):
                raise self.refuse(name, "would be written through a link leaving the folder")
            os.makedirs(parent, mode=0o755, exist_ok=True)
            self._safe_dirs.add(parent)
        if os.path.islink(path):
            os.unlink(path)
        return path

    def directory(self, name: str, rel: str) -> None:
        """Create a folder member."""
        path = self.target(name, rel)
        if os.path.lexists(path) and not os.path.isdir(path):
            raise self.refuse(name, "is a folder where a file already exists")
        os.makedirs(path, mode=0o755, exist_ok=True)

    def create(self, name: str, rel: str, mode: int) -> tuple[str, int]:
        """The checked path of a new regular file and its permissions."""
        path = self.target(name, rel)
        if os.path.isdir(path):
            raise self.refuse(name, "is a file where a folder already exists")
        return path, 0o755 if mode & 0o100 else 0o644

    def finish(self, path: str, perm: int, mtime: float | None) -> None:
        """Set a written file's permissions (no set-uid, no group/other write) and time."""
        os.chmod(path, perm)
        if mtime is not None:
            os.utime(path, (mtime, mtime))

    def file(self, name: str, rel: str, src: Readable, mode: int, mtime: float | None) -> None:
        """Create a regular file from ``src`` (counted against the size limit)."""
        path, perm = self.create(name, rel, mode)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, perm)
        with open(fd, "wb", buffering=0) as out:
            copy_counted(src, out.write, self.ctx, self.entry)
        self.finish(path, perm, mtime)

    def symlink(self, name: str, rel: str, link: str) -> None:
        """Create a symbolic link whose target must stay inside the folder."""
        if os.path.isabs(link):
            raise self.refuse(name, f"is a link to the absolute path '{link}'")
        path = self.target(name, rel)
        resolved = os.path.realpath(os.path.join(os.path.dirname(path), link))
        if not self._inside(resolved):
            raise self.refuse(name, f"is a link to '{link}', outside the folder")
        if os.path.lexists(path):
            raise self.refuse(name, "is a link where a file or folder already exists")
        os.symlink(link, path)
        self._safe_dirs.clear()  # a new link may redirect folders checked before

    def hardlink(self, name: str, rel: str, link: str) -> None:
        """Materialise a hard link to an earlier member as a copy."""
        link_rel = self.relative(link)
        if link_rel is None:
            raise self.refuse(name, f"is a hard link to '{link}'")
        source = os.path.join(self.dest, link_rel)
        if not self._inside(os.path.realpath(source)) or not os.path.isfile(source):
            raise self.refuse(name, f"is a hard link to '{link}', not a file of the archive")
        with open(source, "rb") as src:
            self.file(name, rel, src, os.stat(source).st_mode, None)


def copy_counted(
    src: Readable, write: Callable[[Any], object], ctx: FetchContext, entry: DataEntry
) -> int:
    """Copy ``src`` to ``write`` in large chunks, counting against the size limit."""
    total = 0
    read = getattr(src, "readview", None) or src.read  # zero-copy when the source can
    while True:
        ctx.check()
        chunk = read(CHUNK)
        if not chunk:
            return total
        ctx.count(len(chunk), entry)
        write(chunk)
        total += len(chunk)


class ViewReadable(Protocol):
    """A stream handing out its bytes as memoryviews (:class:`~.fetchers.http.Body`)."""

    def readview(self, n: int, /) -> memoryview: ...


class _TarStream:
    """Exact reads and skips over a :class:`ViewReadable` (member data: :class:`_MemberData`)."""

    def __init__(self, src: ViewReadable) -> None:
        self.src = src

    def exact(self, n: int) -> bytes:
        parts = []
        while n > 0:
            view = self.src.readview(n)
            if not view:
                break
            parts.append(bytes(view))
            n -= len(view)
        return b"".join(parts)

    def skip(self, n: int) -> None:
        while n > 0:
            view = self.src.readview(min(n, CHUNK))
            if not view:
                raise tarfile.ReadError("unexpected end of data")
            n -= len(view)


class _MemberData:
    """The data of one tar member: the next ``size`` bytes of the stream, zero-copy."""

    def __init__(self, src: ViewReadable, size: int) -> None:
        self.src = src
        self.left = size

    def readview(self, n: int, /) -> memoryview:
        if self.left <= 0:
            return memoryview(b"")
        view = self.src.readview(min(n, self.left))
        if not view:
            raise tarfile.ReadError("unexpected end of data")
        self.left -= len(view)
        return view

    def read(self, n: int = -1, /) -> bytes:
        return bytes(self.readview(self.left if n < 0 else n))


def _padded(size: int) -> int:
    return -size % tarfile.BLOCKSIZE


def _pax(data: bytes) -> dict[str, str]:
    """Records of a pax extended header (``"<len> key=value\n"``)."""
    found: dict[str, str] = {}
    pos = 0
    while pos < len(data) and data[pos] != 0:
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        if length <= 0:
            raise tarfile.ReadError("invalid pax header")
        key, _, value = data[space + 1 : pos + length - 1].partition(b"=")
        found[key.decode("utf-8", "replace")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return found


def extract_tar_stream(
    stream: ViewReadable, dest: Path, ctx: FetchContext, entry: DataEntry, archive: str
) -> None:
    """Extract an *uncompressed* tar stream (decompression happens upstream).

    A small reader of its own (ustar, GNU long names, pax) rather than
    :mod:`tarfile`'s stream mode: member data goes from the network buffers
    to the files without intermediate copies.
    """
    ex = Extractor(dest, ctx, entry, archive)
    reader = _TarStream(stream)
    overrides: dict[str, str] = {}
    try:
        while True:
            block = reader.exact(tarfile.BLOCKSIZE)
            if not block.strip(b"\0"):
                return  # end-of-archive marker (or end of data)
            info = tarfile.TarInfo.frombuf(block, "utf-8", "surrogateescape")
            if info.type in (tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK):
                value = reader.exact(info.size + _padded(info.size))[: info.size]
                key = "path" if info.type == tarfile.GNUTYPE_LONGNAME else "linkpath"
                overrides[key] = value.rstrip(b"\0").decode("utf-8", "surrogateescape")
                continue
            if info.type in (tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE):
                data = reader.exact(info.size + _padded(info.size))[: info.size]
                if info.type != tarfile.XGLTYPE:
                    overrides.update(_pax(data))
                continue
            info.name = overrides.get("path", info.name)
            info.linkname = overrides.get("linkpath", info.linkname)
            if "size" in overrides:
                info.size = int(overrides["size"])
            overrides = {}
            _extract_member(ex, reader, info)
    except (tarfile.TarError, ValueError) as exc:
        raise DataError(
            f"Dataset {entry.describe()}: {archive} is not a valid tar archive ({exc}).",
            reason="data_bad_archive",
        ) from None


def _extract_member(ex: Extractor, reader: _TarStream, info: tarfile.TarInfo) -> None:
    name = info.name
    rel = ex.relative(name)
    if not (info.isreg() or info.isdir() or info.issym() or info.islnk()) or info.issparse():
        raise ex.refuse(name, "is a device file, FIFO or other special file")
    data_size = info.size if info.isreg() else 0
    if rel is None or not info.isreg():
        reader.skip(data_size + _padded(data_size))
    if rel is None:
        return
    if info.isdir():
        ex.directory(name, rel)
    elif info.issym():
        ex.symlink(name, rel, info.linkname)
    elif info.islnk():
        ex.hardlink(name, rel, info.linkname)
    else:
        if ex.ctx.would_exceed(info.size):
            raise ex.ctx.too_large(ex.entry)
        ex.file(name, rel, _MemberData(reader.src, info.size), info.mode, info.mtime)
        reader.skip(_padded(info.size))


def extract_zip(path: Path, dest: Path, ctx: FetchContext, entry: DataEntry, archive: str) -> None:
    """Extract a zip file (it must be on disk: its index is at the end)."""
    ex = Extractor(dest, ctx, entry, archive)
    try:
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            if ctx.would_exceed(sum(i.file_size for i in infos)):
                raise ctx.too_large(entry)
            for info in infos:
                _extract_zip_member(ex, zf, info)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, EOFError) as exc:
        raise DataError(
            f"Dataset {entry.describe()}: {archive} is not a valid zip archive ({exc}).",
            reason="data_bad_archive",
        ) from None


def _extract_zip_member(ex: Extractor, zf: zipfile.ZipFile, info: zipfile.ZipInfo) -> None:
    name = info.filename
    rel = ex.relative(name)
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind and kind not in (stat.S_IFREG, stat.S_IFDIR, stat.S_IFLNK):
        raise ex.refuse(name, "is a device file, FIFO or other special file")
    if rel is None:
        return
    if info.is_dir():
        ex.directory(name, rel)
    elif kind == stat.S_IFLNK:
        ex.symlink(name, rel, zf.read(info).decode("utf-8", "replace"))
    else:
        mtime = _zip_mtime(info)
        with zf.open(info) as src:
            ex.file(name, rel, src, mode or 0o644, mtime)


def _zip_mtime(info: zipfile.ZipInfo) -> float | None:
    import datetime

    try:
        return datetime.datetime(*info.date_time).timestamp()
    except (ValueError, OverflowError):
        return None


def write_file(src: Readable, dest: Path, name: str, ctx: FetchContext, entry: DataEntry) -> Path:
    """Write a single downloaded (or gunzipped) file ``name`` into ``dest``."""
    ex = Extractor(dest, ctx, entry, name)
    rel = ex.relative(name)
    if rel is None:
        raise ex.refuse(name, "has no file name")
    ex.file(name, rel, src, 0o644, None)
    return dest / rel


__all__ = [
    "Extractor",
    "archive_kind",
    "extract_tar_stream",
    "extract_zip",
    "gunzipped_name",
    "write_file",
]
