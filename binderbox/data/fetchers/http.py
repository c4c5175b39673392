"""Plain ``http(s)://`` file sources, and the download engine all fetchers share.

:func:`download` streams one URL into a dataset folder:

* the response status is checked (a 404 is an error, never an empty
  dataset), redirects are followed; every hop's connection obeys the
  destination policy (:mod:`.guard`: no private, loopback or link-local
  address unless ``DataCache.allow_private_hosts``);
* the body is read in a helper thread in 1 MiB chunks (:class:`Body`), counted
  against ``Content-Length`` (a short body is an error), hashed when a
  checksum is expected, and decompressed on the way for ``.tar.gz``,
  ``.tar.bz2``, ``.tar.xz`` and ``.gz`` -- so reading, decompressing and
  writing overlap like ``curl | tar xz`` does;
* tar archives are extracted while they arrive; ``.zip`` files are written
  to disk first (their index is at the end) and then extracted; ``.gz``
  files are decompressed; any other file is written as it is;
* every byte written counts against the dataset's size limit, so an
  over-limit dataset is aborted early.

Checks that can only be done at the end (length, checksum) happen before the
consumer sees the end of the stream: a corrupt download fails before its
last byte is "written" and the cache then discards the whole folder.
"""

from __future__ import annotations

import bz2
import contextlib
import hashlib
import http.client
import lzma
import os
import queue
import re
import threading
import urllib.error
import urllib.parse
import urllib.request
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from ...errors import DataError
from ..archives import archive_kind, extract_tar_stream, extract_zip, gunzipped_name, write_file
from ..requirement import DataEntry
from .base import DataFetcher, FetchContext, fail, human_bytes, run_blocking
from .guard import BlockedDestination, RedirectRefused

CHUNK = 1 << 20
#: largest piece of decompressed output produced at once (bounds memory)
MAX_PIECE = 8 << 20
#: largest API answer (JSON listing, HTML page) read into memory
MAX_DOCUMENT = 32 << 20
USER_AGENT = "binderbox-data/1"
#: what :func:`download` unpacks: everything (single-file sources) ...
EXTRACT_ALL = frozenset({"zip", "tar", "tar.gz", "tar.bz2", "tar.xz", "gz"})
#: ... or only real archives (files of a record or a tree: ``.nii.gz`` stays as it is)
EXTRACT_ARCHIVES = EXTRACT_ALL - {"gz"}
_EOF = object()


