"""The uv builder: real uv installs from PyPI inside real bubblewrap sandboxes.

One full environment (the Jupyter set, a setup.py package, pins, postBuild)
is built once per module and shared; the other builds install nothing or
one small package.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import jupyterhub
import pytest
from testcache import CACHE as TEST_CACHE

from binderbox.builders import apply_home_overlay, run_in_env
from binderbox.builders.bytecode import BytecodeCache
from binderbox.builders.interpreters import Interpreter
from binderbox.builders.python import PythonBuilder, requirement_name
from binderbox.environments import EnvSpec
from binderbox.errors import (
    BuildError,
    PostBuildFailed,
    PythonVersionUnavailable,
    RequirementsUnsatisfiable,
)

pytestmark = pytest.mark.slow
CACHE = TEST_CACHE / "uv-builder"
MARK = uuid.uuid4().hex[:12]

POSTBUILD = f"""#!/bin/bash
set -e
echo "postBuild running as $(id -u) in $PWD with $NB_PYTHON_PREFIX"
mkdir -p "$NB_PYTHON_PREFIX/share/x"
echo from-postbuild > "$NB_PYTHON_PREFIX/share/x/marker"
echo home-change > "$HOME/from-postbuild.txt"
rm notes-to-delete.txt
for target in /root/escape-{MARK} /root/.pyenv/versions/3.10.13/escape-{MARK} \\
    "$ESCAPE_SIBLING" /usr/escape-{MARK}; do
  if ( echo x > "$target" ) 2>/dev/null; then echo "wrote $target"; else echo "refused $target"; fi
done
"""

SETUP_PY = """from setuptools import setup
setup(name="demo-pkg", version="0.3", packages=["demo_pkg"])
"""


def build(builder: PythonBuilder, spec: EnvSpec, content: Path | None, prefix: Path) -> list[str]:
    """Run a build to the end (or its error), then its finish (bytecode); the log lines."""

    async def go() -> list[str]:
        lines = [line async for line in builder.build(spec, content, prefix)]
        return [*lines, await builder.finish(prefix)]

    prefix.mkdir(parents=True, exist_ok=True)
    return asyncio.run(go())


def light_builder() -> PythonBuilder:
    """A builder that adds no session packages: small, fast builds."""
    return PythonBuilder(session_packages=[], jupyterhub_version="", cache_dir=str(CACHE))


def python_spec(**kwargs: object) -> EnvSpec:
    return EnvSpec(kind="python", **kwargs)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def full(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path, list[str]]]:
    """The full environment: (env path, the content it was built from, its log)."""
    root = tmp_path_factory.mktemp("full")
    content = root / "content"
    (content / "demo_pkg").mkdir(parents=True)
    (content / "demo_pkg" / "__init__.py").write_text("VALUE = 42\n")
    (content / "setup.py").write_text(SETUP_PY)
    (content / "notes-to-delete.txt").write_text("x\n")
    (content / "postBuild").write_text(POSTBUILD.replace("$ESCAPE_SIBLING", str(root / "sibling")))
    (content / "postBuild").chmod(0o644)  # not executable: the builder makes it so
    pristine = root / "pristine"
    shutil.copytree(content, pristine)
    spec = python_spec(
        python="3.10",
        requirements=("six==1.16.0", "packaging==23.2", "jupyterlab==3.6.3"),
        install_repo=True,
        postbuild="postBuild",
        postbuild_text=POSTBUILD,
        content_digest="d1",
    )
    builder = PythonBuilder(cache_dir=str(CACHE))
    log = build(builder, spec, content, root / "env")
    yield root / "env", pristine, log


def test_full_environment_runs_jupyter(full: tuple[Path, Path, list[str]]) -> None:
    env, _, _ = full
    lab = run_in_env(env, ["jupyter-lab", "--version"])
    assert lab.returncode == 0, lab.stderr
    assert lab.stdout.strip() == "3.6.3"  # the user's pin won, resolved with the rest
    notebook = run_in_env(env, ["python", "-c", "import notebook; print(notebook.__version__)"])
    assert notebook.stdout.startswith("6."), notebook.stderr  # notebook 7 needs lab 4
    single = run_in_env(env, ["jupyterhub-singleuser", "--version"])
    assert single.returncode == 0, single.stderr
    assert single.stdout.strip() == jupyterhub.__version__


def test_python_version_and_pins(full: tuple[Path, Path, list[str]]) -> None:
    env, _, _ = full
    code = (
        "import sys, six, packaging, demo_pkg; "
        "print(sys.version_info[:2], six.__version__, packaging.__version__, demo_pkg.VALUE)"
    )
    result = run_in_env(env, ["python", "-c", code])
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[0] == "(3, 10) 1.16.0 23.2 42"
    info = json.loads((env / ".binderbox" / "build.json").read_text())
    assert info["interpreter"].startswith("cpython-3.10.")


def test_bytecode_is_compiled(full: tuple[Path, Path, list[str]]) -> None:
    env, _, _ = full
    site = next((env / "lib").glob("python3.10/site-packages"))
    assert list((site / "__pycache__").glob("six.cpython-310.pyc"))
    assert list((site / "packaging" / "__pycache__").glob("*.cpython-310.pyc"))
    assert list((site / "demo_pkg" / "__pycache__").glob("*.cpython-310.pyc"))


IRI_CHECK = """
import lark
built = []
real_init = lark.Lark.__init__
def counting_init(self, *args, **kwargs):
    built.append(1)
    real_init(self, *args, **kwargs)
