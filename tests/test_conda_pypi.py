"""The PyPI fallback for conda: a typical scientific environment.yml, mapped to PyPI and
built by the real uv builder (real uv, PyPI, bubblewrap); the mapping's rules."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from testcache import CACHE as TEST_CACHE

from binderbox.builders import run_in_env
from binderbox.builders.conda_pypi import NoPypiEquivalent, PypiCondaBuilder, parse, plan
from binderbox.environments import EnvSpec

CACHE = TEST_CACHE / "uv"
#: what binder-examples/conda and most scientific Binder repositories list
SCIENTIFIC = {
    "channels": ["conda-forge"],
    "dependencies": [
        "python=3.11",
        "numpy=2.1",
        "pandas>=2.1",
        "matplotlib",
        "scipy",
        "scikit-learn",
        "seaborn",
        "ipywidgets",
        "dask",
        "conda-forge::pyyaml",
        "pip",
    ],
}
CHECK = """
import matplotlib; matplotlib.use("Agg")
import sys, numpy, pandas, scipy.stats, sklearn.linear_model, seaborn, ipywidgets, yaml, altair
import dask.dataframe as dd, distributed
frame = pandas.DataFrame({"x": numpy.arange(10.0), "y": 2 * numpy.arange(10.0)})
fit = sklearn.linear_model.LinearRegression().fit(frame[["x"]], frame["y"])
lazy = dd.from_pandas(frame, npartitions=2).y.sum().compute()
print(sys.version_info[:2], numpy.__version__[:4], round(float(fit.coef_[0]), 3), lazy)
"""


def conda_spec(base: dict[str, object], pip: tuple[str, ...] = (), python: str = "3.10") -> EnvSpec:
    """A spec as the conda detector writes it (canonical base JSON, pip lines apart)."""
    text = json.dumps(base, sort_keys=True, separators=(",", ":"))
    return EnvSpec(kind="conda", base=text, python=python, requirements=pip)


def test_match_specs_become_pypi_specifiers() -> None:
    assert parse("numpy=1.21") == ("numpy", "==1.21.*", "")
    assert parse("numpy==1.21.5") == ("numpy", "==1.21.5", "")
    assert parse("numpy 1.21.*") == ("numpy", "==1.21.*", "")
    assert parse("numpy >=1.20,<2") == ("numpy", ">=1.20,<2", "")
    assert parse("numpy=1.21=py39h6c91a56_0") == ("numpy", "==1.21.*", "build py39h6c91a56_0")
    assert parse("conda-forge::SciPy") == ("scipy", "", "channel conda-forge")
    assert parse("numpy[version='>=1.2']") == ("numpy", ">=1.2", "")
    mapped = plan(
        conda_spec({"dependencies": ["dask=2023.1", "pytorch", "msgpack-python"]}).base or "",
        (),
        "3.10",
    )
    assert mapped.requirements == ("dask[complete]==2023.1.*", "torch", "msgpack")
    assert mapped.log[0] == "dask=2023.1 -> dask[complete]==2023.1.* (binderbox's override)"
    assert "(conda-pypi mapping)" in mapped.log[1]


def test_specs_without_a_pypi_equivalent_are_named() -> None:
    spec = conda_spec({"dependencies": ["numpy", "r-base=4.2", "nodejs", "pandas=1.2|1.3"]})
    with pytest.raises(NoPypiEquivalent) as info:
        plan(spec.base or "", (), "3.10", where="binder/environment.yml")
    message = info.value.message
    assert message.startswith("binder/environment.yml: no PyPI equivalent")
    assert "r-base=4.2" in message and "nodejs" in message and "pandas=1.2|1.3" in message
    assert "numpy" not in message and "\n" not in message


@pytest.mark.parametrize(
    ("python", "chosen"),
    [
        ("python<3.9", "3.8"),
        ("python>=3.11", "3.13"),
        ("python>=3.8,<3.10", "3.9"),
        ("python", "3.10"),
    ],
)
def test_python_is_one_that_satisfies_the_spec(python: str, chosen: str) -> None:
    mapped = plan(conda_spec({"dependencies": [python, "numpy"]}).base or "", (), "3.10")
    assert mapped.python == chosen


@pytest.mark.slow
def test_a_scientific_environment_yml_builds_from_pypi(tmp_path: Path) -> None:
    builder = PypiCondaBuilder(cache_dir=str(CACHE))
    spec = conda_spec(SCIENTIFIC, pip=("altair==5.3.0",))
    assert builder.interpreter(spec).startswith("cpython-3.11.")  # python=3.11 picks it
    env = tmp_path / "env"
    env.mkdir()

    async def go() -> list[str]:
        return [line async for line in builder.build(spec, None, env)]

    log = asyncio.run(go())
    assert "  numpy=2.1 -> numpy==2.1.* (same name)" in log
    assert "  dask -> dask[complete] (binderbox's override)" in log
    assert "  conda-forge::pyyaml -> pyyaml (same name; dropped channel conda-forge)" in log
    assert "  pip: altair==5.3.0" in log
    result = run_in_env(env, ["python", "-c", CHECK])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "(3, 11) 2.1. 2.0 90.0"
    lab = run_in_env(env, ["jupyter-lab", "--version"])  # and what a session needs
    assert lab.returncode == 0, lab.stderr


def test_the_key_follows_the_mapping() -> None:
    spec = conda_spec(SCIENTIFIC)
    plain = PypiCondaBuilder().interpreter(spec)
    mine = PypiCondaBuilder(pypi_names={"seaborn": "seaborn[stats]"}).interpreter(spec)
    assert plain.startswith("cpython-3.11.") and "+pypi-" in plain
    assert mine != plain  # the operator's names give another environment, another key