def open_url(
    url: str, ctx: FetchContext, entry: DataEntry, headers: dict[str, str] | None = None
) -> http.client.HTTPResponse:
    """GET ``url`` following redirects, every hop under the destination policy
    (:class:`~binderbox.data.fetchers.guard.Guard`); a :class:`DataError` unless
    the answer is 2xx."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise fail(entry, url, "only http and https URLs can be downloaded.")
    ctx.check()
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT, **(headers or {})})
    timeout = min(ctx.read_timeout, ctx.remaining_time())
    try:
        response = ctx.guard.open(request, timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        hint = "Check that the URL is right and the file public." if exc.code < 500 else ""
        raise fail(entry, url, f"the server answered {exc.code} {exc.reason}.", hint=hint) from None
    except urllib.error.URLError as exc:
        raise refused(entry, url, exc.reason, requested=request.full_url) from None
    except (OSError, http.client.HTTPException, ValueError) as exc:
        raise fail(entry, url, f"cannot connect ({exc}).") from None
    assert isinstance(response, http.client.HTTPResponse)
    return response


def refused(entry: DataEntry, url: str, reason: object, *, requested: str) -> DataError:
    """The error for a request of ``url`` (``requested``: as urllib spells it) that
    urllib gave up on with ``reason``: a destination the policy refused (said as for
    repositories: "... is not allowed: <host> is on a private network."), a
    redirect to another scheme, or a connection failure."""
    if isinstance(reason, BlockedDestination):
        redirected = reason.url != requested
        via = f" (the server redirected there, from {url})" if redirected else ""
        return DataError(
            f"Dataset {entry.describe()} is not allowed: {reason.host} is on a private "
            f"network{' (the server redirected there)' if redirected else ''}.",
            hint="This service only downloads datasets from public hosts.",
            log_message=f"refused dataset {entry.describe()} at {reason.url}{via}: {reason}; "
            "the operator can allow private hosts for datasets with "
            "c.DataCache.allow_private_hosts = True, or one network with c.Destinations.allowed",
            status_code=403,
            reason="data_private_host",
        )
    if isinstance(reason, RedirectRefused):
        cause = f"the server redirected to {reason.url}, which is not an http or https URL."
        return fail(entry, url, cause)
    return fail(entry, url, f"cannot connect ({reason}).")


def read_document(url: str, ctx: FetchContext, entry: DataEntry) -> tuple[bytes, str]:
    """The (small) body of ``url`` and its Content-Type: API answers, HTML pages."""
    response = open_url(url, ctx, entry)
    with response, Body(response, url, ctx, entry, label="") as body:
        data = bytearray()
        while chunk := body.read(CHUNK):
            data += chunk
            if len(data) > MAX_DOCUMENT:
                raise fail(entry, url, "the answer is unexpectedly large.")
        return bytes(data), response.headers.get("Content-Type", "")


def read_json(url: str, ctx: FetchContext, entry: DataEntry) -> Any:
    """The decoded JSON answer of ``url``."""
    import json

    data, _ = read_document(url, ctx, entry)
    try:
        return json.loads(data)
    except ValueError:
        raise fail(entry, url, "the answer is not JSON.") from None


def _decoders(kind: str) -> Callable[[], Any]:
    if kind == "gz":
        return lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)
    if kind == "bz2":
        return bz2.BZ2Decompressor
    return lambda: lzma.LZMADecompressor(lzma.FORMAT_AUTO)


class Decoder:
    """Streaming gzip/bzip2/xz decompression in bounded pieces (multi-member aware)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._new = _decoders(kind)
        self._d = self._new()

    def feed(self, data: bytes | memoryview) -> Iterator[bytes]:
        """Decompressed pieces of ``data`` (each at most :data:`MAX_PIECE`)."""
        d = self._d
        while True:
            if self.kind == "gz":
                out = d.decompress(data, MAX_PIECE)
                data = d.unconsumed_tail
                more = bool(data)
            else:
                out = d.decompress(data, MAX_PIECE)
                data = b""
                more = not d.eof and not d.needs_input
            if out:
                yield out
            if d.eof:
                rest = d.unused_data + data
                if not rest:
                    return
                d = self._d = self._new()
                data = rest
            elif not more:
                return

    def finish(self) -> bool:
        """Whether the compressed stream ended properly."""
        return bool(self._d.eof)


