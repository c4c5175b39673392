"""Environment detection: repository files -> EnvSpec, on real files in tmp dirs."""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pytest
from repos import commit, make_repo, write_files

from binderbox.environments import EnvSpec, detect
from binderbox.environments.digest import build_inputs, content_digest
from binderbox.errors import EnvironmentConfigError, UnsupportedEnvironment


def write(root: Path, files: Mapping[str, str], executable: tuple[str, ...] = ()) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    write_files(root, files, executable)
    return root


def key(spec: EnvSpec) -> str:
    return spec.key(interpreter="cpython-3.10.13", builder_version="1")


PYPROJECT = """\
[project]
name = "mypkg"
version = "0.1"
{extra}

[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"
"""

# ---------------------------------------------------------------- the shapes


def test_requirements_shape(tmp_path: Path) -> None:
    repo = write(
        tmp_path,
        {"requirements.txt": "numpy\nmatplotlib==3.8.0\n", "index.ipynb": "{}", "README.md": "x"},
    )
    spec = detect(repo)
    assert spec.kind == "python"
    assert spec.python == "3.10"
    assert spec.requirements == ("numpy", "matplotlib==3.8.0")
    assert not spec.install_repo
    assert spec.content_digest is None and not spec.needs_content
    assert spec.sources == ("requirements.txt",)
    assert spec.config_dir == ""


def test_default_environment(tmp_path: Path) -> None:
    repo = write(tmp_path, {"index.ipynb": "{}", "README.md": "hello"})
    spec = detect(repo, default_python="3.11")
    assert spec == EnvSpec(python="3.11")
    with pytest.raises(EnvironmentConfigError, match="No environment configuration"):
        detect(repo, allow_default=False)


def test_scripts_alone_are_not_configuration(tmp_path: Path) -> None:
    repo = write(tmp_path, {"postBuild": "echo hi\n"}, executable=("postBuild",))
    assert detect(repo).postbuild == "postBuild"
    with pytest.raises(EnvironmentConfigError):
        detect(repo, allow_default=False)


@pytest.mark.parametrize(
    ("runtime", "python"),
    [
        ("python-3.12", "3.12"),
        ("python-3.11.4\n", "3.11"),
        ("  python-3.9  \n", "3.9"),
        ("python-3", "3.10"),
    ],
)
def test_runtime_python(tmp_path: Path, runtime: str, python: str) -> None:
    repo = write(tmp_path, {"runtime.txt": runtime})
    spec = detect(repo, allow_default=False)
    assert spec.python == python
    assert spec.requirements == ()
    assert spec.sources == ("runtime.txt",)


def test_runtime_python3_means_the_default(tmp_path: Path) -> None:
    repo = write(tmp_path, {"runtime.txt": "python-3"})
    assert detect(repo, default_python="3.12").python == "3.12"


@pytest.mark.parametrize("runtime", ["python3.12", "python-x", "", "python-3.12-slim", "3.12"])
def test_runtime_malformed(tmp_path: Path, runtime: str) -> None:
    repo = write(tmp_path, {"runtime.txt": runtime, "requirements.txt": "numpy"})
    with pytest.raises(EnvironmentConfigError, match=r"^runtime\.txt: .* is not a Python version"):
        detect(repo)


def test_runtime_python2_unsupported(tmp_path: Path) -> None:
    repo = write(tmp_path, {"runtime.txt": "python-2.7"})
    with pytest.raises(UnsupportedEnvironment, match=r"runtime.txt: Python 2"):
        detect(repo)


def test_setup_py_shape(tmp_path: Path) -> None:
    repo = write(
        tmp_path,
        {"setup.py": "from setuptools import setup\nsetup(name='x')\n", "x/__init__.py": ""},
    )
    spec = detect(repo, allow_default=False)
    assert spec.install_repo
    assert spec.content_digest is not None and spec.needs_content
    assert spec.sources == ("setup.py",)


def test_pyproject_package(tmp_path: Path) -> None:
    repo = write(tmp_path, {"pyproject.toml": PYPROJECT.format(extra=""), "requirements.txt": "a"})
    spec = detect(repo)
    assert spec.install_repo and spec.needs_content
    assert spec.requirements == ("a",)
    assert spec.sources == ("requirements.txt", "pyproject.toml")


def test_pyproject_without_project_table_is_not_a_package(tmp_path: Path) -> None:
    repo = write(tmp_path, {"pyproject.toml": "[tool.black]\nline-length = 100\n"})
    spec = detect(repo)
    assert not spec.install_repo and spec.content_digest is None
    assert spec == EnvSpec()
    with pytest.raises(EnvironmentConfigError):
        detect(repo, allow_default=False)


def test_pyproject_invalid_toml(tmp_path: Path) -> None:
    repo = write(tmp_path, {"pyproject.toml": "[project\n"})
    with pytest.raises(EnvironmentConfigError, match=r"^pyproject\.toml: not valid TOML"):
        detect(repo)


def test_postbuild_and_start(tmp_path: Path) -> None:
    repo = write(
        tmp_path,
        {
            "requirements.txt": "jupyterlab-git\n",
            "postBuild": "#!/bin/bash\njupyter labextension list\n",
            "start": '#!/bin/bash\nexport X=1\nexec "$@"\n',
        },
        executable=("postBuild", "start"),
    )
    spec = detect(repo)
    assert spec.postbuild == "postBuild"
    assert spec.postbuild_text == "#!/bin/bash\njupyter labextension list\n"
    assert spec.start == "start"
    assert spec.needs_content
    assert spec.sources == ("requirements.txt", "postBuild", "start")


