"""System-layer figures: binderbox's apt.txt layer against raw apt-get + dpkg-deb.

Run: .venv/bin/python benchmarks/apt.py [PACKAGE ...]   (as root; needs the Debian
mirror; default packages: graphviz ffmpeg, the issue's measure, about 90 packages)

In one run, on this machine, for the same package list:

* raw         -- ``apt-get install --download-only --no-install-recommends`` into an
                 empty private archives folder, then ``dpkg-deb -x`` of every file
                 into one tree, one after the other: what any layer needs at least
* cold        -- :class:`~binderbox.builders.aptlayer.AptLayers` with an empty .deb
                 cache and no layer: closure, download, unpack (two at a time), the
                 replayed maintainer-script effects (alternatives, /etc of installed
                 dependencies, registries run in a sandbox), publish
* warm debs   -- a new layer (a new root) with the .deb files already cached: what a
                 host whose package set changed pays for a list it has seen
* reuse       -- the published layer asked for again (every later environment)

Printed, not asserted.  ``ratio`` is cold / raw (the issue's target: within 10%).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from binderbox.builders.aptlayer import AptLayers
from binderbox.runtime.host import SandboxHost

DEFAULT = ["graphviz", "ffmpeg"]


def raw(names: list[str], work: Path) -> tuple[float, int, int]:
    """Seconds, package files and bytes of raw apt-get --download-only + dpkg-deb -x."""
    archives, tree = work / "archives", work / "tree"
    (archives / "partial").mkdir(parents=True)
    tree.mkdir()
    started = time.perf_counter()
    argv = ["apt-get", "install", "-y", "-qq", "--no-install-recommends", "--download-only"]
    argv += ["-o", f"Dir::Cache::archives={archives}", *names]
    subprocess.run(argv, check=True, capture_output=True)
    debs = sorted(archives.glob("*.deb"))
    for deb in debs:
        subprocess.run(["dpkg-deb", "-x", str(deb), str(tree)], check=True)
    elapsed = time.perf_counter() - started
    return elapsed, len(debs), sum(deb.stat().st_size for deb in debs)


async def layer(names: list[str], root: Path, debs: Path) -> float:
    """Seconds of one AptLayers.ensure."""
    layers = AptLayers(root=str(root), debs_dir=str(debs))
    started = time.perf_counter()
    async for _line in layers.ensure(names, SandboxHost()):
        pass
    elapsed = time.perf_counter() - started
    assert layers.tree(names) is not None
    return elapsed


async def main(names: list[str]) -> None:
    if os.geteuid() != 0:
        raise SystemExit("run as root (apt-get --download-only needs it)")
    work = Path(tempfile.mkdtemp(prefix="bbx-apt-bench-", dir="/tmp"))
    work.chmod(0o755)
    try:
        raw_s, count, size = raw(names, work / "raw")
        cold = await layer(names, work / "cold", work / "debs")
        warm = await layer(names, work / "warm", work / "debs")
        reuse = await layer(names, work / "warm", work / "debs")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(f"packages: {' '.join(names)} -> {count} files, {size / 1e6:.1f} MB to download")
    print(f"raw apt-get --download-only + dpkg-deb -x   {raw_s:6.2f} s")
    print(f"binderbox layer, cold                       {cold:6.2f} s  ratio {cold / raw_s:.2f}")
    print(f"binderbox layer, .debs cached (new layer)   {warm:6.2f} s")
    print(f"binderbox layer, reused                     {reuse:6.3f} s")


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:] or DEFAULT))
