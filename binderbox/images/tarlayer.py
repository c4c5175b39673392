"""Reproducible tar layers: the same files give the same bytes, hence the same digests.

A layer is a list of :class:`Entry` (folders, files read from host paths, symbolic links,
small files made here), written by :func:`write_layer` as a tar stream, gzip-compressed,
with both digests computed on the way (the blob's, of the compressed bytes, and the
``diff_id``, of the tar itself: OCI image spec, "Layer").  What makes it reproducible:

* entries in the order given (every producer sorts by name), names relative (``srv/env``);
* every mtime :data:`EPOCH`, every owner uid/gid as the entry says (0, or 1000 for the
  session user's home) with no user or group names, permission bits only (no
  setuid/setgid/sticky except where an entry asks, ``tmp``), no extended attributes;
* PAX headers only where a name or link is too long for the plain header (their content
  is that name alone);
* gzip with no file name and mtime 0 at a fixed level.

A file hard-linked within one layer is stored once; its other names are tar hard links to
the first name in order.  Sockets, fifos and devices are left out (an environment has
none; a layer of them could not be unpacked unprivileged anyway).
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

#: the mtime of every entry (2000-01-01 UTC, as Bazel's rules_oci)
EPOCH = 946684800
#: bump when what the writer produces for the same entries changes (part of cache keys)
FORMAT_VERSION = "2"


@dataclass(frozen=True)
class Entry:
    """One tar entry: ``name`` relative (``usr/bin/bash``); ``kind`` ``dir``, ``file``
    (read from ``source``), ``data`` (``data`` bytes) or ``symlink`` (to ``target``)."""

    name: str
    kind: str
    mode: int = 0o755
    uid: int = 0
    gid: int = 0
    source: Path | None = None
    target: str = ""
    data: bytes = b""
    #: (st_dev, st_ino) of a file with other links, else None
    inode: tuple[int, int] | None = None
    #: (st_dev, st_ino) of the host file ``source`` when it was listed
    ident: tuple[int, int] | None = None
    size: int = 0
    mtime_ns: int = 0

    def fingerprint(self) -> bytes:
        """What identifies this entry's content without reading it (for layer caches)."""
        fields = (self.name, self.kind, oct(self.mode), self.uid, self.gid, self.target)
        extra = (str(self.source), self.size, self.mtime_ns, hashlib.sha256(self.data).hexdigest())
        return repr((*fields, *extra, self.inode is not None)).encode()


def fingerprint(entries: Iterable[Entry]) -> str:
    """A digest of the entries' names, kinds, modes, sizes and mtimes on the host."""
    digest = hashlib.sha256(FORMAT_VERSION.encode())
    for entry in entries:
        digest.update(entry.fingerprint() + b"\0")
    return digest.hexdigest()


def host_entry(path: Path, name: str, *, uid: int = 0, gid: int = 0) -> Entry | None:
    """The entry of the host file ``path`` (not followed) stored as ``name``; None for a
    socket, fifo or device, or a file gone meanwhile."""
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    mode = stat.S_IMODE(info.st_mode) & 0o755  # no set-id, sticky or group/other write bits
    if stat.S_ISDIR(info.st_mode):
        return Entry(name, "dir", mode, uid, gid, mtime_ns=0)
    if stat.S_ISLNK(info.st_mode):
        return Entry(name, "symlink", 0o777, uid, gid, target=str(path.readlink()))
    if not stat.S_ISREG(info.st_mode):
        return None
    ident = (info.st_dev, info.st_ino)
    return Entry(
        name, "file", mode, uid, gid, source=path, inode=ident if info.st_nlink > 1 else None,
        ident=ident, size=info.st_size, mtime_ns=info.st_mtime_ns,
    )  # fmt: skip


def tree_entries(
    root: Path, inside: str, *, skip: Callable[[str], bool] = lambda _rel: False
) -> Iterator[Entry]:
    """The entries of the host tree ``root`` shown at ``inside`` (``/srv/env``), sorted by
    name, links not followed; ``skip(relative path)`` leaves a path (and what is under
    it) out.  The folder itself is an entry; its parents are not."""
    top = inside.strip("/")
    found = host_entry(root, top)
    if found is None or found.kind != "dir":
        raise NotADirectoryError(f"{root} is not a folder")
    yield Entry(top, "dir", found.mode)
    yield from _walk(root, top, "", skip)


