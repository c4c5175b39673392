"""Where environments' images go: the :class:`ImageTarget` seam and :class:`ImageRegistry`.

An image target names the image of an environment key, says whether it has it, and
publishes one from a built environment tree.  The pipeline asks it before building (as
BinderHub asks its registry) and publishes after a build; ``binderbox build --push``
publishes.  A subclass implements the four methods below; they block (the pipeline runs
them in a thread).

:class:`ImageRegistry` (``c.ImageRegistry``): images are ``<url>/<prefix>:<environment
key>`` -- one repository, one tag per environment, so every image shares the base and
interpreter layers in the registry as well as on disk.  Publishing writes the image into
the OCI layout under the data directory (:mod:`.layout`; the layers of
:mod:`.rootfs`) and pushes what the registry lacks (:mod:`.registry`).
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from traitlets import Bool, Float, Int, TraitError, Unicode, default, validate
from traitlets.config import LoggingConfigurable

from ..environments import ENV_PREFIX
from ..errors import BinderboxError
from .auth import TAG, RegistryError, check_repository, credentials_for, parse_target
from .layout import Image, ImageLayout, Layer
from .registry import RegistryClient
from .rootfs import (
    BaseUnavailable,
    base_entries,
    env_entries,
    env_parts,
    installed_closure,
    interpreter_entries,
    system_layer_entries,
)

#: what an image runs when nothing else is asked (KubeSpawner asks for its own command)
DEFAULT_CMD = [f"{ENV_PREFIX}/bin/jupyter", "server", "--ip=0.0.0.0"]


@dataclass(frozen=True)
class Published:
    """A published image: its name, manifest digest, the blobs sent and those the
    registry had already, the seconds writing and pushing took."""

    image: str
    digest: str
    uploaded: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    write_seconds: float = 0.0
    push_seconds: float = 0.0
    size: int = 0


class ImageTarget(LoggingConfigurable):
    """Where environments' images go (see the module docstring).  Override all five."""

    @property
    def enabled(self) -> bool:
        """Whether image mode is configured (else the pipeline never asks)."""
        raise NotImplementedError

    @property
    def repository(self) -> str:
        """Where the images go, ``<registry>/<prefix>``: every :meth:`image_name` is
        ``<repository>:<tag>``."""
        raise NotImplementedError

    def image_name(self, key: str) -> str:
        """The image reference of environment ``key``."""
        raise NotImplementedError

    def exists(self, key: str) -> bool:
        """Whether the target has the image of ``key`` (blocking); raises BinderboxError."""
        raise NotImplementedError

    def publish(self, env_path: Path, key: str) -> Published:
        """Make the image of the built environment at ``env_path`` and send it (blocking;
        the tree must not change meanwhile: after its bytecode is compiled)."""
        raise NotImplementedError