def test_start_alone_is_not_content_dependent(tmp_path: Path) -> None:
    repo = write(tmp_path, {"requirements.txt": "numpy", "start": 'exec "$@"\n'})
    spec = detect(repo)
    assert spec.start == "start" and spec.content_digest is None


# -------------------------------------------------------- where to look


def test_binder_folder_ignores_root_files(tmp_path: Path) -> None:
    repo = write(
        tmp_path,
        {
            "binder/requirements.txt": "pandas\n",
            "binder/runtime.txt": "python-3.11\n",
            "requirements.txt": "numpy\n",
            "runtime.txt": "python-3.9\n",
            "Dockerfile": "FROM scratch\n",
            "environment.yml": "dependencies: [python=3.8]\n",
            "setup.py": "",
            "pyproject.toml": PYPROJECT.format(extra=""),
            "DESCRIPTION": "Package: x\n",
            "postBuild": "echo root\n",
        },
    )
    spec = detect(repo)
    assert spec.config_dir == "binder"
    assert spec.python == "3.11"
    assert spec.requirements == ("pandas",)
    assert not spec.install_repo
    assert spec.postbuild is None and spec.content_digest is None
    assert spec.sources == ("binder/runtime.txt", "binder/requirements.txt")


@pytest.mark.parametrize("folder", ["binder", ".binder"])
def test_empty_binder_folder_gives_the_default(tmp_path: Path, folder: str) -> None:
    repo = write(tmp_path, {f"{folder}/postBuild": "echo hi\n", "requirements.txt": "numpy\n"})
    spec = detect(repo)
    assert spec.config_dir == folder
    assert spec.requirements == ()
    assert spec.postbuild == f"{folder}/postBuild"


def test_both_binder_folders_is_an_error(tmp_path: Path) -> None:
    repo = write(tmp_path, {"binder/requirements.txt": "a\n", ".binder/requirements.txt": "b\n"})
    with pytest.raises(EnvironmentConfigError, match=r"Both binder/ and .binder/"):
        detect(repo)


def test_binder_file_not_folder_is_ignored(tmp_path: Path) -> None:
    repo = write(tmp_path, {"binder": "not a folder", "requirements.txt": "numpy"})
    assert detect(repo).requirements == ("numpy",)