def _walk(folder: Path, top: str, rel: str, skip: Callable[[str], bool]) -> Iterator[Entry]:
    with os.scandir(folder) as scan:
        names = sorted(entry.name for entry in scan)
    for name in names:
        child_rel = f"{rel}/{name}" if rel else name
        if skip(child_rel):
            continue
        entry = host_entry(folder / name, f"{top}/{child_rel}")
        if entry is None:
            continue
        yield entry
        if entry.kind == "dir":
            yield from _walk(folder / name, top, child_rel, skip)


def parents(path: str, mode: int = 0o755) -> list[Entry]:
    """Folder entries for each parent of ``path`` (``srv/env`` -> ``srv``)."""
    parts = path.strip("/").split("/")[:-1]
    return [Entry("/".join(parts[: n + 1]), "dir", mode) for n in range(len(parts))]


@dataclass(frozen=True)
class LayerDigests:
    """What a written layer is: its blob's digest and size, and its ``diff_id``."""

    digest: str
    size: int
    diff_id: str


class _Hashing(io.RawIOBase):
    """A write-only stream that hashes and counts what passes to ``sink``."""

    def __init__(self, sink: BinaryIO | None) -> None:
        self.sink = sink
        self.hash = hashlib.sha256()
        self.count = 0

    def writable(self) -> bool:
        return True

    def write(self, data: bytes | bytearray | memoryview) -> int:  # type: ignore[override]
        view = memoryview(data)
        self.hash.update(view)
        self.count += len(view)
        if self.sink is not None:
            self.sink.write(view)
        return len(view)


def write_layer(entries: Iterable[Entry], out: BinaryIO, *, level: int = 6) -> LayerDigests:
    """Write ``entries`` to ``out`` as a gzip-compressed tar layer; its digests."""
    blob = _Hashing(out)
    with gzip.GzipFile(filename="", mode="wb", compresslevel=level, fileobj=blob, mtime=0) as gz:
        tar_stream = _Hashing(gz)  # type: ignore[arg-type]
        with tarfile.open(fileobj=tar_stream, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            linked: dict[tuple[int, int], str] = {}
            for entry in entries:
                _add(tar, entry, linked)
    return LayerDigests(
        digest=f"sha256:{blob.hash.hexdigest()}",
        size=blob.count,
        diff_id=f"sha256:{tar_stream.hash.hexdigest()}",
    )


def _add(tar: tarfile.TarFile, entry: Entry, linked: dict[tuple[int, int], str]) -> None:
    info = tarfile.TarInfo(entry.name)
    info.mtime, info.uid, info.gid, info.uname, info.gname = EPOCH, entry.uid, entry.gid, "", ""
    info.mode = entry.mode
    if entry.kind == "dir":
        info.type = tarfile.DIRTYPE
        tar.addfile(info)
    elif entry.kind == "symlink":
        info.type, info.linkname = tarfile.SYMTYPE, entry.target
        tar.addfile(info)
    elif entry.kind == "data":
        info.size = len(entry.data)
        tar.addfile(info, io.BytesIO(entry.data))
    elif entry.inode is not None and entry.inode in linked:
        info.type, info.linkname = tarfile.LNKTYPE, linked[entry.inode]
        tar.addfile(info)
    else:
        with _open_listed(entry) as source:
            info.size = os.fstat(source.fileno()).st_size
            tar.addfile(info, source)
        if entry.inode is not None:
            linked[entry.inode] = entry.name


def _open_listed(entry: Entry) -> BinaryIO:
    """The host file of ``entry``, refused (OSError) unless it is the very regular file
    that was listed: a tree's owner who swaps a file for a link to, or a hard link of,
    another host file after the listing does not get that file into the layer."""
    assert entry.source is not None
    fd = os.open(entry.source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode) or (
        entry.ident is not None and (info.st_dev, info.st_ino) != entry.ident
    ):
        os.close(fd)
        raise OSError(f"{entry.source} changed while the layer was written")
    return os.fdopen(fd, "rb")
