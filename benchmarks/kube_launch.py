"""Launch to ``ready`` on Kubernetes, store mode against image mode, against an emulated API.

Run: .venv/bin/python benchmarks/kube_launch.py [--launches N]
(a few minutes; needs ``scripts/setup --test``: kmock, docker-registry, skopeo, umoci)

There is no Kubernetes API server on this machine: the cluster is tests/kube_emulator.py
(kmock and a stand-in kubelet running each pod's containers under bubblewrap).  Each
mode gets a real ``binderbox serve`` (its own hub and proxy, ``c.ManagedHub.backend =
'kubernetes'``) and launches one repository (six, a text file) through ``/build``:

* **store mode**: the environment is mounted from the store claim into the session image
  (here: the host's folders), nothing pulled;
* **image mode**: the environment's image, pushed to a real registry (Debian's
  docker-registry on loopback) by the first launch; the stand-in kubelet pulls it
  (``skopeo copy``) and unpacks it (``umoci unpack``) as a node would.  ``cold node``
  launches drop the kubelet's unpacked images first, so each one pulls again; ``warm
  node`` launches find the image there, as a node that ran it before.

The first launch of each mode builds the environment and is printed on its own; the
next ``N`` (default 5) are timed from the request to ``ready`` and from ``launching``
to ``ready`` (the spawn: network policy, pod, init container, the server answering
through the proxy).  Prints p50/p95.  Figures of a 2-core machine: compare modes
within one run, not with a real cluster.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from figures import percentile  # noqa: E402
from kube_emulator import EmulatedCluster  # noqa: E402
from registry_helpers import REPOSITORY, LocalRegistry  # noqa: E402
from repos import make_repo  # noqa: E402
from serve_helpers import Stream, build_events, end_session, git_spec, running_serve  # noqa: E402
from test_kube_sessions import serve_config  # noqa: E402


async def launch(url: str, repo: Path) -> tuple[Stream, float]:
    """One launch through ``/build``, to ``ready``; the stream and its seconds."""
    started = time.monotonic()
    stream = await build_events(url, "git", git_spec(repo))
    if stream.last.get("phase") != "ready":
        raise SystemExit(f"the launch failed: {stream.events[-3:]}")
    return stream, time.monotonic() - started


async def run_mode(
    mode: str, root: Path, repo: Path, launches: int, registry: LocalRegistry | None
) -> dict[str, list[float]]:
    """The launches of one mode, on a cluster and service of its own."""
    data = root / mode / "data"
    claims = {"binderbox-store": data / "store", "binderbox-content": data / "content"}
    (root / mode / "cluster").mkdir(parents=True)
    figures: dict[str, list[float]] = {}
    with EmulatedCluster(root / mode / "cluster", claims) as cluster:
        config = serve_config(data)
        if registry is not None:
            cluster.registry = registry.host
            config += (
                "c.KubernetesSessions.mode = 'image'\n"
                f"c.ImageRegistry.url = {registry.host!r}\n"
                f"c.ImageRegistry.prefix = {REPOSITORY!r}\n"
                "c.ImageRegistry.insecure = True\n"
            )
        env = {"KUBECONFIG": str(cluster.kubeconfig)}
        with running_serve(root / mode, data, config, env=env) as serve:
            kinds = ["first (build)"]
            kinds += ["cold node", "warm node"] if registry is not None else ["launch"]
            for kind in kinds:
                for _ in range(1 if kind.startswith("first") else launches):
                    if kind == "cold node":
                        cluster.forget_images()
                    stream, seconds = await launch(serve.url, repo)
                    spawn = stream.time_of("ready") - stream.time_of("launching")
                    figures.setdefault(f"{mode}, {kind}: request -> ready", []).append(seconds)
                    figures.setdefault(f"{mode}, {kind}: launching -> ready", []).append(spawn)
                    await end_session(serve, stream.last)
        if cluster.pulls:
            figures[f"{mode}: the stand-in kubelet's pull + unpack"] = cluster.pulls
    return figures


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--launches", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bbx-kube-bench-") as tmp:
        root = Path(tmp)
        root.chmod(0o755)  # the sandboxes' users enter the data directory below it
        repo = make_repo(
            root / "repos" / "analysis",
            {"requirements.txt": "six==1.16.0\n", "hello.txt": "from the repository\n"},
        )
        registry = LocalRegistry(root / "registry")
        try:
            figures = await run_mode("store", root, repo, args.launches, None)
            figures.update(await run_mode("image", root, repo, args.launches, registry))
        finally:
            registry.close()
    print(f"{'launch (emulated API, stand-in kubelet)':58} {'n':>3} {'p50':>8} {'p95':>8}")
    for name, values in figures.items():
        p50, p95 = percentile(values, 50), percentile(values, 95)
        print(f"{name:58} {len(values):3d} {p50:7.2f}s {p95:7.2f}s")


if __name__ == "__main__":
    asyncio.run(main())