# -------------------------------------------------------- unsupported kinds


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"Dockerfile": "FROM x", "requirements.txt": "a", "Project.toml": ""}, "^Dockerfile: "),
        ({"Project.toml": "[deps]", "requirements.txt": "a"}, "^Project.toml: Julia"),
        ({"JuliaProject.toml": "[deps]"}, "^JuliaProject.toml: Julia"),
        ({"default.nix": "{}", "environment.yml": ""}, "^default.nix: Nix"),
    ],
)
def test_unsupported_kinds_name_their_file(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    repo = write(tmp_path, files)
    with pytest.raises(UnsupportedEnvironment, match=message) as info:
        detect(repo)
    assert "not supported" in info.value.message
    assert "\n" not in info.value.user_message


CONDA_YML = """\
name: ignored
channels: [conda-forge, bioconda]
dependencies:
  - python=3.9
  - numpy >=1.20
  - pip
  - pip:
      - requests==2.31.0   # a comment
      - -e ./pkg
"""


def conda_base(spec: EnvSpec) -> dict[str, object]:
    assert spec.base is not None
    base: dict[str, object] = json.loads(spec.base)
    return base


def test_environment_yml_is_conda(tmp_path: Path) -> None:
    repo = write(tmp_path, {"environment.yml": CONDA_YML, "pkg/setup.py": "", "Pipfile": ""})
    spec = detect(repo)
    assert spec.kind == "conda" and spec.python == "3.9"
    assert conda_base(spec) == {
        "channels": ["conda-forge", "bioconda"],
        "dependencies": ["python=3.9", "numpy >=1.20", "pip"],
    }
    assert spec.requirements == ("requests==2.31.0", "-e ./pkg")
    assert spec.content_digest is not None  # -e ./pkg needs the content
    plain = detect(write(tmp_path / "b", {"binder/environment.yaml": "dependencies: [libdemo]"}))
    assert plain.kind == "conda" and plain.python == "3.10" and plain.requirements == ()
    assert plain.sources == ("binder/environment.yaml",) and plain.content_digest is None


def test_lock_files_win_over_environment_yml(tmp_path: Path) -> None:
    manifest = '[workspace]\nchannels = ["conda-forge"]\n[dependencies]\npython = "3.12.*"\n'
    pixi = detect(write(tmp_path / "a", {"pixi.toml": manifest, "environment.yml": CONDA_YML}))
    assert pixi.kind == "pixi" and pixi.python == "3.12"
    assert conda_base(pixi) == {"manifest": manifest, "lock": None, "environment": "default"}
    files = {"pixi.toml": manifest, "pixi.lock": "version: 6\n", "conda-lock.yml": ""}
    locked = detect(write(tmp_path / "b", files))
    assert conda_base(locked)["lock"] == "version: 6\n"
    assert locked.sources == ("pixi.toml", "pixi.lock")
    lock = "version: 1\npackage:\n- {name: python, version: 3.11.7, manager: conda}\n"
    conda_lock = detect(write(tmp_path / "c", {"conda-lock.yml": lock, "environment.yml": ""}))
    assert conda_lock.kind == "conda-lock" and conda_lock.python == "3.11"
    assert conda_base(conda_lock) == {"lock": lock}


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"environment.yml": "a: [b"}, "^environment.yml: not valid YAML"),
        ({"environment.yml": "- a\n"}, "^environment.yml: not a conda environment"),
        ({"environment.yml": "dependencies: [{x: 1}]"}, "^environment.yml: a dependency"),
        ({"environment.yml": "channels: conda-forge"}, "^environment.yml: channels must be"),
        ({"pixi.toml": "[workspace]\n"}, "^pixi.toml: no channels"),
        ({"pixi.toml": "x = "}, "^pixi.toml: not valid TOML"),
        ({"conda-lock.yml": "version: 1\n"}, "^conda-lock.yml: not a conda-lock file"),
    ],
)
def test_bad_conda_files_name_themselves(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    with pytest.raises(EnvironmentConfigError, match=message) as info:
        detect(write(tmp_path, files))
    assert "\n" not in info.value.user_message


def r_base(spec: EnvSpec) -> dict[str, object]:
    assert spec.kind == "r" and spec.base is not None
    base: dict[str, object] = json.loads(spec.base)
    return base


@pytest.mark.parametrize(
    ("files", "version", "date"),
    [
        ({"runtime.txt": "r-4.3-2024-01-15\n", "requirements.txt": "a"}, "4.3", "2024-01-15"),
        ({"binder/runtime.txt": "r-2022-10-03", "binder/install.R": "x"}, None, "2022-10-03"),
        ({"runtime.txt": "r-4.1.2-2022-01-01", "environment.yml": ""}, "4.1", "2022-01-01"),
        ({"DESCRIPTION": "Package: x", "environment.yml": ""}, None, None),
    ],
)
def test_r_is_detected_before_conda_and_python(
    tmp_path: Path, files: dict[str, str], version: str | None, date: str | None
) -> None:
    spec = detect(write(tmp_path, files))
    base = r_base(spec)
    assert (base["r"], base["date"]) == (version, date)
    assert spec.requirements == (("a",) if "requirements.txt" in files else ())


def test_r_files_are_in_the_spec_and_a_description_needs_the_content(tmp_path: Path) -> None:
    files = {"DESCRIPTION": "Package: x\nImports: ggplot2\n", "install.R": "install.packages('y')"}
    spec = detect(write(tmp_path, files))
    base = r_base(spec)
    assert base["description"] == files["DESCRIPTION"] and base["install_r"] == files["install.R"]
    assert spec.needs_content and spec.sources == ("install.R", "DESCRIPTION")
    dated = {"binder/install.R": "install.packages('y')", "binder/runtime.txt": "r-2024-01-15"}
    only = detect(write(tmp_path / "b", dated))
    assert not only.needs_content  # install.R runs without the repository, as in repo2docker


@pytest.mark.parametrize(
    ("files", "kind"),
    [
        ({"install.R": "x", "requirements.txt": "a"}, "python"),
        ({"install.R": "x", "runtime.txt": "python-3.11"}, "python"),
        ({"install.R": "x"}, "python"),
    ],
)
def test_install_r_alone_does_not_ask_for_r(
    tmp_path: Path, files: dict[str, str], kind: str
) -> None:
    """repo2docker reads install.R only in an R environment."""
    spec = detect(write(tmp_path, files))
    assert spec.kind == kind and spec.base is None


def test_renv_lock_wins_over_install_r(tmp_path: Path) -> None:
    glue = {"Package": "glue", "Version": "1.6.2"}
    lock = {"R": {"Version": "4.2.2"}, "Packages": {"glue": glue}}
    files = {"renv.lock": json.dumps(lock, indent=2), "install.R": "install.packages('y')"}
    base = r_base(detect(write(tmp_path, files)))
    assert base["install_r"] is None and json.loads(str(base["renv"])) == lock


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"runtime.txt": "r-4.3"}, r"^runtime\.txt: 'r-4\.3' is not an R version and snapshot"),
        ({"runtime.txt": "r-2024-02-30"}, r"^runtime\.txt: 2024-02-30 is not a date"),
        ({"renv.lock": "{"}, r"^renv\.lock: not valid JSON"),
        ({"renv.lock": '{"Packages": {"x": {}}}'}, r"^renv\.lock: package x has no Version"),
    ],
)
def test_bad_r_files_name_themselves(tmp_path: Path, files: dict[str, str], message: str) -> None:
    with pytest.raises(EnvironmentConfigError, match=message):
        detect(write(tmp_path, files))


def test_description_in_binder_folder_is_not_r(tmp_path: Path) -> None:
    repo = write(tmp_path, {"binder/DESCRIPTION": "x", "binder/requirements.txt": "a"})
    assert detect(repo).requirements == ("a",)


def test_apt_txt_with_only_comments_is_ignored(tmp_path: Path) -> None:
    repo = write(tmp_path, {"apt.txt": "# nothing yet\n\n", "requirements.txt": "a"})
    spec = detect(repo)
    assert spec.requirements == ("a",) and spec.apt_packages == ()
    assert spec.layers == ("python", "pip")