lark.Lark.__init__ = counting_init
import jupyter_server.serverapp, jsonschema, inspect
import rfc3987_syntax.syntax_helpers as helpers
print("at start", len(built))
check = jsonschema.Draft7Validator.FORMAT_CHECKER
print(check.conforms("https://example.org/caf\u00e9", "iri"), check.conforms("no iri", "iri"))
print("after use", len(built), "source" if inspect.getsource(helpers) else "")
"""


def test_server_start_defers_the_iri_parser_and_iri_checks_still_work(
    full: tuple[Path, Path, list[str]],
) -> None:
    env, _, _ = full
    result = run_in_env(env, ["python", "-c", IRI_CHECK])
    assert result.returncode == 0, result.stderr
    # importing the server built no parser; validating an IRI built it, once
    assert result.stdout.split("\n")[:3] == ["at start 0", "True False", "after use 1 source"]


def test_postbuild_effects_reach_sessions(full: tuple[Path, Path, list[str]]) -> None:
    env, pristine, log = full
    assert "postBuild running as 1000 in /home/jovyan with /srv/env" in log
    assert (env / "share" / "x" / "marker").read_text() == "from-postbuild\n"
    # a session starts from a fresh copy of the content plus postBuild's home changes
    home = pristine.parent / "session-home"
    shutil.copytree(pristine, home)
    apply_home_overlay(env, home)
    assert (home / "from-postbuild.txt").read_text() == "home-change\n"
    assert not (home / "notes-to-delete.txt").exists()
    seen = run_in_env(env, ["cat", "from-postbuild.txt", "/srv/env/share/x/marker"], content=home)
    assert seen.stdout == "home-change\nfrom-postbuild\n"


def test_postbuild_cannot_write_outside_its_places(full: tuple[Path, Path, list[str]]) -> None:
    env, pristine, log = full
    assert (
        f"refused /root/.pyenv/versions/3.10.13/escape-{MARK}" in log
    )  # the interpreter is read-only
    assert f"refused /usr/escape-{MARK}" in log
    for host in (
        Path(f"/root/escape-{MARK}"),
        Path(f"/root/.pyenv/versions/3.10.13/escape-{MARK}"),
        pristine.parent / "sibling",
        Path(f"/usr/escape-{MARK}"),
    ):
        assert not host.exists(), host
    # and the published environment is read-only in a session
    attempt = run_in_env(env, ["touch", "/srv/env/new-file"])
    assert attempt.returncode != 0
    assert not (env / "new-file").exists()


def test_user_pins_win_over_session_packages() -> None:
    builder = PythonBuilder(jupyterhub_version="6.1.1", jupyterhub_requires_python=">=3.10")
    new = Interpreter(Path("/x"), "cpython", "3.10.13", "linux-x86_64", Path("/"), Path("/"))
    old = Interpreter(Path("/x"), "cpython", "3.8.18", "linux-x86_64", Path("/"), Path("/"))
    spec = python_spec(requirements=("JupyterLab==3.6.3", "numpy"), install_repo=True)
    lines = [x for x in builder.requirement_lines(spec, new) if not x.startswith("#")]
    assert lines == [
        "JupyterLab==3.6.3",
        "numpy",
        "notebook",
        "ipykernel<7",
        "jupyter-server",
        "jupyterhub==6.1.1",
        "pip",  # what `uv venv --seed` adds, resolved with the rest
        "setuptools",
        "wheel",
        ".",
    ]
    assert "jupyterhub" in builder.requirement_lines(spec, old)  # unpinned for 3.8
    newer_kernel = python_spec(requirements=("IPyKernel>=7",))
    assert "ipykernel<7" not in builder.requirement_lines(newer_kernel, new)  # theirs wins
    newest = Interpreter(Path("/x"), "cpython", "3.12.1", "linux-x86_64", Path("/"), Path("/"))
    old_tools = python_spec(requirements=("setuptools<60",))
    seeds = {"pip", "setuptools", "wheel", "setuptools<60"}
    assert [x for x in builder.requirement_lines(old_tools, new) if x in seeds] == [
        "setuptools<60",  # the user's line decides
        "pip",
        "wheel",
    ]
    assert [x for x in builder.requirement_lines(spec, newest) if x in seeds] == ["pip"]
    pinned = python_spec(requirements=("jupyterhub==5.2.1",))
    assert [x for x in builder.requirement_lines(pinned, new) if "jupyterhub" in x] == [
        "jupyterhub==5.2.1"
    ]
    assert requirement_name("-e git+https://x/y.git#egg=Jupyter_Server") == "jupyter-server"
    assert requirement_name("-e .") is None


def test_unknown_python_version_names_the_available_ones() -> None:
    builder = light_builder()
    for version in ("3.5", "3.99", "2.7"):
        with pytest.raises(PythonVersionUnavailable) as info:
            builder.interpreter(python_spec(python=version))
        assert info.value.message == f"Python {version} is not available on this server."
        assert "3.10" in info.value.hint and "3.6" in info.value.hint
        assert "2.7" not in info.value.hint  # pyenv has it, older than min_python


def test_runtime_python_3_12(tmp_path: Path) -> None:
    env = tmp_path / "env"
    build(light_builder(), python_spec(python="3.12", requirements=("idna==3.4",)), None, env)
    result = run_in_env(env, ["python", "-c", "import sys, idna; print(sys.version_info[:2])"])
    assert result.stdout.strip() == "(3, 12)", result.stderr


def test_nonexistent_package_is_named(tmp_path: Path) -> None:
    name = f"binderbox-no-such-package-{MARK}"
    spec = python_spec(requirements=("six==1.16.0", name))
    with pytest.raises(RequirementsUnsatisfiable) as info:
        build(light_builder(), spec, None, tmp_path / "env")
    assert name in info.value.message
    assert "\n" not in info.value.message


def test_source_build_retry_keeps_binderboxs_own_files(tmp_path: Path) -> None:
    env = tmp_path / "env"
    log = build(light_builder(), python_spec(requirements=("docopt==0.6.2",)), None, env)
    assert any("built from source" in line for line in log)  # docopt has no wheel
    assert (env / "share/jupyter/lab/settings/overrides.json").is_file()
    code = "import docopt, sys; print('_binderbox_startup' in sys.modules)"
    result = run_in_env(env, ["python", "-c", code])
    assert result.stdout.strip() == "True", result.stderr


def test_package_that_fails_to_build_is_named(tmp_path: Path) -> None:
    content = tmp_path / "content"
    content.mkdir()
    (content / "setup.py").write_text(
        "import sys\nfrom setuptools import setup\n"
        "if 'bdist_wheel' in sys.argv:\n    raise SystemExit('compiler exploded')\n"
        "setup(name='broken-thing', version='1.0', py_modules=[])\n"
    )
    spec = python_spec(install_repo=True, content_digest="d")
    with pytest.raises(BuildError) as info:
        build(light_builder(), spec, content, tmp_path / "env")
    assert "broken-thing" in info.value.message or "broken_thing" in info.value.message
    assert "compiler exploded" in info.value.log_message


def test_failing_postbuild_reports_its_output(tmp_path: Path) -> None:
    content = tmp_path / "content"
    content.mkdir()
    script = "echo preparing data\necho 'fatal: dataset missing' >&2\nexit 3\n"  # no shebang
    (content / "postBuild").write_text(script)
    spec = python_spec(postbuild="postBuild", postbuild_text=script, content_digest="d")
    with pytest.raises(PostBuildFailed) as info:
        build(light_builder(), spec, content, tmp_path / "env")
    assert "exit status 3" in info.value.message
    assert "fatal: dataset missing" in info.value.message
    assert "preparing data" in info.value.log_message


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker.encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
    return found


async def test_cancelling_a_build_kills_its_processes(tmp_path: Path) -> None:
    marker = f"binderbox-sleeper-{uuid.uuid4().hex}"
    content = tmp_path / "content"
    content.mkdir()
    (content / "setup.py").write_text(
        "import subprocess, sys\n"
        f"subprocess.run([sys.executable, '-c', 'import time; time.sleep(900)', '{marker}'])\n"
        "from setuptools import setup\nsetup(name='slow', version='1', py_modules=[])\n"
    )
    (tmp_path / "env").mkdir()
    spec = python_spec(install_repo=True, content_digest="d")
    builder = light_builder()

    async def consume() -> None:
        async for _ in builder.build(spec, content, tmp_path / "env"):
            pass

    task = asyncio.create_task(consume())
    for _ in range(600):  # the sleeper starts once uv runs setup.py
        if _processes_with(marker) or task.done():
            break
        await asyncio.sleep(0.2)
    assert _processes_with(marker), "the build never reached setup.py"
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=60)  # a build that ignores cancel hangs here
    assert task in done and task.cancelled()
    for _ in range(100):
        if not _processes_with(marker):
            break
        await asyncio.sleep(0.1)
    assert _processes_with(marker) == []
    pgrep = await asyncio.create_subprocess_exec("pgrep", "-f", marker, stdout=subprocess.PIPE)
    leftovers, _ = await pgrep.communicate()
    assert leftovers == b""


async def test_closing_the_log_stream_kills_postbuild(tmp_path: Path) -> None:
    marker = f"binderbox-sleeper-{uuid.uuid4().hex}"
    content = tmp_path / "content"
    content.mkdir()
    script = f"#!/bin/bash\necho started\nexec python -c 'import time; time.sleep(900)' {marker}\n"
    (content / "postBuild").write_text(script)
    (tmp_path / "env").mkdir()
    spec = python_spec(postbuild="postBuild", postbuild_text=script, content_digest="d")
    lines = light_builder().build(spec, content, tmp_path / "env")
    async for line in lines:
        if line == "started":
            break
    for _ in range(100):
        if _processes_with(marker):
            break
        await asyncio.sleep(0.1)
    assert _processes_with(marker)
    await asyncio.wait_for(lines.aclose(), timeout=60)
    for _ in range(100):
        if not _processes_with(marker):
            break
        await asyncio.sleep(0.1)
    assert _processes_with(marker) == []


# uv 0.13's own words (captured from real runs), and the older box-drawing style
UV_OUTPUT = {
    "conflict": (
        "error: No solution found when resolving dependencies\n"
        "  cause: Because you require six==1.16.0 and six<1.10, we can conclude that your"
        " requirements are unsatisfiable.",
        RequirementsUnsatisfiable,
        "The requirements cannot be satisfied together: Because you require six==1.16.0 and"
        " six<1.10, we can conclude that your requirements are unsatisfiable.",
    ),
    "no-version": (
        "error: No solution found when resolving dependencies\n"
        "  cause: Because there is no version of six==99 and you require six==99, we can"
        " conclude that your requirements are unsatisfiable.",
        RequirementsUnsatisfiable,
        "No version matching six==99 is available on the package index.",
    ),
    "old-style": (
        "  \u00d7 No solution found when resolving dependencies:\n"
        "  \u2570\u2500\u25b6 Because foo-bar-baz was not found in the package registry and you"
        " require foo-bar-baz, we can conclude that your requirements are unsatisfiable.",
        RequirementsUnsatisfiable,
        "No package named foo-bar-baz was found on the package index.",
    ),
    "parse": (
        "error: Couldn't parse requirement in `requirements.txt` at position 0\n"
        '  cause: no such comparison operator "=>", must be one of ~= == != <= >= < > ===\n'
        "         six=>1",
        RequirementsUnsatisfiable,
        'A requirement cannot be parsed: no such comparison operator "=>", must be one of'
        " ~= == != <= >= < > ===",
    ),
}


@pytest.mark.parametrize("case", sorted(UV_OUTPUT))
def test_uv_errors_become_plain_messages(case: str) -> None:
    from binderbox.builders.uvlog import classify

    output, kind, message = UV_OUTPUT[case]
    error = classify(output.splitlines())
    assert type(error) is kind
    assert error.message == message
    assert error.hint


def test_postbuild_symlink_out_of_the_repository_is_refused(tmp_path: Path) -> None:
    outside = tmp_path / "host-file"
    outside.write_text("#!/bin/sh\necho should-not-run\n")
    outside.chmod(0o644)
    content = tmp_path / "content"
    content.mkdir()
    (content / "postBuild").symlink_to(outside)
    spec = python_spec(postbuild="postBuild", postbuild_text="x", content_digest="d")
    with pytest.raises(BuildError, match="postBuild"):
        build(light_builder(), spec, content, tmp_path / "env")
    assert outside.stat().st_mode & 0o777 == 0o644


# -- the package cache: shared and hard-linked only while no repository code runs


def site_file(env: Path, name: str) -> Path:
    return next((env / "lib").glob(f"python3.*/site-packages/{name}"))


def test_wheel_only_environment_is_hard_linked_from_the_cache(tmp_path: Path) -> None:
    spec = python_spec(python="3.11", requirements=("six==1.16.0",))
    env = tmp_path / "env"
    build(light_builder(), spec, None, env)
    assert site_file(env, "six.py").stat().st_nlink > 1  # shares the cache's file
    pip = (env / "bin" / "pip").read_text().splitlines()[0]
    assert pip == "#!/srv/env/bin/python"  # scripts name the sandbox path, not the host's
    result = run_in_env(env, ["pip", "--version"])
    assert result.returncode == 0, result.stderr


def test_postbuild_environment_gets_copies(tmp_path: Path) -> None:
    content = tmp_path / "content"
    content.mkdir()
    (content / "postBuild").write_text("#!/bin/sh\necho changed >> $NB_PYTHON_PREFIX/x\n")
    spec = python_spec(
        python="3.11",
        requirements=("six==1.16.0",),
        postbuild="postBuild",
        postbuild_text="x",
        content_digest="d",
    )
    env = tmp_path / "env"
    build(light_builder(), spec, content, env)
    # postBuild could write to a hard-linked file and so change the cache
    assert site_file(env, "six.py").stat().st_nlink == 1


def test_source_builds_never_see_the_shared_cache(tmp_path: Path) -> None:
    content = tmp_path / "content"
    (content / "spy").mkdir(parents=True)
    (content / "spy" / "__init__.py").write_text("")
    (content / "setup.py").write_text(
        "import os, pathlib\n"
        "cache = pathlib.Path(os.environ['UV_CACHE_DIR'])\n"
        f"(cache / 'planted-{MARK}').write_text('x')\n"
        "from setuptools import setup\n"
        "setup(name='spy', version='1', packages=['spy'])\n"
    )
    spec = python_spec(
        python="3.11", requirements=("six==1.16.0",), install_repo=True, content_digest="d"
    )
    env = tmp_path / "env"
    log = build(light_builder(), spec, content, env)
    assert any("private cache" in line for line in log)
    assert not list(CACHE.glob(f"planted-{MARK}")), "setup.py wrote into the shared cache"
    result = run_in_env(env, ["python", "-c", "import six, spy; print('ok')"], content=content)
    assert result.stdout.strip() == "ok", result.stderr
    assert site_file(env, "six.py").stat().st_nlink == 1


def test_cache_over_budget_is_emptied_and_environments_keep_working(tmp_path: Path) -> None:
    builder = PythonBuilder(
        session_packages=[], jupyterhub_version="", cache_dir=str(tmp_path / "uv-cache")
    )
    env = tmp_path / "env"
    build(builder, python_spec(python="3.11", requirements=("six==1.16.0",)), None, env)
    assert list((tmp_path / "uv-cache").iterdir())
    builder.cache_budget = 10**12
    builder.gc()
    assert list((tmp_path / "uv-cache").glob("wheels*")), "under budget: kept"
    builder.cache_budget = 1
    builder.gc()
    assert not list((tmp_path / "uv-cache").glob("wheels*")), "over budget: emptied"
    result = run_in_env(env, ["python", "-c", "import six; print(six.__version__)"])
    assert result.stdout.strip() == "1.16.0", result.stderr


# -- build code cannot make the host write, delete or read outside the environment

PLANTING_POSTBUILD = """#!/bin/bash
set -e
site=$(echo $NB_PYTHON_PREFIX/lib/python3.*/site-packages)
ln -s {victim} "$NB_PYTHON_PREFIX/.binderbox/home-overlay"
echo '["../victim.txt"]' > "$NB_PYTHON_PREFIX/.binderbox/home-deleted.json"
mkfifo "$site/trap.py"
rm -rf "$site/__pycache__"
ln -s {victim} "$site/__pycache__"
echo new > made-by-postbuild.txt
"""


@pytest.mark.timeout(180)
def test_links_planted_by_build_code_are_not_followed_by_the_host(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    content = tmp_path / "content"
    content.mkdir()
    script = PLANTING_POSTBUILD.format(victim=victim)
    (content / "postBuild").write_text(script)
    spec = python_spec(
        python="3.11",
        requirements=("six==1.16.0",),
        postbuild="postBuild",
        postbuild_text=script,
        content_digest="d",
    )
    env = tmp_path / "env"
    build(light_builder(), spec, content, env)  # a FIFO named *.py would block it
    assert list(victim.iterdir()) == [], "the host wrote through a planted link"
    overlay = env / ".binderbox" / "home-overlay"
    assert overlay.is_dir() and not overlay.is_symlink()
    assert (overlay / "made-by-postbuild.txt").read_text() == "new\n"


def test_home_overlay_stays_inside_the_home(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("host file")
    (tmp_path / "victim.txt").write_text("host file")
    env = tmp_path / "env"
    meta = env / ".binderbox"
    (meta / "home-overlay" / "linked").mkdir(parents=True)
    (meta / "home-overlay" / "linked" / "planted.txt").write_text("x")
    (meta / "home-overlay" / "fine.txt").write_text("ok")
    forged = ["../victim.txt", str(tmp_path / "victim.txt"), "linked/keep.txt"]
    (meta / "home-deleted.json").write_text(json.dumps(forged))
    home = tmp_path / "home"
    home.mkdir()
    (home / "linked").symlink_to(outside)  # a link in the repository (another commit)
    apply_home_overlay(env, home)
    assert (tmp_path / "victim.txt").exists()
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]
    assert (home / "fine.txt").read_text() == "ok"


def test_bytecode_gc_keeps_what_environments_use(tmp_path: Path) -> None:
    builder = PythonBuilder(
        session_packages=[], jupyterhub_version="", cache_dir=str(tmp_path / "uv-cache")
    )
    env = tmp_path / "env"
    build(builder, python_spec(python="3.11", requirements=("six==1.16.0",)), None, env)
    compiled = tmp_path / "bytecode" / "cpython-311"
    assert list(compiled.glob("*/*.pyc"))
    stale, fresh = tmp_path / "bytecode" / "tmp" / "stale", tmp_path / "bytecode" / "tmp" / "new"
    for workdir in (stale, fresh):  # left by compiles that were killed
        workdir.mkdir(parents=True)
    os.utime(stale, (time.time() - 2 * 86400,) * 2)
    builder.gc()
    assert list(compiled.glob("*/*.pyc")), "the environment links them: kept"
    assert not stale.exists() and fresh.exists()
    shutil.rmtree(env)
    builder.gc()
    assert not list(compiled.glob("*/*.pyc")), "no environment uses them any more"


def test_what_a_server_imports_is_compiled_and_linked_first(tmp_path: Path) -> None:
    site = tmp_path / "env" / "lib" / "python3.11" / "site-packages"
    files = ["aaa/__init__.py", "jupyter_server/serverapp.py", "tornado/web.py", "zz/tests/t.py"]
    for rel in files:
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        (site / rel).write_text("x = 1\n")
    cache = BytecodeCache(tmp_path / "bytecode", "cpython-311")
    plan = cache.plan(tmp_path / "env")
    order = [job[1].split("site-packages/")[1] for job in plan.jobs]
    # the server's modules first, in its import order; then the rest; tests last
    assert order[:2] == ["tornado/web.py", "jupyter_server/serverapp.py"]
    assert order[2:] == ["aaa/__init__.py", "zz/tests/t.py"]
    (first, all_cores), (rest, fewer) = cache.batches(plan)
    assert len(first.jobs) == 2 and len(rest.jobs) == 2
    assert all_cores == (os.cpu_count() or 1) and fewer == max(1, all_cores - 1)
    # with no session to make room for (binderbox build), the rest gets every core too
    assert [workers for _, workers in cache.batches(plan, spare=0)] == [all_cores] * 2


def test_the_server_kernelspec_never_writes_into_a_hard_linked_file(tmp_path: Path) -> None:
    """The server environment's kernel.json, installed by ipykernel as a hard link into
    the shared package cache, is replaced, not written through: the cache and every
    environment linked to it keep their own (it once lost its debugger metadata and got
    another Python's name in every later build)."""
    from binderbox.builders import server_env

    cached = tmp_path / "cache" / "kernel.json"
    cached.parent.mkdir()
    cached.write_text('{"display_name": "Python 3 (ipykernel)", "metadata": {"debugger": true}}')
    prefix = tmp_path / "env"
    folder = prefix / "server" / "share" / "jupyter" / "kernels" / "python3"
    folder.mkdir(parents=True)
    os.link(cached, folder / "kernel.json")  # as uv's hardlink mode installs it
    old = Interpreter(Path("/x"), "cpython", "3.7.17", "linux-x86_64", Path("/"), Path("/"))
    server_env.write_kernelspec(prefix, old)
    assert json.loads((folder / "kernel.json").read_text())["display_name"] == "Python 3.7"
    assert json.loads(cached.read_text())["display_name"] == "Python 3 (ipykernel)"
    assert [p.name for p in folder.iterdir()] == ["kernel.json"]
