"""R build figures: binderbox's R builds against R's own ``install.packages``, in one run.

Run: .venv/bin/python benchmarks/r.py [N]   (as root; the Debian mirror for the R layer
on a first run; N source packages, default 12)

CRAN and Posit cannot be reached from here: the packages come from the tests' local
stand-in for a dated Posit snapshot (tests/cranrepo.py: small source packages, each
importing the one before), read through a ``file://`` URL.  Rows:

* layer            -- the first R build on this data directory: Debian's R and
                      IRkernel as a system layer (their .debs from the suite's cache
                      when it has them), the Jupyter server packages, the kernel
* no packages      -- a new R environment whose install.R installs nothing: what
                      every R build costs besides its packages
* with install.R   -- a new R environment installing the N packages
* raw              -- ``Rscript -e 'install.packages(<N>, lib=...)'`` with the same
                      R (the built environment's layer, in a plain sandbox), the same
                      repository, into an empty library

``packages share`` is with - without: what binderbox spends on the packages;
``ratio`` is that share / raw (the issue's target: within 10% of the raw tool).
Printed, not asserted.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from build import timed_build  # type: ignore[import-not-found]
from cranrepo import RPackage, write_snapshot
from repos import make_repo
from testcache import CACHE

from binderbox.app import BinderboxApp
from binderbox.runtime.layout import env_sandbox

DATE = "2024-01-02"


def packages(count: int) -> list[RPackage]:
    """``count`` packages, each importing the one before (install order matters)."""
    made: list[RPackage] = []
    for i in range(count):
        imports = (made[-1].name,) if made else ()
        made.append(RPackage(f"bench{i}", "1.0", value=str(i), imports=imports))
    return made


def raw(env: Path, repository: str, names: list[str]) -> float:
    """Seconds of R's own install.packages into an empty library, in the same R."""
    program = (
        'dir.create("/tmp/raw-lib"); '
        f"install.packages(c({', '.join(repr(n) for n in names)}), "
        f'repos="{repository}", lib="/tmp/raw-lib", quiet=TRUE)'
    ).replace("'", '"')
    box = env_sandbox(env, None)
    box.ro_bind(Path(repository.removeprefix("file://")))
    argv = box.argv(["/usr/bin/Rscript", "-e", program])
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    elapsed = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"raw install.packages failed:\n{done.stderr[-2000:]}")
    return elapsed


async def main(work: Path, count: int) -> None:
    made = packages(count)
    snapshot = write_snapshot(work / "cran", DATE, made)
    app = BinderboxApp(data_dir=str(work / "data"))
    app.config.PythonBuilder.cache_dir = str(CACHE / "uv")
    app.config.PythonBuilder.provision_dir = str(CACHE / "provisioned")
    app.config.AptLayers.debs_dir = str(CACHE / "debs")
    app.config.RBuilder.snapshot_url = f"file://{work / 'cran'}/{{date}}"
    runtime = f"r-4.2-{DATE}\n"
    rows: list[tuple[str, float]] = []
    seconds, _ = await timed_build(app, make_repo(work / "r0", {"runtime.txt": runtime}))
    rows.append(("layer (first R build)", seconds))
    empty = {"runtime.txt": runtime, "install.R": "# no packages\n"}
    without, _ = await timed_build(app, make_repo(work / "r1", empty))
    rows.append(("install.R with no packages", without))
    install = "install.packages(c(" + ", ".join(f'"{p.name}"' for p in made) + "))\n"
    files = {"runtime.txt": runtime, "install.R": install}
    with_r, built = await timed_build(app, make_repo(work / "r2", files))
    rows.append((f"with install.R ({count} packages)", with_r))
    raw_s = raw(Path(built.path), f"file://{snapshot}", [p.name for p in made])
    rows.append(("raw install.packages", raw_s))
    for name, value in rows:
        print(f"{name:34} {value:6.2f} s")
    share = with_r - without
    print(f"packages share (with - without)    {share:6.2f} s  ratio {share / raw_s:.2f}")


if __name__ == "__main__":
    folder = Path(tempfile.mkdtemp(prefix="bbx-r-bench-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        asyncio.run(main(folder, int(sys.argv[1]) if len(sys.argv) > 1 else 12))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