def test_apt_txt_is_a_system_layer_under_any_kind(tmp_path: Path) -> None:
    files = {".binder/apt.txt": "# tools\ncurl\ngraphviz # dot\ncurl\n", ".binder/postBuild": ""}
    spec = detect(write(tmp_path, {**files, ".binder/requirements.txt": "a"}))
    assert spec.apt_packages == ("curl", "graphviz")
    assert spec.layers == ("system", "python", "pip", "postBuild")
    assert ".binder/apt.txt" in spec.sources
    plain = detect(write(tmp_path / "plain", {".binder/requirements.txt": "a"}))
    with_apt = {".binder/requirements.txt": "a", ".binder/apt.txt": "x11"}
    other = detect(write(tmp_path / "other", with_apt))
    keys = {s.key(interpreter="cpython-3.10.13", builder_version="5") for s in (plain, other)}
    assert len(keys) == 2  # the system layer is part of the key


@pytest.mark.parametrize("line", ["-o APT::x=1", "curl=7.88", "../evil", "Curl", "a", "curl-"])
def test_apt_txt_accepts_only_package_names(tmp_path: Path, line: str) -> None:
    repo = write(tmp_path, {"apt.txt": f"curl\n{line}\n"})
    message = r"^apt\.txt, line 2: .* is not a package name"
    with pytest.raises(EnvironmentConfigError, match=message):
        detect(repo)


# -------------------------------------------------------- requirements.txt

PIP_COMPILE = """\
#
# This file is autogenerated by pip-compile with Python 3.10
# by the following command:
#
#    pip-compile --generate-hashes requirements.in
#
numpy==1.26.4 \\
    --hash=sha256:03a8c78d01d9781b28a6989f6fa1bb2c4f2d51201cf99d3dd875df6fbd96b23b \\
    --hash=sha256:08beddf13648eb95f8d867350f6a018a4be2e5ad54c8d8caed89ebca558b2010
    # via -r requirements.in
six==1.16.0 \\
    --hash=sha256:1e61c37477a1626458e36f7b1d82aa5c9b094fa4802892072e49de9c60c4c926
    # via python-dateutil
"""


def test_pip_compile_with_hashes(tmp_path: Path) -> None:
    repo = write(tmp_path, {"requirements.txt": PIP_COMPILE})
    assert detect(repo).requirements == (
        "numpy==1.26.4"
        " --hash=sha256:03a8c78d01d9781b28a6989f6fa1bb2c4f2d51201cf99d3dd875df6fbd96b23b"
        " --hash=sha256:08beddf13648eb95f8d867350f6a018a4be2e5ad54c8d8caed89ebca558b2010",
        "six==1.16.0"
        " --hash=sha256:1e61c37477a1626458e36f7b1d82aa5c9b094fa4802892072e49de9c60c4c926",
    )
    # the same pins on one line each, hashes in another order, no comments
    flat = "\n".join(
        [
            "numpy==1.26.4"
            " --hash sha256:08beddf13648eb95f8d867350f6a018a4be2e5ad54c8d8caed89ebca558b2010"
            " --hash=sha256:03a8c78d01d9781b28a6989f6fa1bb2c4f2d51201cf99d3dd875df6fbd96b23b",
            "six==1.16.0"
            " --hash=sha256:1e61c37477a1626458e36f7b1d82aa5c9b094fa4802892072e49de9c60c4c926",
        ]
    )
    other = write(tmp_path / "other", {"requirements.txt": flat})
    assert key(detect(other)) == key(detect(repo))


def test_equivalent_files_give_equal_specs(tmp_path: Path) -> None:
    a = write(tmp_path / "a", {"requirements.txt": "numpy==1.26.4  # pinned\nPandas>=2,<3\n"})
    b = write(
        tmp_path / "b",
        {"requirements.txt": "# deps\n\n  numpy==1.26.4\r\npandas < 3 , >= 2\n\n"},
    )
    assert detect(a) == detect(b)
    assert key(detect(a)) == key(detect(b))
    assert detect(a).requirements == ("numpy==1.26.4", "pandas<3,>=2")


def test_names_normalised_order_kept(tmp_path: Path) -> None:
    text = (
        "Scikit_Learn[Alldeps]==1.4\n"
        "zope.interface\n"
        "requests; python_version < '3.11'\n"
        "aaa\n"
        "this is not a requirement!!\n"
        "https://example.org/pkg-1.0-py3-none-any.whl\n"
        "git+https://example.org/x.git@v1#egg=x\n"
    )
    repo = write(tmp_path, {"requirements.txt": text})
    assert detect(repo).requirements == (
        "scikit-learn[alldeps]==1.4",
        "zope-interface",
        'requests; python_version < "3.11"',
        "aaa",
        "this is not a requirement!!",
        "https://example.org/pkg-1.0-py3-none-any.whl",
        "git+https://example.org/x.git@v1#egg=x",
    )


def test_include_is_relative_to_the_including_file(tmp_path: Path) -> None:
    repo = write(
        tmp_path,
        {
            "binder/requirements.txt": "-r reqs/base.txt\nzeta\n--requirement=../extra.txt\n",
            "binder/reqs/base.txt": "alpha  # first\n-r more.txt\n",
            "binder/reqs/more.txt": "beta\n",
            "extra.txt": "gamma\n",
        },
    )
    spec = detect(repo)
    assert spec.requirements == ("alpha", "beta", "zeta", "gamma")
    assert spec.sources == (
        "binder/requirements.txt",
        "binder/reqs/base.txt",
        "binder/reqs/more.txt",
        "extra.txt",
    )
    assert spec.content_digest is None


