"""Image mode in the launch pipeline: ask the registry before a build, push after one.

:class:`~binderbox.pipeline.LaunchPipeline` with an enabled
:class:`~binderbox.images.target.ImageTarget` (``c.ImageRegistry.url`` set):

* an environment the store lacks whose image the registry has is not built: the stage
  ends with ``built`` (``cached``, no local path), as BinderHub skips a build when its
  registry has the image; a session from it needs a backend that runs images;
* an environment just built is pushed before ``built``: once its bytecode is compiled
  (the tree is final), held against eviction while it is read.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from ..events import Building, Built, Event
from ..store import Env, Finisher, Store
from .target import ImageTarget


async def found_in_registry(images: ImageTarget | None, key: str) -> Built | None:
    """The ``built`` event of an image the registry has, else None (image mode off, or
    no such image).  Raises the target's errors (unreachable, refused)."""
    if images is None or not images.enabled:
        return None
    if not await asyncio.to_thread(images.exists, key):
        return None
    name = images.image_name(key)
    return Built(
        message=f"Found image {name} in the registry.", image_name=key, path="", cached=True
    )


async def push_built(
    images: ImageTarget | None, finisher: Finisher, store: Store, env: Env
) -> AsyncIterator[Event]:
    """Publish the image of ``env`` just built (nothing when image mode is off)."""
    if images is None or not images.enabled:
        return
    name = images.image_name(env.key)
    yield Building(message=f"Compiling bytecode, then pushing the image {name}")
    await finisher.wait(env.key)
    hold = await asyncio.to_thread(store.hold, env.key)
    if hold is None:
        return  # removed meanwhile: the next launch builds it again
    try:
        done = await asyncio.to_thread(images.publish, env.path, env.key)
    finally:
        hold.release()
    yield Building(
        message=f"Pushed {name}@{done.digest}: {len(done.uploaded)} blobs sent,"
        f" {len(done.skipped)} already in the registry"
    )
