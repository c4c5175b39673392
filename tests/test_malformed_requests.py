"""No 5xx and no stack trace for malformed requests: a bounded fuzz of ``binderbox serve``.

One real service (web app, JupyterHub, the Node proxy with binderbox's guard;
CORS on, so that preflights echo a request header) gets the same few
thousand malformed requests (see :mod:`fuzz_helpers`: a fixed corpus of
known-bad cases plus seeded random ones) twice: through the public port, as
a visitor sends them, and straight to the web app's own port.  Every one must
be answered with a status below 500 (a few may be dropped without one, see
:func:`~fuzz_helpers.may_go_unanswered`), and no log of the service
(its output, ``proxy.log``, ``hub.log``, ``culler.log``) may hold a Python
traceback or a Node stack frame.
"""

from __future__ import annotations

import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from fuzz_helpers import (
    NO_ANSWER,
    Malformed,
    malformed_requests,
    may_go_unanswered,
    send_all,
    stack_traces,
)
from serve_helpers import ServeProcess, running_serve

from binderbox.hub.proxy import guarded_node_options

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

SEED = 9
#: requests per port: the fixed corpus (about 2,500) and random ones
COUNT = 4000


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    config = "c.WebApp.cors_allow_origin = '*'"
    with running_serve(tmp_path_factory.mktemp("fuzz"), extra_config=config) as serve:
        yield serve


def assert_no_stack_traces(service: ServeProcess) -> None:
    for name, text in service.logs().items():
        found = stack_traces(text)
        assert not found, f"{name} holds stack traces: {found[:5]}\n{text[-3000:]}"


def summary(answers: list[tuple[Malformed, int]]) -> str:
    return ", ".join(f"{s}: {n}" for s, n in sorted(Counter(s for _, s in answers).items()))


@pytest.mark.parametrize("route", ["public port", "web app port"])
async def test_malformed_requests_get_no_5xx(service: ServeProcess, route: str) -> None:
    port = service.ports["public"] if route == "public port" else await service.web_app_port()
    requests = malformed_requests(COUNT, seed=SEED)
    answers = await send_all("127.0.0.1", port, requests)

    server_errors = [(r.method, r.target[:200], s) for r, s in answers if s >= 500]
    assert not server_errors, f"{len(server_errors)} answers 5xx ({summary(answers)})"
    unanswered = [r for r, s in answers if s == NO_ANSWER and not may_go_unanswered(r)]
    assert not unanswered, f"no answer to {[repr(r)[:300] for r in unanswered[:10]]}"
    assert_no_stack_traces(service)


@pytest.mark.parametrize(
    "path", ["/%zz", "/v2/gh/o/r%", "/hub/%C0%AE", "/user/x/%E0%A4%A", "/hub/static/%00"]
)
async def test_the_proxy_answers_undecodable_paths_400(service: ServeProcess, path: str) -> None:
    """What the proxy answered 500 with a stack trace before its guard: a 400 page."""
    port = service.ports["public"]
    [(_, status)] = await send_all("127.0.0.1", port, [Malformed("GET", path)])
    assert status == 400
    proxy_log = service.logs()["proxy"]
    assert f"400 GET {path}" in proxy_log
    assert not stack_traces(proxy_log)


def test_the_guard_refuses_a_proxy_it_does_not_know(tmp_path: Path) -> None:
    """Rather than a proxy without its guard: a plain message, no proxy."""
    (tmp_path / "package.json").write_text('{"type": "module"}\n')
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "configproxy.js").write_text("export class ConfigurableProxy {}\n")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "configurable-http-proxy").write_text("console.log('proxy started')\n")
    env = {**os.environ, "NODE_OPTIONS": guarded_node_options(os.environ)}
    result = subprocess.run(
        ["node", str(tmp_path / "bin" / "configurable-http-proxy")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "binderbox proxy guard:" in result.stderr
    assert "unsupported version" in result.stderr
    assert "proxy started" not in result.stdout
    assert not stack_traces(result.stderr)