def test_include_missing_names_the_file(tmp_path: Path) -> None:
    repo = write(tmp_path, {"requirements.txt": "numpy\n-r dev.txt\n"})
    with pytest.raises(EnvironmentConfigError) as info:
        detect(repo)
    assert info.value.message == "requirements.txt, line 2: -r dev.txt: dev.txt does not exist"


def test_include_escaping_the_repository(tmp_path: Path) -> None:
    write(tmp_path, {"secret.txt": "x\n"})
    repo = write(tmp_path / "repo", {"requirements.txt": "-r ../secret.txt\n"})
    with pytest.raises(EnvironmentConfigError, match="points outside the repository"):
        detect(repo)
    (repo / "link.txt").symlink_to(tmp_path / "secret.txt")
    (repo / "requirements.txt").write_text("-r link.txt\n")
    with pytest.raises(EnvironmentConfigError, match=r"link.txt points outside the repository"):
        detect(repo)


def test_requirements_symlink_escaping(tmp_path: Path) -> None:
    write(tmp_path, {"secret.txt": "x\n"})
    repo = write(tmp_path / "repo", {})
    (repo / "requirements.txt").symlink_to(tmp_path / "secret.txt")
    with pytest.raises(EnvironmentConfigError, match=r"requirements.txt points outside"):
        detect(repo)


def test_include_cycle_and_url(tmp_path: Path) -> None:
    repo = write(tmp_path, {"requirements.txt": "-r a.txt\n", "a.txt": "-r requirements.txt\n"})
    with pytest.raises(EnvironmentConfigError, match="includes itself"):
        detect(repo)
    (repo / "requirements.txt").write_text("-r https://example.org/r.txt\n")
    with pytest.raises(EnvironmentConfigError, match="files from URLs are not supported"):
        detect(repo)


def test_options_kept_dropped_refused(tmp_path: Path) -> None:
    text = (
        "-i https://mirror.example/simple\n"
        "--extra-index-url=https://extra.example/simple\n"
        "-f https://wheels.example/\n"
        "--pre\n--no-binary :all:\n"
        "--trusted-host mirror.example\n--prefer-binary\n--require-hashes\n"
        "numpy\n"
    )
    repo = write(tmp_path, {"requirements.txt": text})
    assert detect(repo).requirements == (
        "--index-url https://mirror.example/simple",
        "--extra-index-url https://extra.example/simple",
        "--find-links https://wheels.example/",
        "--pre",
        "--no-binary :all:",
        "numpy",
    )
    for bad, option in [
        ("numpy --config-settings a=b", "--config-settings"),
        ("numpy --global-option=x", "--global-option"),
        ("--frobnicate", "--frobnicate"),
    ]:
        (repo / "requirements.txt").write_text(f"six\n{bad}\n")
        with pytest.raises(EnvironmentConfigError) as info:
            detect(repo)
        assert info.value.message == f"requirements.txt, line 2: option {option} is not supported"


def test_editable_vcs_becomes_a_direct_reference(tmp_path: Path) -> None:
    text = "-e git+https://example.org/x/y.git@v1#egg=My_Pkg&subdirectory=src\n"
    repo = write(tmp_path, {"requirements.txt": text})
    spec = detect(repo)
    assert spec.requirements == ("my-pkg @ git+https://example.org/x/y.git@v1#subdirectory=src",)
    assert spec.content_digest is None


# -------------------------------------------------------- local references


def test_local_references_rewritten_relative_to_root(tmp_path: Path) -> None:
    text = (
        "-e .\n"
        ".[dev]\n"
        "-e ./sub\n"
        "--editable=sub/../sub\n"
        "./sub[Extra_One]\n"
        "file:sub\n"
        "-e file:./sub#egg=sub\n"
        "subpkg @ file:///home/jovyan/sub ; python_version >= '3'\n"
        "dist/pkg-1.0.tar.gz\n"
        "/home/jovyan/sub\n"
    )
    repo = write(
        tmp_path,
        {"binder/requirements.txt": text, "sub/setup.py": "", "dist/pkg-1.0.tar.gz": "x"},
    )
    spec = detect(repo)
    assert spec.requirements == (
        "-e .",
        ".[dev]",
        "-e ./sub",
        "-e ./sub",
        "./sub[extra-one]",
        "./sub",
        "-e ./sub#egg=sub",
        'subpkg @ file:./sub ; python_version >= "3"',
        "./dist/pkg-1.0.tar.gz",
        "./sub",
    )
    assert spec.content_digest == content_digest(repo)
    assert spec.needs_content


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("./missing", "requirements.txt, line 1: missing does not exist"),
        ("-e ../outside", "requirements.txt, line 1: ../outside points outside the repository"),
        ("/etc", "requirements.txt, line 1: /etc is outside the repository"),
        ("file:///srv/pkg", "requirements.txt, line 1: /srv/pkg is outside the repository"),
        ("-e link", "requirements.txt, line 1: link points outside the repository"),
    ],
)
def test_local_references_must_be_inside(tmp_path: Path, line: str, message: str) -> None:
    write(tmp_path, {"outside/setup.py": ""})
    repo = write(tmp_path / "repo", {"requirements.txt": line + "\n"})
    (repo / "link").symlink_to(tmp_path / "outside")
    with pytest.raises(EnvironmentConfigError) as info:
        detect(repo)
    assert info.value.message == message


