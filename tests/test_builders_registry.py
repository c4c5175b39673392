"""Builders chosen by kind (builders/registry.py), with the real PythonBuilder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from traitlets.config import Config

from binderbox.builders.python import PythonBuilder
from binderbox.builders.registry import Builders
from binderbox.environments import EnvSpec
from binderbox.errors import UnsupportedEnvironment


class OtherBuilder(PythonBuilder):
    """A second builder class, as an operator's config would list one."""

    kinds = ("conda",)
    version = "7"


def test_a_spec_goes_to_the_builder_of_its_kind() -> None:
    config = Config()
    config.Builders.builder_classes = [PythonBuilder, OtherBuilder]
    config.PythonBuilder.min_python = "3.9"  # a member's class section configures it
    builders = Builders(config=config)
    python, other = builders.members
    assert builders.for_spec(EnvSpec(kind="python")) is python
    assert builders.for_spec(EnvSpec(kind="conda")) is other
    assert builders.key_version(EnvSpec(kind="conda")) == "7"
    assert other.min_python == "3.9"  # subclasses read their parents' section
    assert other.host is python.host  # one host: one set of uid leases and limits


def test_a_kind_no_listed_builder_builds_is_refused_naming_its_file() -> None:
    spec = EnvSpec(kind="conda", sources=("binder/environment.yml",))
    config = Config()
    config.Builders.builder_classes = [PythonBuilder]  # an operator's list without conda
    with pytest.raises(UnsupportedEnvironment) as info:
        Builders(config=config).interpreter(spec)
    assert info.value.message == (
        "binder/environment.yml: conda environments are not built on this server"
    )
    assert "python" in (info.value.hint or "")


def test_finishing_goes_to_the_builder_that_built_the_environment(tmp_path: Path) -> None:
    config = Config()
    config.Builders.builder_classes = [PythonBuilder, OtherBuilder]
    builders = Builders(config=config)
    env = tmp_path / "env"
    (env / ".binderbox").mkdir(parents=True)
    (env / ".binderbox" / "build.json").write_text(json.dumps({"builder": "OtherBuilder"}))
    assert builders.built_by(env) is builders.members[1]
    assert builders.built_by(tmp_path) is builders.members[0]  # no record: the first


def test_apt_txt_puts_the_host_package_set_into_the_key() -> None:
    plain = EnvSpec(sources=("requirements.txt",))
    spec = EnvSpec(apt_packages=("curl",), sources=("requirements.txt", "binder/apt.txt"))
    builders = Builders()
    layers = builders.members[0].layers  # type: ignore[attr-defined]
    assert builders.interpreter(spec) == f"{builders.interpreter(plain)}+{layers.identity()}"