class Body:
    """A response body read ahead in a thread; see the module docstring.

    ``read(n)`` returns decompressed bytes (when ``decode`` is set); the empty
    result (end of stream) only comes after the length and checksum checks
    passed; a failed check is raised from ``read`` instead.
    """

    def __init__(
        self,
        response: http.client.HTTPResponse,
        url: str,
        ctx: FetchContext,
        entry: DataEntry,
        *,
        label: str,
        expect: dict[str, str] | None = None,
        decode: str | None = None,
        size: int | None = None,
    ) -> None:
        self.response, self.url, self.ctx, self.entry, self.label = response, url, ctx, entry, label
        self.length = _content_length(response)
        self.total = self.length if self.length is not None else size
        self.expect = {k: v.lower() for k, v in (expect or {}).items()}
        self.hashes = {name: hashlib.new(name) for name in self.expect}
        self.decoder = Decoder(decode) if decode else None
        self.received = 0
        self._queue: queue.Queue[object] = queue.Queue(maxsize=8)
        self._stop = threading.Event()
        self._chunk = memoryview(b"")
        self._offset = 0
        self._done = False
        self._thread = threading.Thread(target=self._produce, daemon=True, name="data-body")
        self._thread.start()

    def __enter__(self) -> Body:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _put(self, item: object) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def _produce(self) -> None:
        try:
            self._read_all()
        except DataError as exc:
            self._put(exc)
        except TimeoutError:
            try:
                self.ctx.check()
                cause = f"the server sent nothing for {self.ctx.read_timeout:.0f} s."
                self._put(fail(self.entry, self.url, cause, reason="data_timeout"))
            except DataError as exc:
                self._put(exc)
        except (OSError, http.client.HTTPException, zlib.error, lzma.LZMAError, EOFError) as exc:
            got = human_bytes(self.received)
            self._put(fail(self.entry, self.url, f"the download broke off after {got} ({exc})."))
        except BaseException as exc:
            self._put(exc)

    def _read_all(self) -> None:
        readinto = self.response.readinto
        while not self._stop.is_set():
            self.ctx.check()
            buffer = bytearray(CHUNK)
            n = readinto(buffer)
            if not n:
                break
            chunk = memoryview(buffer)[:n]
            self.received += n
            for h in self.hashes.values():
                h.update(chunk)
            self._progress()
            if self.decoder is None:
                self._put(chunk)
            else:
                self._decode(chunk)
        if self._stop.is_set():
            return
        self._verify()
        self._progress(force=True)
        self._put(_EOF)

    def _decode(self, chunk: memoryview) -> None:
        assert self.decoder is not None
        try:
            for piece in self.decoder.feed(chunk):
                self._put(piece)
        except (zlib.error, lzma.LZMAError, OSError, EOFError) as exc:
            kind = self.decoder.kind
            cause = f"{self.label or 'the file'} is not valid {kind} data ({exc})."
            raise fail(self.entry, self.url, cause, reason="data_bad_archive") from None

    def _verify(self) -> None:
        if self.length is not None and self.received < self.length:
            cause = (
                f"the download is incomplete: {human_bytes(self.received)} of "
                f"{human_bytes(self.length)} arrived."
            )
            raise fail(self.entry, self.url, cause)
        if self.decoder is not None and not self.decoder.finish():
            raise fail(self.entry, self.url, "the compressed file is truncated or corrupt.")
        for name, h in self.hashes.items():
            got = h.hexdigest()
            if got != self.expect[name]:
                cause = f"checksum mismatch ({name} expected {self.expect[name]}, got {got})."
                raise fail(self.entry, self.url, cause, reason="data_checksum")

    def _progress(self, force: bool = False) -> None:
        if not self.label:
            return
        done, total = self.received, self.total
        amount = human_bytes(done)
        if total:
            amount = f"{amount} of {human_bytes(total)} ({min(100, done * 100 // total)}%)"
        what = f"{self.label} for dataset {self.entry.describe()}"
        message = f"Downloading {what} from {self.url}: {amount}"
        self.ctx.report(message, done, total, force=force)

    def readview(self, n: int = -1, /) -> memoryview:
        """Up to ``n`` bytes without copying (``-1``: the rest of the current piece).

        Empty at the end (after the final checks passed).
        """
        if self._offset >= len(self._chunk):
            if self._done:
                return memoryview(b"")
            item = self._queue.get()
            if item is _EOF:
                self._done = True
                return memoryview(b"")
            if isinstance(item, BaseException):
                self._done = True
                raise item
            assert isinstance(item, memoryview | bytes)
            self._chunk, self._offset = memoryview(item), 0
        start = self._offset
        end = len(self._chunk) if n < 0 else min(start + n, len(self._chunk))
        self._offset = end
        return self._chunk[start:end]

    def read(self, n: int = -1, /) -> bytes:
        """Up to ``n`` bytes as ``bytes`` (``-1``: the rest of the current piece)."""
        return bytes(self.readview(n))

    def drain(self) -> None:
        """Read to the end (runs the final checks)."""
        while self.readview(CHUNK):
            pass

    def close(self) -> None:
        """Stop the reader thread and close the response."""
        self._stop.set()
        while self._thread.is_alive():
            with contextlib.suppress(queue.Empty):
                self._queue.get(timeout=0.05)
        self.response.close()


def _content_length(response: http.client.HTTPResponse) -> int | None:
    if response.headers.get("Content-Encoding", "identity") not in ("identity", ""):
        return None
    value = response.headers.get("Content-Length")
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def safe_filename(name: str) -> str:
    """The last path segment of ``name`` without control characters ("" if none)."""
    base = urllib.parse.unquote(name).replace("\\", "/").rsplit("/", 1)[-1]
    base = "".join(c for c in base if ord(c) >= 32 and ord(c) != 127).strip()
    return "" if base in (".", "..") else base[:255]