def test_constraints_and_find_links_paths(tmp_path: Path) -> None:
    repo = write(
        tmp_path,
        {
            "binder/requirements.txt": "-c constraints.txt\n--find-links wheels\nnumpy\n",
            "binder/constraints.txt": "numpy<2\n",
            "binder/wheels/x.whl": "",
        },
    )
    spec = detect(repo)
    assert spec.requirements == (
        "-c /home/jovyan/binder/constraints.txt",
        "--find-links /home/jovyan/binder/wheels",
        "numpy",
    )
    assert spec.needs_content
    assert "binder/constraints.txt" in spec.sources


# -------------------------------------------------------- Pipfile

PIPFILE = """\
[[source]]
url = "https://pypi.python.org/simple"
verify_ssl = true
name = "pypi"

[[source]]
url = "https://mirror.example/simple/"
verify_ssl = true
name = "mirror"

[packages]
numpy = "*"
Pandas = ">=2.0,<3"
scipy = "1.11.4"
requests = {version = "==2.31.0", extras = ["socks", "Security"]}
pywin32 = {version = "*", sys_platform = "== 'win32'"}
colorama = {version = "*", markers = "os_name == 'nt'"}
mylib = {git = "https://example.org/me/mylib.git", ref = "v1.2", subdirectory = "py"}
here = {path = ".", editable = true}

[dev-packages]
pytest = "*"
numpy = "==1.0"

[requires]
python_version = "3.9"
"""


def lock(default: Mapping[str, object], develop: Mapping[str, object], python: str = "3.11") -> str:
    meta = {
        "hash": {"sha256": "x"},
        "pipfile-spec": 6,
        "requires": {"python_version": python},
        "sources": [{"name": "pypi", "url": "https://pypi.org/simple", "verify_ssl": True}],
    }
    return json.dumps({"_meta": meta, "default": default, "develop": develop}, indent=4)


def test_pipfile_without_lock(tmp_path: Path) -> None:
    repo = write(tmp_path, {"Pipfile": PIPFILE, "requirements.txt": "ignored", "setup.py": ""})
    spec = detect(repo)
    assert spec.python == "3.9"
    assert spec.requirements == (
        "--extra-index-url https://mirror.example/simple",
        "numpy",
        "pandas<3,>=2.0",
        "scipy==1.11.4",
        "requests[security,socks]==2.31.0",
        'pywin32; sys_platform == "win32"',
        'colorama; os_name == "nt"',
        "mylib @ git+https://example.org/me/mylib.git@v1.2#subdirectory=py",
        "-e .",
        "pytest",
    )
    assert not spec.install_repo  # pipenv projects install the repo only via path = "."
    assert spec.needs_content
    assert spec.sources == ("Pipfile",)


def test_pipfile_lock_wins(tmp_path: Path) -> None:
    default = {
        "numpy": {
            "hashes": ["sha256:bbb", "sha256:aaa"],
            "index": "pypi",
            "markers": "python_version >= '3.9'",
            "version": "==1.26.4",
        },
        "Requests": {"extras": ["socks"], "version": "==2.31.0", "hashes": []},
    }
    develop = {"pytest": {"version": "==8.0.0"}, "numpy": {"version": "==1.0"}}
    repo = write(
        tmp_path,
        {"Pipfile": PIPFILE, "Pipfile.lock": lock(default, develop), "runtime.txt": "python-3.8"},
    )
    spec = detect(repo)
    assert spec.python == "3.11"  # the lock's version wins over Pipfile and runtime.txt
    assert spec.requirements == (
        'numpy==1.26.4; python_version >= "3.9" --hash=sha256:aaa --hash=sha256:bbb',
        "requests[socks]==2.31.0",
        "pytest==8.0.0",
    )
    assert spec.content_digest is None
    assert spec.sources == ("Pipfile.lock", "runtime.txt")


def test_pipfile_python_falls_back_to_runtime(tmp_path: Path) -> None:
    repo = write(
        tmp_path,
        {"binder/Pipfile": "[packages]\nsix = '*'\n", "binder/runtime.txt": "python-3.12"},
    )
    spec = detect(repo)
    assert spec.python == "3.12"
    assert spec.requirements == ("six",)


def test_pipfile_path_relative_to_pipfile(tmp_path: Path) -> None:
    pipfile = "[packages]\nmine = {path = '..'}\nother = {path = '../sub', editable = true}\n"
    repo = write(tmp_path, {"binder/Pipfile": pipfile, "setup.py": "", "sub/setup.py": ""})
    spec = detect(repo)
    assert spec.requirements == (".", "-e ./sub")
    assert spec.needs_content
    (repo / "binder/Pipfile").write_text("[packages]\nx = {path = '../..'}\n")
    with pytest.raises(EnvironmentConfigError, match=r"package x: .* points outside"):
        detect(repo)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"Pipfile": "[packages\n"}, r"^Pipfile: not valid TOML"),
        ({"Pipfile.lock": "{not json"}, r"^Pipfile\.lock: not valid JSON"),
        ({"Pipfile": "[requires]\npython_version = 'three'\n"}, "is not a version"),
    ],
)
def test_pipfile_malformed(tmp_path: Path, files: dict[str, str], message: str) -> None:
    with pytest.raises(EnvironmentConfigError, match=message):
        detect(write(tmp_path, files))


# -------------------------------------------------------- requires-python