class ImageRegistry(ImageTarget):
    """A registry of the Distribution API (any: Docker's, Harbor, GHCR, Quay, ECR...)."""

    url = Unicode(
        "",
        help="""The registry: host[:port] (registry.example.org, 127.0.0.1:5000); empty: no
        image mode.  `binderbox build --push <url>/<prefix>` sets it and prefix.""",
    ).tag(config=True)
    prefix = Unicode(
        "binderbox/envs",
        help="The repository under the registry: images are <url>/<prefix>:<environment key>.",
    ).tag(config=True)
    insecure = Bool(
        False,
        help="""Plain HTTP instead of HTTPS.  Refused unless the registry is on loopback
        (127.0.0.0/8, ::1, localhost): a test's or a node-local registry.""",
    ).tag(config=True)
    auth_file = Unicode(
        help="""A docker-style auth file ({"auths": {"<host>": {"auth": base64(user:pass)}}}:
        ~/.docker/config.json, a kubernetes.io/dockerconfigjson Secret).  Default:
        $REGISTRY_AUTH_FILE, else ~/.docker/config.json.  Its credentials answer the
        registry's Basic or Bearer (token service) challenge.""",
    ).tag(config=True)
    ca_file = Unicode(
        "", help="CA certificates (PEM) to verify the registry's TLS with ('' = the system's)."
    ).tag(config=True)
    chunk_size = Int(
        64 << 20, help="Blobs over this many bytes are uploaded in chunks of it (0 = never)."
    ).tag(config=True)
    timeout = Float(60.0, help="Seconds a registry request may go without an answer.").tag(
        config=True
    )
    layout_dir = Unicode(
        "", help="The OCI layout images are written to (default: <data dir>/images)."
    ).tag(config=True)

    @default("auth_file")
    def _default_auth_file(self) -> str:
        return os.environ.get("REGISTRY_AUTH_FILE") or str(Path.home() / ".docker/config.json")

    @validate("prefix")
    def _valid_prefix(self, proposal: Any) -> str:
        try:
            return check_repository(str(proposal["value"]).strip("/"))
        except RegistryError as err:
            raise TraitError(err.user_message) from None

    def set_target(self, target: str) -> None:
        """Set url and prefix from ``<url>/<prefix>`` (``--push``); ``http://`` in front
        means insecure.  RegistryError for a malformed one."""
        scheme, host, repository = parse_target(target)
        self.url, self.prefix = host, repository
        if scheme is not None:
            self.insecure = scheme == "http"

    @property
    def enabled(self) -> bool:
        return bool(self.url)

    @property
    def host(self) -> str:
        """The registry host[:port] of :attr:`url` (a scheme in front is dropped)."""
        scheme, host, _ = parse_target(f"{self.url.rstrip('/')}/{self.prefix}")
        if scheme == "http" and not self.insecure:
            raise RegistryError(f"The registry URL {self.url} is plain HTTP: set insecure.")
        return host

    @property
    def repository(self) -> str:
        return f"{self.host}/{self.prefix}"

    def image_name(self, key: str) -> str:
        return f"{self.repository}:{_tag(key)}"

    def client(self) -> RegistryClient:
        """A client of the registry with the configured credentials and TLS."""
        host = self.host
        auth = Path(self.auth_file).expanduser() if self.auth_file else None
        return RegistryClient(
            host,
            secure=not self.insecure,
            credentials=credentials_for(host, auth),
            ca_file=self.ca_file,
            timeout=self.timeout,
            chunk_size=self.chunk_size,
        )

    def exists(self, key: str) -> bool:
        return self.client().manifest_digest(self.prefix, _tag(key)) is not None

    def layout(self) -> ImageLayout:
        """The OCI layout images are written to."""
        root = Path(self.layout_dir or Path.home() / ".local/share/binderbox/images")
        return ImageLayout(root, parent=self)

    def publish(self, env_path: Path, key: str) -> Published:
        client = self.client()  # settings and credentials refused before any work
        started = time.monotonic()
        try:
            layout = self.layout()
            labels = {"org.binderbox.env-key": key}
            image = layout.write(_tag(key), image_layers(env_path), labels, DEFAULT_CMD)
        except OSError as err:  # a missing environment, a full disk
            raise BinderboxError(
                f"The image of {key} could not be written: {err.strerror or err}.",
                log_message=f"writing the image of {env_path}: {err!r}",
                reason="image",
            ) from None
        written = time.monotonic()
        skipped = push(client, self.prefix, layout, image)
        layout.record_push(image, self.image_name(key), client.uploaded)
        size = sum(layer.size for layer in image.layers)
        return Published(
            image=self.image_name(key),
            digest=image.manifest,
            uploaded=list(client.uploaded),
            skipped=skipped,
            write_seconds=written - started,
            push_seconds=time.monotonic() - written,
            size=size,
        )


def image_layers(env_path: Path) -> list[Layer]:
    """The layers of the image of the environment at ``env_path`` (:mod:`.rootfs`)."""
    try:
        packages = tuple(installed_closure())
    except BaseUnavailable as err:
        raise RegistryError(f"This host cannot make the image's base layer: {err}.") from None
    mounts, system = env_parts(env_path)
    layers = [Layer(f"base {' '.join(packages)}", functools.partial(base_entries, packages))]
    for host, inside in mounts:
        layers.append(
            Layer(f"interpreter {inside}", functools.partial(interpreter_entries, host, inside))
        )
    for tree in system:
        layers.append(
            Layer(f"system layer {tree.parent.name}", functools.partial(system_layer_entries, tree))
        )
    layers.append(Layer(f"environment at {ENV_PREFIX}", functools.partial(env_entries, env_path)))
    return layers


def push(client: RegistryClient, repository: str, layout: ImageLayout, image: Image) -> list[str]:
    """Send ``image`` from ``layout``: each blob the registry lacks, then the manifest; the
    digests of the blobs it had."""
    skipped = []
    for digest in image.blobs():
        if client.has_blob(repository, digest):
            skipped.append(digest)
        else:
            client.upload_blob(repository, digest, layout.blob_path(digest))
    if client.manifest_digest(repository, image.tag) != image.manifest:
        client.put_manifest(repository, image.tag, layout.manifest_bytes(image))
    return skipped


def _tag(key: str) -> str:
    if not TAG.fullmatch(key):
        raise RegistryError(f"{key!r} cannot be an image tag.")
    return key
