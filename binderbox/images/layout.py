"""An OCI image layout on disk (``<data dir>/images``): where images are written before a
push, and what ``skopeo copy oci:<layout>:<tag>`` or ``umoci`` read as they are.

::

    images/
      oci-layout            {"imageLayoutVersion": "1.0.0"}
      index.json            the images kept, each tagged (org.opencontainers.image.ref.name)
      blobs/sha256/<hex>    layers (tar+gzip), configs, manifests
      layers/<fp>.json      the layer cache: a layer's sources' fingerprint -> its digests
      pushed/<tag>.json     what the last push of a tag sent (registry, digests)
      tmp/  lock

A layer is written once per content: its sources (names, modes, sizes, mtimes on the host:
:func:`~binderbox.images.tarlayer.fingerprint`) are looked up in ``layers/`` first, so the
base layer, an interpreter's layer and an environment already written are not read again.
Blobs appear whole (written under ``tmp/``, renamed).

Bounded: the index keeps the :attr:`ImageLayout.keep` most recently written images; after
each write the blobs no kept manifest names, and the cache entries of deleted blobs, are
removed (under the layout's lock, so a write under way in another process is never cut).
Disk use is then that of at most ``keep`` images, their shared layers counted once.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import secrets
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from traitlets import Int
from traitlets.config import LoggingConfigurable

from ..runtime.layout import session_environment
from ..store.locks import FileLock
from .tarlayer import Entry, LayerDigests, fingerprint, write_layer

INDEX = "application/vnd.oci.image.index.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
CONFIG = "application/vnd.oci.image.config.v1+json"
LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
ARCHES = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64le", "s390x": "s390x"}


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def canonical(value: Any) -> bytes:
    """JSON with sorted keys and no spaces: the same object, the same bytes."""
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Layer:
    """One layer to write: what it is (for history), and its entries (made lazily)."""

    what: str
    entries: Callable[[], Iterable[Entry]]


@dataclass(frozen=True)
class Image:
    """A written image: its manifest's digest and size, its config's and layers'."""

    tag: str
    manifest: str
    manifest_size: int
    config: str
    layers: tuple[LayerDigests, ...]

    def blobs(self) -> list[str]:
        """The blobs a registry needs before the manifest: layers, then the config."""
        return [layer.digest for layer in self.layers] + [self.config]


