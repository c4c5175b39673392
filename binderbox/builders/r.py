"""R environments: R from the system layer, packages into the environment's library.

An R spec (:mod:`binderbox.environments.detectors.r`) builds these layers:

1. **system**: R itself and IRkernel as Debian packages (:attr:`RBuilder.r_packages`,
   ``r-base-core`` and ``r-cran-irkernel``: Debian's R, the R source that works
   without the internet here) plus the repository's ``apt.txt``, in one layer;
2. **base**: the Jupyter server's Python environment (as for any kind), then the
   R packages into :data:`~binderbox.builders.rprogram.R_LIBRARY` from one
   CRAN-like repository: :attr:`RBuilder.snapshot_url` for a dated
   ``runtime.txt`` (Posit Package Manager's dated snapshots, repo2docker's
   source), :attr:`RBuilder.latest_url` without a date.  ``renv.lock``, a
   ``DESCRIPTION`` and ``install.R`` run here, in the build sandbox, as the
   build's own uid (:mod:`binderbox.builders.rprogram`);
3. IRkernel's kernel spec in the environment, so JupyterLab offers R;
4. pip and ``postBuild`` as for Python.

The repository is fetched by R inside the sandbox, under the sandbox's network
rules; a ``file://`` repository (a site's local mirror, the tests' stand-in
for Posit) is shown read-only inside at the same path.  ``runtime.txt`` may ask
for an R version this server's R source does not have: with
``exact_version`` off (the default) the build goes on with the R there is and
says so in the log; on, it fails naming both.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import tempfile
from collections import deque
from collections.abc import AsyncIterator
from functools import cache
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import urlsplit

from traitlets import Bool, List, Unicode

from ..environments import EnvSpec
from ..errors import BuildError, EnvironmentConfigError
from ..runtime.host import Step
from ..runtime.process import StepOutput, last_line
from . import rprogram
from .buildrun import BuildRun, out_of_memory, too_big
from .python import PythonBuilder
from .uvsteps import TAIL

#: where Debian's R lives (``R.home()``)
R_HOME = "/usr/lib/R"
#: the program file of a step, inside the sandbox
PROGRAM = "/tmp/binderbox-step.R"


class RFailed(BuildError):
    """An R step (install.R, the packages, the repository check) failed."""

    reason = "r"


@cache
def debian_r_version() -> str:
    """The ``X.Y.Z`` of the r-base-core apt would install here ('' when none)."""
    try:
        out = subprocess.run(
            ["apt-cache", "show", "--no-all-versions", "r-base-core"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return ""
    match = re.search(r"^Version: (?:\d+:)?(\d+\.\d+\.\d+)", out, re.MULTILINE)
    return match[1] if match else ""


class RBuilder(PythonBuilder):
    """Builds ``kind == "r"`` specs.  See the module docstring."""

    kinds: ClassVar[tuple[str, ...]] = ("r",)
    version: ClassVar[str] = "1"

    r_packages = List(
        Unicode(),
        ["r-base-core", "r-cran-irkernel"],
        help="Debian packages that give R and its Jupyter kernel (the system layer).",
    ).tag(config=True)
    snapshot_url = Unicode(
        "https://packagemanager.posit.co/cran/__linux__/bookworm/{date}",
        help="""The CRAN-like repository of a runtime.txt's snapshot date ({date} is
        YYYY-MM-DD): Posit Package Manager's dated snapshots by default; a site's own
        mirror (https:// or a local file:// folder) otherwise.""",
    ).tag(config=True)
    latest_url = Unicode(
        "https://packagemanager.posit.co/cran/__linux__/bookworm/latest",
        help="The CRAN-like repository of R environments that name no snapshot date.",
    ).tag(config=True)
    exact_version = Bool(
        False,
        help="""Refuse an R version in runtime.txt that this server's R is not (instead of
        building with the R there is, saying so in the log).""",
    ).tag(config=True)

    def system_packages(self, spec: EnvSpec) -> tuple[str, ...]:
        """The system layer: R's packages and the repository's apt.txt."""
        return tuple(sorted({*self.r_packages, *spec.apt_packages}))

    @staticmethod
    def base_of(spec: EnvSpec) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(spec.base or "{}")
        return data

    def repository(self, spec: EnvSpec) -> str:
        """The CRAN-like repository this spec's packages come from."""
        date = self.base_of(spec).get("date")
        return self.snapshot_url.format(date=date) if date else self.latest_url

    def r_version(self, spec: EnvSpec) -> str:
        """The R this spec builds with; refuses a mismatch under ``exact_version``."""
        have = debian_r_version()
        if not have:
            raise BuildError(
                "R is not available on this server (apt has no r-base-core).",
                hint="Ask the operator to enable Debian's main archive in apt's sources.",
            )
        wanted = self.base_of(spec).get("r")
        if wanted and self.exact_version and not have.startswith(f"{wanted}."):
            where = next((s for s in spec.sources if s.endswith("runtime.txt")), "runtime.txt")
            raise EnvironmentConfigError(
                f"{where}: R {wanted} is not available on this server",
                hint=f"This server has R {have}: ask for r-{have.rsplit('.', 1)[0]}-<date>.",
            )
        return have

    def interpreter(self, spec: EnvSpec) -> str:
        """The Python's identity, R's version and the repository: all in the key."""
        python = super().interpreter(spec)
        packages = ",".join(self.system_packages(spec))  # the layer: R's packages too
        return f"{python}+r-{self.r_version(spec)}+{self.repository(spec)}+{packages}"

    def check_layers(self, spec: EnvSpec) -> None:
        """apt.txt is part of R's own system layer."""

    def code_runs_later(self, spec: EnvSpec) -> bool:
        """R's steps run after the pip layer, as the build's own uid."""
        return True

    async def code_layer(self, spec: EnvSpec, run: BuildRun) -> AsyncIterator[str]:
        """R's packages and kernel, after the pip layer (so the pip layer uses the shared
        cache before any repository code runs), all written inside the build sandbox."""
        have, wanted = self.r_version(spec), self.base_of(spec).get("r")
        if wanted and not have.startswith(f"{wanted}."):
            yield f"runtime.txt asks for R {wanted}; building with R {have}, this server's R."
        repository = self.repository(spec)
        yield f"Installing R packages from {repository}"
        kernel = rprogram.kernel_spec(R_HOME, {})
        check = rprogram.setup_program(kernel) + rprogram.check_program(repository)
        async for line in self._r_step(run, repository, check, "The repository check"):
            yield line
        base = self.base_of(spec)
        program = rprogram.packages_program(repository, base)
        if program is not None:
            what = "renv.lock" if base.get("renv") else "DESCRIPTION"
            async for line in self._r_step(run, repository, program, what):
                yield line
        if base.get("install_r"):
            program = rprogram.prelude(repository) + base["install_r"]
            async for line in self._r_step(run, repository, program, "install.R"):
                yield line

    async def _r_step(
        self, run: BuildRun, repository: str, program: str, what: str
    ) -> AsyncIterator[str]:
        """Run one R ``program`` in the build sandbox as the build's own uid."""
        with tempfile.NamedTemporaryFile("w", suffix=".R", delete=False) as handle:
            handle.write(program)
        host_file = Path(handle.name)
        try:
            host_file.chmod(0o644)
            uid = await asyncio.to_thread(run.hand_over, None, False)
            box = self._sandbox(run).file(host_file, PROGRAM)
            local = urlsplit(repository)
            if local.scheme == "file" and Path(local.path).is_dir():
                box.ro_bind(local.path)
            box.setenv({"R_LIBS_USER": rprogram.R_LIBRARY, "XDG_CACHE_HOME": "/tmp/.cache"})
            step = Step(output=StepOutput(tail=deque(maxlen=TAIL)))
            command = ["/usr/bin/Rscript", PROGRAM]
            async for line in self.host.run_step(
                box, command, uid=uid, step=step, trees=run.trees()
            ):
                yield line
        finally:
            host_file.unlink(missing_ok=True)
        self._r_failure(step, what, run)

    def _r_failure(self, step: Step, what: str, run: BuildRun) -> None:
        """A failed step as a plain BuildError naming what failed and R's reason."""
        if step.over_limit:
            raise too_big(run, step.over_limit)
        code, tail = step.output.code, list(step.output.tail)
        if code == 0:
            return
        if step.oom_killed:
            raise out_of_memory(what, self.host.build_mem_limit)
        if any(rprogram.NO_PACKAGES in line for line in tail):
            raise RFailed(
                "The R package repository lists no packages: the snapshot date may not exist.",
                hint="Check the date in runtime.txt (r-<version>-<YYYY-MM-DD>).",
            )
        mismatch = next((line for line in tail if rprogram.MISMATCH in line), "")
        if mismatch:
            detail = mismatch.split(rprogram.MISMATCH, 1)[1].strip()
            raise RFailed(f"renv.lock could not be restored exactly: {detail[:300]}")
        errors = [line.strip() for line in tail if line.strip().startswith("Error")]
        last = errors[-1] if errors else last_line(tail)
        raise RFailed(
            f"{what} failed" + (f": {last[:300]}" if last else f" with exit status {code}."),
            hint="The build log shows R's output.",
            log_message=f"{what} failed with exit status {code}; its last lines:\n"
            + "\n".join(tail),
        )
