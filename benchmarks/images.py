"""Image mode figures: writing and pushing the standard scientific environment's image.

Run: .venv/bin/python benchmarks/images.py   (a few minutes; needs docker-registry and
skopeo: scripts/setup --test; PyPI unless the tests' uv cache has the packages)

In one run, on this machine:

1. builds numpy + pandas + matplotlib with the Jupyter session packages (benchmarks/
   build.py's environment) with the tests' uv cache, untimed;
2. starts Debian's docker-registry on a loopback port (tests/registry_helpers.py);
3. ``ImageRegistry.publish`` into a fresh OCI layout (gzip level 1, the default): the
   write (every layer, the base and the interpreter included) and the push, timed apart,
   with each layer's size;
4. publishes again: every layer cached in the layout, every blob in the registry;
5. ``skopeo copy oci:<the same layout>:<key> docker://<a second registry>`` -- the same
   blobs sent by an independent client -- timed;
6. writes the environment layer alone at gzip level 6 and 1, for the level's cost.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from registry_helpers import REPOSITORY, LocalRegistry  # noqa: E402
from repos import make_repo  # noqa: E402
from testcache import CACHE  # noqa: E402

from binderbox.app import BinderboxApp  # noqa: E402
from binderbox.events import Built  # noqa: E402
from binderbox.images import ImageRegistry  # noqa: E402
from binderbox.images.layout import ImageLayout  # noqa: E402
from binderbox.images.target import image_layers  # noqa: E402
from binderbox.pipeline import LaunchRequest  # noqa: E402

REQUIREMENTS = "numpy\npandas\nmatplotlib\n"


async def build(work: Path) -> Built:
    """The environment, built and finished (bytecode), in a fresh data directory."""
    app = BinderboxApp(data_dir=str(work / "data"))
    app.config.PythonBuilder.cache_dir = str(CACHE / "uv")
    pipeline = app.make_pipeline(allow_local=True)
    repo = make_repo(work / "repo", {"requirements.txt": REQUIREMENTS})
    last = None
    async for event in pipeline.launch(LaunchRequest("", str(repo), build_only=True)):
        last = event
    await pipeline.finisher.drain()
    if not isinstance(last, Built):
        raise SystemExit(f"the build failed: {last}")
    return last


def mb(n: float) -> str:
    return f"{n / 1e6:7.1f} MB"


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="bbx-images-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o711)  # the build's sandbox uids enter the data directory below
        built = asyncio.run(build(work))
        env, key = Path(built.path), built.image_name
        first, second = LocalRegistry(work / "reg1"), LocalRegistry(work / "reg2")
        try:
            layout_dir = work / "layout"
            images = ImageRegistry(
                url=first.host, prefix=REPOSITORY, insecure=True, layout_dir=str(layout_dir)
            )
            print("environment: numpy + pandas + matplotlib + the Jupyter session packages")
            done = images.publish(env, key)
            print(f"write (all layers, gzip 1): {done.write_seconds:6.1f} s")
            print(f"push to a loopback registry: {done.push_seconds:6.1f} s "
                  f"({len(done.uploaded)} blobs)")  # fmt: skip
            layout = ImageLayout(layout_dir)
            record = layout.pushed(key) or {}
            names = ["base", "interpreter", *(["system"] * (len(record["layers"]) - 3)), "env"]
            for name, digest in zip(names, record["layers"], strict=True):
                print(f"  {name:12} {mb(layout.blob_path(digest).stat().st_size)}")
            print(f"  image total  {mb(done.size)}")
            again = images.publish(env, key)
            print(f"publish again: write {again.write_seconds:.1f} s, push "
                  f"{again.push_seconds:.1f} s, {len(again.uploaded)} blobs sent")  # fmt: skip
            started = time.perf_counter()
            copied = subprocess.run(
                ["skopeo", "copy", "-q", "--dest-tls-verify=false", f"oci:{layout_dir}:{key}",
                 f"docker://{second.host}/{REPOSITORY}:{key}"],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            took = time.perf_counter() - started
            if copied.returncode != 0:
                raise SystemExit(f"skopeo copy failed: {copied.stderr}")
            print(f"skopeo copy oci: -> docker:// (same layout, empty registry): {took:6.1f} s")
            env_layer = image_layers(env)[-1]
            for level in (6, 1):
                scratch = ImageLayout(work / f"level{level}", compression_level=level)
                started = time.perf_counter()
                written = scratch.layer(env_layer)
                took = time.perf_counter() - started
                print(f"environment layer at gzip {level}: {took:6.1f} s, {mb(written.size)}")
        finally:
            first.close()
            second.close()


if __name__ == "__main__":
    main()