@pytest.mark.parametrize(
    ("requires", "python"),
    [
        (">=3.8", "3.10"),
        (">=3.11", "3.13"),
        ("<3.10", "3.9"),
        (">=3.10.5", "3.10"),
        ("~=3.12", "3.13"),
        ("==3.11.*", "3.11"),
        (">=3.8,!=3.10.*", "3.13"),
    ],
)
def test_requires_python_selection(tmp_path: Path, requires: str, python: str) -> None:
    extra = f'requires-python = "{requires}"'
    repo = write(tmp_path, {"pyproject.toml": PYPROJECT.format(extra=extra)})
    assert detect(repo).python == python


def test_requires_python_with_runtime(tmp_path: Path) -> None:
    extra = 'requires-python = ">=3.10"'
    repo = write(
        tmp_path, {"pyproject.toml": PYPROJECT.format(extra=extra), "runtime.txt": "python-3.12"}
    )
    assert detect(repo).python == "3.12"
    (repo / "runtime.txt").write_text("python-3.9")
    with pytest.raises(EnvironmentConfigError) as info:
        detect(repo)
    assert info.value.message == (
        "runtime.txt asks for Python 3.9 but pyproject.toml requires-python is >=3.10"
    )


@pytest.mark.parametrize(
    ("requires", "message"),
    [(">=4", "allows none of Python 3.6 to 3.13"), ("three", "is not a version specifier")],
)
def test_requires_python_unsatisfiable(tmp_path: Path, requires: str, message: str) -> None:
    extra = f'requires-python = "{requires}"'
    repo = write(tmp_path, {"pyproject.toml": PYPROJECT.format(extra=extra)})
    with pytest.raises(EnvironmentConfigError, match=message):
        detect(repo)


def test_requires_python_ignored_with_binder_folder(tmp_path: Path) -> None:
    extra = 'requires-python = ">=3.12"'
    repo = write(
        tmp_path,
        {"pyproject.toml": PYPROJECT.format(extra=extra), "binder/requirements.txt": "a"},
    )
    spec = detect(repo)
    assert spec.python == "3.10" and not spec.install_repo


# -------------------------------------------------------- scripts


def test_scripts_must_stay_inside(tmp_path: Path) -> None:
    write(tmp_path, {"evil.sh": "rm -rf /\n"})
    repo = write(tmp_path / "repo", {"requirements.txt": "a", "scripts/build.sh": "echo ok\n"})
    (repo / "postBuild").symlink_to("scripts/build.sh")
    spec = detect(repo)
    assert spec.postbuild == "postBuild" and spec.postbuild_text == "echo ok\n"
    (repo / "postBuild").unlink()
    (repo / "postBuild").symlink_to(tmp_path / "evil.sh")
    with pytest.raises(EnvironmentConfigError, match=r"^postBuild points outside the repository"):
        detect(repo)
    (repo / "postBuild").unlink()
    (repo / "start").mkdir()
    with pytest.raises(EnvironmentConfigError, match=r"^start: not a regular file"):
        detect(repo)


# -------------------------------------------------------- keys and the content digest


def test_key_ignores_notebooks_and_docs(tmp_path: Path) -> None:
    files = {
        "requirements.txt": "numpy==1.26.4\n",
        "index.ipynb": '{"cells": []}',
        "README.md": "a",
    }
    a = make_repo(tmp_path / "a", files)
    before = key(detect(a))
    commit(a, {"index.ipynb": '{"cells": [1]}', "README.md": "b", "analysis.py": "print(1)\n"})
    assert key(detect(a)) == before  # not content-dependent: only the files matter
    b = write(tmp_path / "b", {"requirements.txt": "numpy==1.26.4  # same pin\n"})
    assert key(detect(b)) == before


def test_key_changes_with_requirements_and_python(tmp_path: Path) -> None:
    repo = write(tmp_path, {"requirements.txt": "numpy==1.26.4\n"})
    base = key(detect(repo))
    assert key(detect(repo, default_python="3.11")) != base
    (repo / "runtime.txt").write_text("python-3.12\n")
    with_runtime = key(detect(repo))
    assert with_runtime != base
    (repo / "requirements.txt").write_text("numpy==1.26.3\n")
    assert key(detect(repo)) not in (base, with_runtime)
    other = detect(repo)
    assert other.key(interpreter="cpython-3.12.1", builder_version="1") != key(other)
    assert other.key(interpreter="cpython-3.10.13", builder_version="2") != key(other)


def test_content_dependent_key(tmp_path: Path) -> None:
    files = {
        "requirements.txt": "-e .\n",
        "setup.py": "from setuptools import setup\nsetup(name='x')\n",
        "x/__init__.py": "",
        "index.ipynb": "{}",
        "README.md": "readme",
        "docs/guide.rst": "guide",
        "figures/plot.png": "png",
        "data/table.csv": "a,b\n1,2\n",
    }
    repo = make_repo(tmp_path / "repo", files)
    first = detect(repo)
    assert first.install_repo and first.needs_content
    commit(
        repo,
        {
            "index.ipynb": '{"x": 1}',
            "README.md": "new readme",
            "docs/guide.rst": "new guide",
            "figures/plot.png": "new png",
            "figures/new.JPG": "jpg",
            ".ipynb_checkpoints/index-checkpoint.ipynb": "{}",
        },
    )
    assert key(detect(repo)) == key(first)
    commit(repo, {"x/__init__.py": "VERSION = 2\n"})
    second = detect(repo)
    assert key(second) != key(first)
    commit(repo, {"data/table.csv": "a,b\n1,3\n"})
    third = detect(repo)
    assert key(third) not in (key(first), key(second))
    (repo / "x/__init__.py").chmod(0o755)
    assert key(detect(repo)) != key(third)


