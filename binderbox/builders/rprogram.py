"""The R side of an R environment: the programs its build steps run, its kernel.

An R environment's base layer (``EnvSpec.base``, see
:mod:`binderbox.environments.detectors.r`) installs packages into the
environment's own library, :data:`R_LIBRARY`, from one CRAN-like repository
(a dated snapshot).  Each step is an R program run with ``Rscript`` inside the
build sandbox, as the build's own uid (``install.R`` and a ``DESCRIPTION``'s
package are the repository's code):

* :func:`check_program` -- the repository answers and lists packages (a
  snapshot date it does not have lists none);
* :func:`packages_program` -- a ``DESCRIPTION``'s dependencies, or a
  ``renv.lock``'s exact versions (the current ones from the repository, older
  ones from its ``src/contrib/Archive``), then the versions are checked;
* ``install.R`` itself, after :data:`PRELUDE`.

R's ``install.packages`` only *warns* when a package fails or does not
exist; :data:`PRELUDE` turns those warnings into errors, so a failing
install fails the build with R's own words, naming the package.  Every
program prints one marker line (``binderbox:...``) the builder reads back.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

from ..environments import ENV_PREFIX

#: the environment's R library (first on ``.libPaths()`` in builds and sessions)
R_LIBRARY = f"{ENV_PREFIX}/lib/R/library"
#: what a repository's failures say, turned into errors by :data:`PRELUDE`
FAILURES = (
    "installation of package .* had non-zero exit status",
    "is not available",
    "download of package .* failed",
    "cannot open URL",
    "unable to access index",
)
#: the marker a program prints when the repository lists no packages
NO_PACKAGES = "binderbox:no-packages"
#: the marker before the packages whose installed version is not the locked one
MISMATCH = "binderbox:mismatch"
#: packages that come with R itself (priority base): never installed from a repository
BASE_PACKAGES = frozenset(
    {
        *("R", "base", "compiler", "datasets", "graphics", "grDevices", "grid", "methods"),
        *("parallel", "splines", "stats", "stats4", "tcltk", "tools", "utils"),
    }
)


def r_string(text: str) -> str:
    """``text`` as an R string literal."""
    return json.dumps(text)  # JSON escapes are R escapes for these characters


def r_vector(items: Sequence[str]) -> str:
    return "c(" + ", ".join(map(r_string, items)) + ")"


def prelude(repository: str) -> str:
    """The start of every program: the repository, the library, failures as errors."""
    failures = r_string("|".join(FAILURES))
    return f"""\
options(repos = c(CRAN = {r_string(repository)}), Ncpus = 2L,
        install.packages.compile.from.source = "always")
.libPaths(c({r_string(R_LIBRARY)}, .libPaths()))
globalCallingHandlers(warning = function(w) {{
  if (grepl({failures}, conditionMessage(w))) stop(conditionMessage(w), call. = FALSE)
}})
"""


def setup_program(kernel: dict[str, Any]) -> str:
    """Make the library and write IRkernel's spec (inside the sandbox: the host never
    writes into a tree build code had)."""
    folder = f"{ENV_PREFIX}/share/jupyter/kernels/ir"
    return f"""\
dir.create({r_string(R_LIBRARY)}, recursive = TRUE, showWarnings = FALSE)
dir.create({r_string(folder)}, recursive = TRUE, showWarnings = FALSE)
writeLines({r_string(json.dumps(kernel, indent=1))}, {r_string(folder + "/kernel.json")})
"""


def check_program(repository: str) -> str:
    """Fails with :data:`NO_PACKAGES` when ``repository`` lists no package."""
    return (
        prelude(repository)
        + f"""\
