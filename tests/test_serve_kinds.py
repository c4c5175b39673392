"""apt.txt and R repositories launched through ``binderbox serve``: built, ready, and
code runs in their kernels.

Real apt, dpkg, bubblewrap, R and IRkernel; the CRAN-like repository is the local
stand-in laid out as Posit's dated snapshots (tests/cranrepo.py, read through a
``file://`` URL: CRAN and Posit are unreachable from this machine).  The conda kind
has its own module (test_serve_conda.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from cranrepo import RPackage, write_snapshot
from kernels import run_code
from repos import make_repo, notebook
from serve_helpers import ServeProcess, build_events, end_session, git_spec, running_serve
from testcache import CACHE as TEST_CACHE

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]

DATE = "2024-01-02"

DOT = """
import subprocess
png = subprocess.run(["dot", "-Tpng"], input=b"digraph { a -> b }", capture_output=True)
print(png.returncode, png.stdout[:8] == b"\\x89PNG\\r\\n\\x1a\\n", len(png.stdout) > 100)
"""


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    cran = tmp_path_factory.mktemp("cran-stand-in")
    write_snapshot(cran, DATE, [RPackage("tinyr", "1.0", value="42")])
    config = "\n".join(
        [
            f"c.AptLayers.debs_dir = {str(TEST_CACHE / 'debs')!r}",
            f"c.RBuilder.snapshot_url = 'file://{cran}/{{date}}'",
        ]
    )
    with running_serve(tmp_path_factory.mktemp("serve-kinds"), extra_config=config) as running:
        yield running


async def launched_output(serve: ServeProcess, repo: Path, code: str, kernel: str = "") -> str:
    stream = await build_events(serve.url, "git", git_spec(repo))
    assert stream.status == 200 and stream.last.get("phase") == "ready", stream.events[-5:]
    ready = stream.last
    try:
        return await run_code(ready["url"], ready["token"], code, kernel_name=kernel)
    finally:
        await end_session(serve, ready)


async def test_an_apt_txt_repository_runs_its_system_packages(
    serve: ServeProcess, tmp_path: Path
) -> None:
    repo = make_repo(
        tmp_path / "apt-repo",
        {"apt.txt": "graphviz\n", "requirements.txt": "six\n", "index.ipynb": notebook()},
    )
    assert (await launched_output(serve, repo, DOT)).split() == ["0", "True", "True"]


async def test_an_r_repository_runs_r_code_in_its_kernel(
    serve: ServeProcess, tmp_path: Path
) -> None:
    repo = make_repo(
        tmp_path / "r-repo",
        {
            "runtime.txt": f"r-4.2-{DATE}\n",
            "install.R": 'install.packages("tinyr")\n',
            "index.ipynb": notebook(),
        },
    )
    code = "library(tinyr); cat(tinyr_value() + 1, R.version$major)"
    assert (await launched_output(serve, repo, code, kernel="ir")).split() == ["43", "4"]