def filename_from_headers(response: http.client.HTTPResponse) -> str:
    """The file name a ``Content-Disposition`` header gives ("" if none)."""
    header = response.headers.get("Content-Disposition", "")
    match = re.search(r"filename\*\s*=\s*([^']*)'[^']*'([^;]+)", header)
    if match:
        charset = match.group(1) or "utf-8"
        return safe_filename(urllib.parse.unquote(match.group(2).strip(), charset))
    match = re.search(r'filename\s*=\s*"([^"]*)"', header) or re.search(
        r"filename\s*=\s*([^;]+)", header
    )
    return safe_filename(match.group(1).strip()) if match else ""


def download(
    url: str,
    dest: Path,
    ctx: FetchContext,
    entry: DataEntry,
    *,
    name: str = "",
    subdir: str = "",
    expect: dict[str, str] | None = None,
    size: int | None = None,
    extract: frozenset[str] = EXTRACT_ALL,
    response: http.client.HTTPResponse | None = None,
) -> None:
    """Download ``url`` into ``dest`` (see the module docstring); blocking.

    ``name`` overrides the file name (else Content-Disposition, else the URL
    path); ``subdir`` is a checked relative folder inside ``dest`` where the
    file (or its extracted content) goes (trees mirrored from OSF or S3);
    ``extract`` the archive kinds to unpack; ``expect`` maps hash names to hex
    digests; ``size`` is the size an API announced (progress when the server
    sends no length).  ``response`` is an already opened answer for ``url``.
    """
    resp = response or open_url(url, ctx, entry)
    with resp:
        filename = (
            safe_filename(name)
            or filename_from_headers(resp)
            or safe_filename(urllib.parse.urlsplit(url).path)
            or safe_filename(urllib.parse.urlsplit(resp.geturl()).path)
            or "download"
        )
        length = _content_length(resp)
        if length is not None and ctx.would_exceed(length):
            raise ctx.too_large(entry)
        kind = archive_kind(filename)
        kind = kind if kind in extract else None
        decode = {"tar.gz": "gz", "tar.bz2": "bz2", "tar.xz": "xz", "gz": "gz"}.get(kind or "")
        root = subfolder(dest, subdir, entry, url) if subdir else dest
        body = Body(resp, url, ctx, entry, label=filename, expect=expect, decode=decode, size=size)
        with body:
            if kind and kind.startswith("tar"):
                extract_tar_stream(body, root, ctx, entry, filename)
                body.drain()
            elif kind == "gz":
                write_file(body, root, gunzipped_name(filename), ctx, entry)
            elif kind == "zip":
                partial = write_file(body, root, f".{filename}.download", ctx, entry)
                ctx.uncount(partial.stat().st_size)  # the limit is on what stays
                try:
                    extract_zip(partial, root, ctx, entry, filename)
                finally:
                    partial.unlink()
            else:
                write_file(body, root, filename, ctx, entry)


def subfolder(dest: Path, subdir: str, entry: DataEntry, url: str) -> Path:
    """``dest/subdir`` created, after checking it is a plain relative path inside ``dest``."""
    parts = [p for p in subdir.split("/") if p]
    if any(safe_filename(p) != p for p in parts):
        raise fail(entry, url, f"the remote path '{subdir}' is not a safe folder name.")
    path = dest.joinpath(*parts)
    if not os.path.realpath(path).startswith(os.path.realpath(dest) + os.sep):
        raise fail(entry, url, f"the remote path '{subdir}' leaves the dataset folder.")
    path.mkdir(parents=True, exist_ok=True)
    return path


def entry_checksums(entry: DataEntry) -> dict[str, str]:
    """The ``sha256``/``md5`` an entry declares for its (single) file."""
    found: dict[str, str] = {}
    for name in ("sha256", "md5"):
        value = entry.get(name)
        if isinstance(value, str) and value:
            found[name] = value.split(":", 1)[-1].strip()
    return found


class HttpFetcher(DataFetcher):
    """Any ``http(s)://`` URL of one file; archives are extracted in the folder."""

    kind = "http"

    def matches(self, entry: DataEntry) -> bool:
        """URLs starting with ``http://`` or ``https://``."""
        return entry.src.lower().startswith(("http://", "https://"))

    async def fetch(self, entry: DataEntry, dest: Path, ctx: FetchContext) -> None:
        """Download (and extract) the file, checking ``sha256``/``md5`` when given."""
        expect = entry_checksums(entry)
        await run_blocking(ctx, lambda: download(entry.src, dest, ctx, entry, expect=expect))
