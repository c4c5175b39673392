"""The operator's channel rules (builders/condasolve.py), without fetching anything."""

from __future__ import annotations

import pytest

from binderbox.builders.conda import CondaBuilder
from binderbox.builders.condasolve import Channel, ChannelRules
from binderbox.environments import EnvSpec
from binderbox.errors import CondaChannelError, CondaUnsolvable

MIRROR = "https://mirror.example.org/cf"


def rules(**kwargs: object) -> ChannelRules:
    return ChannelRules(mirrors={"conda-forge": MIRROR}, **kwargs)  # type: ignore[arg-type]


def test_names_mirrors_and_defaults() -> None:
    found = rules().resolve(["conda-forge", "bioconda", "nodefaults"], ["conda-forge"])
    assert found == [
        Channel("conda-forge", MIRROR),
        Channel("bioconda", "https://conda.anaconda.org/bioconda"),
    ]
    assert rules().resolve([], ["conda-forge"]) == [Channel("conda-forge", MIRROR)]
    # conda-forge's own URL is its mirror too, and so are locked package URLs under it
    url = "https://conda.anaconda.org/conda-forge/"
    assert rules().resolve([url], []) == [Channel(url, MIRROR)]
    package = "https://conda.anaconda.org/conda-forge/noarch/six-1.16.0-pyh6c4a22f_0.tar.bz2"
    assert rules().mirrored(package) == f"{MIRROR}/noarch/six-1.16.0-pyh6c4a22f_0.tar.bz2"


def test_defaults_only_when_allowed() -> None:
    with pytest.raises(CondaChannelError, match="'defaults' is not allowed"):
        rules().resolve(["defaults"], [])
    allowed = rules(allow_defaults=True, defaults_channels=["https://repo.example/main"])
    assert allowed.resolve(["defaults"], []) == [Channel("defaults", "https://repo.example/main")]


def test_a_repository_cannot_name_local_files() -> None:
    for written in ("file:///etc", "/etc", "./channel"):
        with pytest.raises(CondaChannelError, match="own disk"):
            rules().resolve([written], [])


async def test_hosts_are_checked_unless_the_operator_configured_them() -> None:
    with pytest.raises(CondaChannelError, match=r"127\.0\.0\.1 is on a private network"):
        await rules().check_url("http://127.0.0.1:9/chan/noarch/repodata.json")
    with pytest.raises(CondaChannelError, match="not an http"):
        await rules().check_url("file:///etc/shadow")
    await rules(allow_private_channels=True).check_url("http://127.0.0.1:9/chan")
    local = ChannelRules(mirrors={"conda-forge": "http://127.0.0.1:9/cf"})
    await local.check_url("http://127.0.0.1:9/cf/linux-64/x.conda")  # the operator's mirror
    with pytest.raises(CondaChannelError):
        await local.check_url("http://127.0.0.1:9/cf-other/x.conda")  # not under it


def test_specs_naming_a_channel_obey_the_same_rules() -> None:
    chosen = rules().resolve(["bioconda"], [])
    specs, channels = rules().spec_channels(["conda-forge::numpy >=1", "scipy"], chosen)
    assert specs == [f"{MIRROR}::numpy >=1", "scipy"]
    assert channels == [*chosen, Channel("conda-forge", MIRROR)]
    with pytest.raises(CondaChannelError):
        rules().spec_channels(["file:///etc::x"], chosen)
    with pytest.raises(CondaUnsolvable, match="in brackets"):
        rules().spec_channels(["numpy[url=http://10.0.0.1/x.conda]"], chosen)
    with pytest.raises(CondaUnsolvable, match="is a URL"):  # rattler would fetch it as is
        rules().spec_channels(["http://127.0.0.1:9/x-1-0.tar.bz2"], chosen)


def test_the_pypi_fallback_takes_environment_yml_and_leaves_locks_to_rattler() -> None:
    base = '{"channels":["conda-forge"],"dependencies":["python=3.11","six"]}'
    conda = EnvSpec(kind="conda", python="3.11", base=base)
    locked = EnvSpec(kind="conda-lock", python="3.11", base='{"lock":""}')
    builder = CondaBuilder(pypi_fallback=True)
    assert "+pypi-" in builder.interpreter(conda)  # PypiCondaBuilder's key
    assert builder.interpreter(locked).startswith("conda-linux-64 ")
    assert CondaBuilder().interpreter(conda).startswith("conda-linux-64 ")
