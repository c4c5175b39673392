"""Old Pythons (3.6, 3.7): real pyenv interpreters, real uv, real bubblewrap, a real hub.

The kernel runs in the repository's old Python and the Jupyter server beside it
(binderbox/builders/server_env.py); old releases uv refuses to read get the
shipped metadata (binderbox/builders/dependency_metadata.toml).  The Pipfile.lock
in tests/data/pipenv-2019 was resolved as of May 2019 for Python 3.7 (pandas
0.24.2, numpy 1.16.3, ipykernel 5.1.0, tornado 6.0.2...), with its hashes.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import jupyterhub
import pytest
from envs import built_spec
from kernels import run_code
from session_helpers import fetch, launch, launcher_for, resolved, running_hub
from testcache import CACHE as TEST_CACHE
from traitlets import TraitError

from binderbox.builders import run_in_env
from binderbox.builders.interpreters import Interpreter
from binderbox.builders.python import PythonBuilder
from binderbox.builders.uvconfig import config_text
from binderbox.environments import EnvSpec
from binderbox.environments.detect import detect
from binderbox.errors import UnsupportedEnvironment
from binderbox.sessions import SessionRequest

pytestmark = pytest.mark.slow
DATA = Path(__file__).parent / "data"
CACHE = TEST_CACHE / "uv"
KERNEL_CHECK = """
import sys, numpy, pandas
frame = pandas.DataFrame({"a": numpy.arange(4)})
print(sys.version_info[:2], pandas.__version__, numpy.__version__, int(frame["a"].sum()))
"""


def pipenv_2019(tmp_path: Path) -> tuple[Path, EnvSpec]:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(DATA / "pipenv-2019" / "Pipfile.lock", repo / "Pipfile.lock")
    (repo / "index.ipynb").write_text("{}")
    return repo, detect(repo)


def test_old_pythons_get_a_kernel_and_the_server_beside_it() -> None:
    builder = PythonBuilder(jupyterhub_version="6.1.1", jupyterhub_requires_python=">=3.10")
    old = Interpreter(Path("/x"), "cpython", "3.7.16", "linux-x86_64", Path("/"), Path("/"))
    spec = EnvSpec(requirements=("pandas==0.24.2",))
    assert [x for x in builder.requirement_lines(spec, old) if not x.startswith("#")] == [
        "pandas==0.24.2",
        "ipykernel",  # only the kernel: no jupyterlab, no old jupyterhub
        "pip",
        "setuptools",
        "wheel",
    ]
    server = builder.server_interpreter(old)
    assert server is not None and server.minor == builder.server_python
    assert "jupyterhub==6.1.1" in builder.server_lines(server)
    # the key covers both interpreters
    identity = builder.interpreter(EnvSpec(python="3.7"))
    assert identity.startswith("cpython-3.7.") and f"+server-{server.identity}" in identity
    assert "+server" not in builder.interpreter(EnvSpec(python="3.10"))


def test_the_shipped_metadata_and_an_operators_entry() -> None:
    text = config_text()
    assert 'name = "pandas"\nversion = "0.24.2"' in text and "pytz>=2011k" not in text
    mine = {"name": "pandas", "version": "0.24.2", "requires-dist": ["numpy>=1.12", "pytz"]}
    text = config_text([mine])
    assert text.count('version = "0.24.2"') == 1 and '"pytz"]' in text  # the operator's wins
    with pytest.raises(TraitError, match="requires-dist must be a list"):
        PythonBuilder(dependency_metadata=[{"name": "x", "requires-dist": "numpy"}])
    # an operator's entry changes what is built: it is part of the environment's key
    spec = EnvSpec(python="3.11")
    keys = {PythonBuilder(dependency_metadata=e).interpreter(spec) for e in ([], [mine])}
    assert len(keys) == 2


def test_python_2_is_refused_naming_the_file(tmp_path: Path) -> None:
    lock = json.loads((DATA / "pipenv-2019" / "Pipfile.lock").read_text())
    lock["_meta"]["requires"]["python_version"] = "2.7"
    (tmp_path / "binder").mkdir()
    (tmp_path / "binder" / "Pipfile.lock").write_text(json.dumps(lock))
    with pytest.raises(UnsupportedEnvironment) as info:
        detect(tmp_path)
    assert info.value.message == "binder/Pipfile.lock: Python 2.7 is not supported"
    assert "3.6 or newer" in info.value.hint


def test_python_36_kernel_runs_code_from_its_server(tmp_path: Path) -> None:
    # the server here is only jupyter-client: enough to start and talk to the kernel
    builder = PythonBuilder(
        session_packages=["jupyter-client"], jupyterhub_version="", cache_dir=str(CACHE)
    )
    spec = EnvSpec(python="3.6", requirements=("six==1.16.0",))
    env = built_spec(builder, spec, "py36-kernel")
    client = (
        "from jupyter_client.manager import start_new_kernel\n"
        "km, kc = start_new_kernel(kernel_name='python3')\n"
        "code = 'import sys, six; print(sys.version_info[:2], six.__version__)'\n"
        "show = lambda msg: print(msg['content'].get('text', ''), end='')\n"
        "kc.execute_interactive(code, output_hook=show)\n"
        "km.shutdown_kernel()\n"
    )
    result = run_in_env(env, ["/srv/env/server/bin/python", "-c", client])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(3, 6) 1.16.0"
    # python and pip in the environment are the old Python's
    python = run_in_env(env, ["python", "-c", "import sys; print(sys.version_info[:2])"])
    assert python.stdout.strip() == "(3, 6)"
    # its bytecode (timestamp pycs: 3.6 has no checked-hash ones) is used, read-only
    verbose = run_in_env(env, ["python", "-v", "-c", "import six"])
    assert "__pycache__/six.cpython-36.pyc matches" in verbose.stderr


async def test_a_2019_pipfile_lock_on_python_37_runs_in_a_session(tmp_path: Path) -> None:
    repo, spec = pipenv_2019(tmp_path)
    assert spec.python == "3.7"
    assert "pandas==0.24.2" in " ".join(spec.requirements)  # uv refuses its own metadata
    env = built_spec(PythonBuilder(cache_dir=str(CACHE)), spec, "pipenv-2019")
    installed = (env / ".binderbox" / "requirements.txt").read_text()
    assert "jupyterlab" not in installed  # the server is beside the kernel
    assert "jupyterlab" in (env / ".binderbox" / "server-requirements.txt").read_text()
    single = run_in_env(env, ["jupyterhub-singleuser", "--version"])
    assert single.stdout.strip() == jupyterhub.__version__, single.stderr  # the hub's own
    async with running_hub(tmp_path / "hub") as hub:
        request = SessionRequest(
            "env-py37", env, repo, resolved("pipenv-2019"), launch_host=hub.public_url
        )
        _, ready = await launch(launcher_for(hub), request)
        specs = await fetch(f"{ready.url}api/kernelspecs?token={ready.token}")
        body = json.loads(specs.body)
        assert body["default"] == "python3"
        assert body["kernelspecs"]["python3"]["spec"]["display_name"] == "Python 3.7"
        out = await run_code(ready.url, ready.token, KERNEL_CHECK)
    assert out.strip() == "(3, 7) 0.24.2 1.16.3 6"