found <- tryCatch(nrow(suppressWarnings(available.packages())), error = function(e) 0L)
if (found == 0L) {{ cat({r_string(NO_PACKAGES)}, "\\n"); quit(status = 3L) }}
cat("The repository lists", found, "packages\\n")
"""
    )


_DEPENDENCY = re.compile(r"^\s*([A-Za-z][A-Za-z0-9.]*)")


def description_dependencies(text: str) -> list[str]:
    """The packages a ``DESCRIPTION`` depends on (Depends, Imports, LinkingTo), in order,
    without R itself and its base packages."""
    fields: dict[str, str] = {}
    name = ""
    for line in text.splitlines():
        if line[:1].isspace() and name:
            fields[name] += " " + line.strip()
        elif ":" in line:
            name, _, value = line.partition(":")
            name = name.strip()
            fields[name] = value.strip()
    found: list[str] = []
    for field in ("Depends", "Imports", "LinkingTo"):
        for item in fields.get(field, "").split(","):
            match = _DEPENDENCY.match(item)
            if match and match[1] not in BASE_PACKAGES and match[1] not in found:
                found.append(match[1])
    return found


def packages_program(repository: str, base: dict[str, Any]) -> str | None:
    """The program installing a ``renv.lock`` or a ``DESCRIPTION``'s dependencies and
    the package itself (from the home: the repository); None: nothing to install."""
    if base.get("renv"):
        return prelude(repository) + _renv(json.loads(base["renv"]))
    if base.get("description") is not None:
        deps = description_dependencies(base["description"])
        install = f"install.packages({r_vector(deps)})\n" if deps else ""
        return (
            prelude(repository)
            + install
            + ('install.packages(".", repos = NULL, type = "source")\n')
        )
    return None


def _renv(lock: dict[str, Any]) -> str:
    """Each locked package at its version -- from the repository when it is the current
    one there, else from its archive -- installed in dependency order (read from the
    packages themselves), then every version checked."""
    packages = {
        name: str(record["Version"])
        for name, record in sorted(lock.get("Packages", {}).items())
        if name not in BASE_PACKAGES
    }
    names, versions = r_vector(list(packages)), r_vector(list(packages.values()))
    return f"""\
wanted <- setNames({versions}, {names})
have <- available.packages()[, "Version"]
current <- names(wanted)[!is.na(have[names(wanted)]) & have[names(wanted)] == wanted]
old <- setdiff(names(wanted), current)
repo <- getOption("repos")[["CRAN"]]
dir <- file.path(tempdir(), "locked"); dir.create(dir)
files <- setNames(file.path(dir, sprintf("%s_%s.tar.gz", names(wanted), wanted)), names(wanted))
if (length(current)) {{  # a file:// repository's own files are not copied
  got <- download.packages(current, dir, type = "source", quiet = TRUE)
  files[got[, 1]] <- got[, 2]
}}
for (p in old) tryCatch(download.file(sprintf("%s/src/contrib/Archive/%s/%s_%s.tar.gz",
  repo, p, p, wanted[[p]]), files[[p]], quiet = TRUE), error = function(e) stop(sprintf(
  "renv.lock: %s %s is neither in the repository nor in its archive", p, wanted[[p]]),
  call. = FALSE))
needs <- lapply(names(wanted), function(p) {{
  untar(files[[p]], files = paste0(p, "/DESCRIPTION"), exdir = dir)
  d <- read.dcf(file.path(dir, p, "DESCRIPTION"), fields = c("Depends", "Imports", "LinkingTo"))
  deps <- unlist(lapply(d[!is.na(d)], function(x) names(tools:::.split_dependencies(x))))
  intersect(deps, names(wanted))
}})
names(needs) <- names(wanted)
left <- names(wanted)
while (length(left)) {{
  ready <- left[vapply(left, function(p) !length(intersect(needs[[p]], left)), TRUE)]
  if (!length(ready)) stop("renv.lock: the packages depend on each other in a cycle: ",
    paste(left, collapse = ", "), call. = FALSE)
  install.packages(files[ready], repos = NULL, type = "source", dependencies = FALSE)
  left <- setdiff(left, ready)
}}
got <- vapply(names(wanted), function(p) tryCatch(as.character(packageVersion(p)),
  error = function(e) "none"), "")
bad <- names(wanted)[got != wanted]
if (length(bad)) {{
  cat({r_string(MISMATCH)}, paste0(bad, " ", got[bad], " (locked: ", wanted[bad], ")"), "\\n")
  quit(status = 4L)
}}
cat("Installed", length(wanted), "packages at their locked versions\\n")
"""


def kernel_spec(r_home: str, extra_env: dict[str, str]) -> dict[str, Any]:
    """IRkernel's ``kernel.json``: R with the environment's library first."""
    return {
        "argv": [
            f"{r_home}/bin/R",
            "--no-echo",
            "--no-save",
            "--no-restore",
            "-e",
            "IRkernel::main()",
            "--args",
            "{connection_file}",
        ],
        "display_name": "R",
        "language": "R",
        "env": {"R_LIBS_USER": R_LIBRARY, **extra_env},
    }
