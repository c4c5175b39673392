"""R environments end to end: Debian's R and IRkernel in the system layer, packages
from a dated CRAN-like repository into the environment's library, the R kernel run
through the kernel API.

CRAN and Posit Package Manager are unreachable here: the repository is a **local
stand-in** laid out as Posit's dated snapshots (tests/cranrepo.py), read through a
``file://`` URL (``c.RBuilder.snapshot_url``).  R, IRkernel and apt are real.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from build_helpers import build_only, built
from cranrepo import RPackage, write_snapshot
from kernels import run_code
from repos import make_repo, notebook
from session_helpers import launch, launcher_for, resolved, running_hub
from testcache import CACHE as TEST_CACHE

from binderbox.app import BinderboxApp
from binderbox.builders import run_in_env
from binderbox.events import Failed
from binderbox.pipeline import LaunchPipeline
from binderbox.sessions import SessionRequest

DATE = "2024-01-02"


@pytest.fixture
async def pipeline(tmp_path: Path) -> AsyncIterator[LaunchPipeline]:
    cran = tmp_path / "cran-stand-in"
    current, older = RPackage("tinyr", "1.0", value="42"), RPackage("tinyr", "0.9", value="9")
    write_snapshot(cran, DATE, [current], [older])
    app = BinderboxApp(data_dir=str(tmp_path / "data"))
    app.config.PythonBuilder.cache_dir = str(TEST_CACHE / "uv")
    app.config.AptLayers.debs_dir = str(TEST_CACHE / "debs")
    app.config.RBuilder.snapshot_url = f"file://{cran}/{{date}}"
    made = app.make_pipeline(allow_local=True)
    yield made
    await made.finisher.aclose()


def r_repo(root: Path, install_r: str, date: str = DATE) -> Path:
    files = {"runtime.txt": f"r-4.2-{date}\n", "install.R": install_r, "a.ipynb": notebook()}
    return make_repo(root, files)


async def test_install_r_from_a_dated_snapshot_and_the_r_kernel(
    pipeline: LaunchPipeline, tmp_path: Path
) -> None:
    repo = r_repo(tmp_path / "repo", 'install.packages("tinyr")\n')
    env = built(await build_only(pipeline, str(repo)))
    library = {"R_LIBS_USER": "/srv/env/lib/R/library"}
    script = "library(tinyr); cat(tinyr_value(), R.version$major, '\\n')"
    found = run_in_env(Path(env.path), ["/usr/bin/Rscript", "-e", script], env=library)
    assert found.stdout.split() == ["42", "4"], found.stderr
    content = make_repo(tmp_path / "content", {"a.ipynb": notebook()})
    async with running_hub(tmp_path / "hub") as hub:
        request = SessionRequest(
            "env-r", Path(env.path), content, resolved("r"), launch_host=hub.public_url
        )
        _, ready = await launch(launcher_for(hub), request)
        code = "library(tinyr); cat(tinyr_value() + 1, solve(matrix(c(2, 0, 0, 2), 2))[1, 1])"
        out = await run_code(ready.url, ready.token, code, kernel_name="ir")
    assert out.split() == ["43", "0.5"]


@pytest.mark.parametrize(
    ("install_r", "date", "said"),
    [
        ('install.packages("nosuchpkg")\n', DATE, "nosuchpkg"),
        ('stop("the script gives up")\n', DATE, "the script gives up"),
        ('install.packages("tinyr")\n', "2019-05-05", "snapshot date"),
    ],
    ids=["unknown-package", "failing-install-R", "missing-snapshot-date"],
)
async def test_r_failures_are_plain_failed_events(
    pipeline: LaunchPipeline, tmp_path: Path, install_r: str, date: str, said: str
) -> None:
    events = await build_only(pipeline, str(r_repo(tmp_path / "repo", install_r, date)))
    failed = events[-1]
    assert isinstance(failed, Failed), failed.to_wire()
    assert said in failed.message and "Traceback" not in failed.message
    assert not list(Path(pipeline.store.root).glob("envs/*"))


RENV_LOCK = """{
  "R": {"Version": "4.2.2", "Repositories": [{"Name": "CRAN", "URL": "https://cran.r-project.org"}]},
  "Packages": {"tinyr": {"Package": "tinyr", "Version": "0.9", "Source": "Repository"}}
}
"""
DESCRIPTION = """Package: myanalysis
Version: 0.1
Title: An Analysis
Description: What a repository's root DESCRIPTION says.
License: MIT
Imports: tinyr
"""


@pytest.mark.parametrize(
    ("files", "value"),
    [
        ({"renv.lock": RENV_LOCK}, "9"),  # the locked 0.9, from the archive
        ({"DESCRIPTION": DESCRIPTION}, "42"),  # its Imports, current versions
    ],
    ids=["renv-lock", "description"],
)
async def test_renv_lock_and_description(
    pipeline: LaunchPipeline, tmp_path: Path, files: dict[str, str], value: str
) -> None:
    repo = make_repo(tmp_path / "repo", {"runtime.txt": f"r-{DATE}\n", **files, "a.ipynb": ""})
    env = built(await build_only(pipeline, str(repo)))
    library = {"R_LIBS_USER": "/srv/env/lib/R/library"}
    script = "cat(tinyr::tinyr_value(), '\\n')"
    found = run_in_env(Path(env.path), ["/usr/bin/Rscript", "-e", script], env=library)
    assert found.stdout.split() == [value], found.stderr
