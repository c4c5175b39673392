"""Image mode: environments as OCI images, written and pushed without a Docker daemon.

The seam is :class:`~binderbox.images.target.ImageTarget` (where images go: its name for
an environment key, whether it is there, publishing one); :class:`ImageRegistry` is the
one implementation, a registry of the Distribution API.  Below it, each part a module:

* :mod:`.tarlayer`: reproducible tar layers (fixed mtimes and owners), both digests;
* :mod:`.rootfs`: what the layers hold (base, interpreters, system layers, environment);
* :mod:`.layout`: the OCI layout on disk (blobs, config, manifest, index; bounded);
* :mod:`.auth`, :mod:`.registry`: names, credentials, challenges; the HTTP API client.
"""

from .auth import RegistryAuthError, RegistryError, RegistryUnreachable
from .target import ImageRegistry, ImageTarget, Published

__all__ = [
    "ImageRegistry",
    "ImageTarget",
    "Published",
    "RegistryAuthError",
    "RegistryError",
    "RegistryUnreachable",
]