class ImageLayout(LoggingConfigurable):
    """The OCI layout under ``root``.  See the module docstring."""

    keep = Int(
        8,
        help="""Images kept in the layout (<data dir>/images) after a write, the most
        recent; blobs only older images used are deleted.  Pushed images live in the
        registry: the layout is a staging area (and what `skopeo copy oci:` reads).""",
    ).tag(config=True)
    compression_level = Int(
        1,
        help="""gzip level of layers (1-9).  Measured on the scientific environment's
        layer (benchmarks/images.py): level 1 writes it 2.6 times faster than 6 for 16%
        more bytes.  Part of the layer cache key.""",
    ).tag(config=True)

    def __init__(self, root: Path, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = root
        self.blob_dir = root / "blobs" / "sha256"
        for folder in (self.blob_dir, root / "layers", root / "pushed", root / "tmp"):
            folder.mkdir(parents=True, exist_ok=True)
        marker = root / "oci-layout"
        if not marker.exists():
            marker.write_bytes(canonical({"imageLayoutVersion": "1.0.0"}))

    def blob_path(self, digest: str) -> Path:
        """The file of blob ``digest`` (``sha256:<hex>``)."""
        algorithm, _, hexdigest = digest.partition(":")
        if algorithm != "sha256" or len(hexdigest) != 64:
            raise ValueError(f"not a sha256 digest: {digest!r}")
        return self.blob_dir / hexdigest

    @contextlib.contextmanager
    def _temp(self) -> Iterator[Path]:
        path = self.root / "tmp" / f"{os.getpid()}.{secrets.token_hex(6)}"
        try:
            yield path
        finally:
            path.unlink(missing_ok=True)

    def _put_bytes(self, data: bytes) -> tuple[str, int]:
        import hashlib

        digest = f"sha256:{hashlib.sha256(data).hexdigest()}"
        if not self.blob_path(digest).exists():
            with self._temp() as tmp:
                tmp.write_bytes(data)
                tmp.replace(self.blob_path(digest))
        return digest, len(data)

    def layer(self, layer: Layer) -> LayerDigests:
        """The digests of ``layer``, written unless the cache has its sources' blob."""
        entries = list(layer.entries())
        key = f"{fingerprint(entries)}-{self.compression_level}"
        cached = self.root / "layers" / f"{key}.json"
        with contextlib.suppress(OSError, ValueError, TypeError, KeyError):
            found = LayerDigests(**json.loads(cached.read_text()))
            if self.blob_path(found.digest).is_file():
                return found
        with self._temp() as tmp:
            with tmp.open("wb") as out:
                digests = write_layer(entries, out, level=self.compression_level)
                out.flush()
                os.fsync(out.fileno())
            tmp.replace(self.blob_path(digests.digest))
        cached.write_bytes(canonical(asdict(digests)))
        return digests

    def write(self, tag: str, layers: list[Layer], labels: dict[str, str], cmd: list[str]) -> Image:
        """Write the image ``tag`` of ``layers`` (bottom first), index it, trim the
        layout; the image.  Blocking (it reads and compresses whole trees); one write at
        a time per layout (its lock), so a trim never removes what another writes."""
        with FileLock.acquire(self.root / "lock"):
            self._clear_temps()
            image = self._write(tag, layers, labels, cmd)
            self._index(image)
            self._trim()
        return image

    def _clear_temps(self) -> None:
        """Remove what writers that died left in ``tmp/`` (named ``<pid>.<random>``)."""
        for path in (self.root / "tmp").iterdir():
            pid = path.name.partition(".")[0]
            if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
                path.unlink(missing_ok=True)

    def _write(
        self, tag: str, layers: list[Layer], labels: dict[str, str], cmd: list[str]
    ) -> Image:
        written = tuple(self.layer(layer) for layer in layers)
        config = {
            "architecture": ARCHES.get(platform.machine(), platform.machine()),
            "os": "linux",
            "config": {
                "User": "1000:1000",
                "Env": [f"{k}={v}" for k, v in sorted(session_environment().items())],
                "WorkingDir": session_environment()["HOME"],
                "Cmd": cmd,
                "Labels": labels,
            },
            "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in written]},
            "history": [{"created_by": f"binderbox: {layer.what}"} for layer in layers],
        }
        config_digest, config_size = self._put_bytes(canonical(config))
        manifest = {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "digest": config_digest, "size": config_size},
            "layers": [
                {"mediaType": LAYER, "digest": layer.digest, "size": layer.size}
                for layer in written
            ],
            "annotations": labels,
        }
        manifest_digest, manifest_size = self._put_bytes(canonical(manifest))
        return Image(tag, manifest_digest, manifest_size, config_digest, written)

    def manifest_bytes(self, image: Image) -> bytes:
        """The manifest as written (what is PUT to a registry)."""
        return self.blob_path(image.manifest).read_bytes()

    def _read_index(self) -> list[dict[str, Any]]:
        try:
            manifests: list[dict[str, Any]] = json.loads((self.root / "index.json").read_text())[
                "manifests"
            ]
        except (OSError, ValueError, KeyError):
            return []
        return manifests

    def _index(self, image: Image) -> None:
        entries = [
            m for m in self._read_index() if m.get("annotations", {}).get(REF_NAME) != image.tag
        ]
        entries.append(
            {
                "mediaType": MANIFEST,
                "digest": image.manifest,
                "size": image.manifest_size,
                "annotations": {REF_NAME: image.tag},
            }
        )
        index = {"schemaVersion": 2, "mediaType": INDEX, "manifests": entries[-self.keep :]}
        with self._temp() as tmp:
            tmp.write_bytes(canonical(index))
            tmp.replace(self.root / "index.json")

    def _trim(self) -> None:
        """Delete blobs no kept manifest names, cache entries of deleted blobs, and push
        records of images no longer kept (the layout's lock held)."""
        used: set[str] = set()
        tags: set[str] = set()
        for entry in self._read_index():
            tags.add(entry.get("annotations", {}).get(REF_NAME, ""))
            used.add(entry["digest"])
            manifest = json.loads(self.blob_path(entry["digest"]).read_text())
            used.add(manifest["config"]["digest"])
            used.update(layer["digest"] for layer in manifest["layers"])
        for blob in self.blob_dir.iterdir():
            if f"sha256:{blob.name}" not in used:
                blob.unlink(missing_ok=True)
        for cached in (self.root / "layers").iterdir():
            with contextlib.suppress(OSError, ValueError, KeyError):
                if json.loads(cached.read_text())["digest"] not in used:
                    cached.unlink()
        for record in (self.root / "pushed").iterdir():
            if record.stem not in tags:
                record.unlink(missing_ok=True)

    def record_push(self, image: Image, reference: str, uploaded: list[str]) -> dict[str, Any]:
        """Keep what a push of ``image`` as ``reference`` sent (``pushed/<tag>.json``)."""
        record = {
            "image": reference,
            "manifest_digest": image.manifest,
            "config_digest": image.config,
            "layers": [layer.digest for layer in image.layers],
            "diff_ids": [layer.diff_id for layer in image.layers],
            "uploaded": uploaded,
        }
        path = self.root / "pushed" / f"{image.tag}.json"
        with self._temp() as tmp:
            tmp.write_text(json.dumps(record, indent=1))
            tmp.replace(path)
        return record

    def pushed(self, tag: str) -> dict[str, Any] | None:
        """The record of the last push of ``tag``, if the layout still keeps it."""
        try:
            record: dict[str, Any] = json.loads((self.root / "pushed" / f"{tag}.json").read_text())
        except (OSError, ValueError):
            return None
        return record