def test_postbuild_text_in_key(tmp_path: Path) -> None:
    repo = write(tmp_path, {"requirements.txt": "a", "postBuild": "echo 1\n"})
    first = detect(repo)
    (repo / "postBuild").write_text("echo 2\n")
    assert key(detect(repo)) != key(first)


def test_digest_rules(tmp_path: Path) -> None:
    outside = write(tmp_path / "outside", {"target.txt": "one"})
    repo = make_repo(tmp_path / "repo", {"setup.py": "", "pkg/a.py": "a = 1\n", "nb.ipynb": "{}"})
    (repo / "link").symlink_to(outside / "target.txt")
    (repo / "dirlink").symlink_to(outside)
    assert build_inputs(repo) == ["dirlink", "link", "pkg/a.py", "setup.py"]
    digest = content_digest(repo)
    (outside / "target.txt").write_text("two")  # links are not followed
    (repo / "pkg/a.py").chmod(0o664)  # only the executable bit counts
    (repo / "empty").mkdir()  # empty folders do not count
    commit(repo, {"nb.ipynb": '{"a": 1}'})  # .git changes do not count
    assert content_digest(repo) == digest
    (repo / "link").unlink()
    (repo / "link").symlink_to(outside / "other.txt")
    assert content_digest(repo) != digest
    renamed = content_digest(repo)
    (repo / "pkg/a.py").rename(repo / "pkg/b.py")
    assert content_digest(repo) != renamed


# -------------------------------------------------------- uv reads the lines as meant

SUBPKG = """\
[project]
name = "subpkg"
version = "0.1"
dependencies = ["six"]

[project.optional-dependencies]
x = ["packaging"]

[build-system]
requires = ["hatchling"]
build-backend = "hatchling.build"
"""


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="needs bubblewrap")
def test_uv_resolves_the_lines_with_content_at_home(tmp_path: Path) -> None:
    """The builder's setting: lines written anywhere, cwd = content at /home/jovyan."""
    repo = write(
        tmp_path / "repo",
        {
            "binder/requirements.txt": "-c constraints.txt\n-r more.txt\n",
            "binder/more.txt": "./sub[x]  # local, with an extra\nSIX  # constrained\n",
            "binder/constraints.txt": "six==1.16.0\n",
            "sub/pyproject.toml": SUBPKG,
            "sub/subpkg/__init__.py": "",
        },
    )
    spec = detect(repo)
    assert spec.needs_content
    elsewhere = write(tmp_path / "spec", {"requirements.txt": "\n".join(spec.requirements)})
    uv = Path(sys.executable).parent / "uv"
    command = [
        "bwrap", "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc",
        "--tmpfs", "/home", "--ro-bind", str(repo), "/home/jovyan", "--chdir", "/home/jovyan",
        "--ro-bind", str(elsewhere), "/home/spec", "--dir", "/home/tmp",
        "--setenv", "TMPDIR", "/home/tmp",
        str(uv), "pip", "compile", "--no-cache", "--quiet", "--no-header", "--no-annotate",
        "--python", sys.executable, "/home/spec/requirements.txt",
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    resolved = {line.split("==")[0] for line in result.stdout.split()}
    assert resolved == {"./sub", "six", "packaging"}  # the extra of the local package
    assert "six==1.16.0" in result.stdout.split()  # the constraint, found at its new path


def test_unreadable_text_names_the_file(tmp_path: Path) -> None:
    repo = write(tmp_path, {".binder/requirements.txt": ""})
    (repo / ".binder/requirements.txt").write_bytes(b"numpy\n\xff\xfe\x00bad\n")
    with pytest.raises(EnvironmentConfigError) as info:
        detect(repo)
    assert info.value.message == ".binder/requirements.txt: not valid UTF-8 text"


def test_byte_order_mark_and_crlf(tmp_path: Path) -> None:
    repo = write(tmp_path, {})
    (repo / "requirements.txt").write_bytes(b"\xef\xbb\xbfnumpy\r\n-r other.txt\r\n")
    (repo / "other.txt").write_bytes(b"pandas  # c\r\n")
    assert detect(repo).requirements == ("numpy", "pandas")


def test_pipfile_with_pypi_after_a_private_index_keeps_pypi(tmp_path: Path) -> None:
    pipfile = """\
[[source]]
url = "https://private.example.org/simple"
name = "private"

[[source]]
url = "https://pypi.org/simple"
name = "pypi"

[packages]
six = "*"
"""
    (tmp_path / "Pipfile").write_text(pipfile)
    lines = detect(tmp_path).requirements
    assert "--index-url https://private.example.org/simple" in lines
    assert "--extra-index-url https://pypi.org/simple" in lines


def test_keys_of_python_environments_built_before_layers_are_unchanged() -> None:
    """A store filled before the layered spec keeps serving its environments."""
    spec = EnvSpec(
        python="3.11",
        requirements=("numpy==1.26.4",),
        postbuild="postBuild",
        postbuild_text="echo hi",
        content_digest="abc",
    )
    # the key the spec of the previous release gave (computed with it)
    assert spec.key(interpreter="cpython-3.11.9", builder_version="5") == (
        "1b3d45530b8b38cfbc39e4a368474cfe"
    )
    layered = dataclasses.replace(spec, base='{"x": 1}')
    assert layered.key(interpreter="cpython-3.11.9", builder_version="5") != (
        "1b3d45530b8b38cfbc39e4a368474cfe"
    )
