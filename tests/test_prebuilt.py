"""Prebuilt environments: built when the service starts, their state in /health.

REAL builds through the pipeline of REAL git repositories (``file://`` URLs, which the
operator's own configuration may name).
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest
from repos import make_repo
from testcache import CACHE as TEST_CACHE
from traitlets import TraitError
from traitlets.config import Config

from binderbox.app import BinderboxApp
from binderbox.events import Built
from binderbox.pipeline import LaunchRequest
from binderbox.prebuilt import Prebuilt

pytestmark = pytest.mark.timeout(600)


def git_spec(repo: Path, ref: str = "HEAD") -> str:
    return f"git/{quote('file://' + str(repo), safe='')}/{ref}"


async def test_prebuilt_environments_are_built_and_their_failures_named(tmp_path: Path) -> None:
    app = BinderboxApp(data_dir=str(tmp_path / "data"))
    app.config.PythonBuilder.cache_dir = str(TEST_CACHE / "uv")
    pipeline = app.make_pipeline(allow_local=True)
    good = make_repo(tmp_path / "good", {"requirements.txt": "six\n"})
    missing = tmp_path / "missing"
    environments = [
        {"name": "good", "display": "A good one", "spec": git_spec(good)},
        {"name": "gone", "spec": git_spec(missing)},
    ]
    prebuilt = Prebuilt(config=Config({"Prebuilt": {"environments": environments}}))
    assert prebuilt.health() == {
        "service": "Prebuilt environments",
        "ok": True,
        "environments": {"good": "waiting", "gone": "waiting"},
    }
    await prebuilt.build_all(pipeline)
    health = prebuilt.health()
    assert health is not None and not health["ok"]
    assert health["environments"] == {"good": "ready", "gone": "failed"}
    assert health["error"].startswith("gone: Could not")
    provider, _, spec = git_spec(good).partition("/")
    request = LaunchRequest(provider=provider, spec=spec, build_only=True)
    events = [event async for event in pipeline.launch(request)]
    assert isinstance(events[-1], Built)
    assert any("Found built environment" in str(e.to_wire()) for e in events)  # reused
    await pipeline.finisher.aclose()


def test_a_bad_prebuilt_setting_is_refused_naming_it() -> None:
    for bad, words in [
        ([{"name": "x", "spec": "nothing"}], "spec must be <provider>/<spec>"),
        ([{"spec": "gh/o/r/v1"}], "needs a plain name"),
        ([{"name": "a", "spec": "gh/o/r/1"}, {"name": "a", "spec": "gh/o/s/1"}], "unique"),
    ]:
        with pytest.raises(TraitError, match=words):
            Prebuilt(config=Config({"Prebuilt": {"environments": bad}}))
