"""``binderbox serve --log-format json``: logs an operator can ship.

A real service (hub, proxy, builds, a session) started with JSON lines: every line
it writes, on stdout and stderr, is one JSON object; each launch ends with one
``launch`` record with its outcome and timings; the session's token and the
credentials of a repository URL appear in no log line, the children's logs included;
a refused URL's log line names the setting that would allow it.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from repos import make_repo, notebook
from serve_helpers import build_events, end_session, git_spec, running_serve, user_of

from binderbox.logs import JsonFormatter
from binderbox.providers.gitutil import loggable

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

#: credentials in a repository URL: its user-info and its query
SECRET_USER, SECRET_QUERY = "sekrit-password-1", "sekrit-query-2"


def json_lines(text: str) -> list[dict[str, Any]]:
    """Every non-empty line of ``text`` as a JSON object (fails on any other line)."""
    records = []
    for line in text.splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert {"time", "level", "logger", "message"} <= record.keys(), line
        records.append(record)
    return records


def launch_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r.get("event") == "launch"]


async def test_json_logs_have_one_record_per_launch_and_no_tokens(tmp_path: Path) -> None:
    repo = make_repo(
        tmp_path / "repo", {"requirements.txt": "six==1.16.0\n", "index.ipynb": notebook("1")}
    )
    url = f"https://user:{SECRET_USER}@127.0.0.1:9/nothing.git?access_token={SECRET_QUERY}"
    secret_spec = f"{quote(url, safe='')}/HEAD"
    args = ["--log-format", "json", "--log-level", "INFO"]
    with running_serve(tmp_path / "serve", args=args) as serve:
        stream = await build_events(serve.url, "git", git_spec(repo))
        ready = stream.last
        assert ready.get("phase") == "ready", stream.events[-3:]
        await end_session(serve, ready)
        failed = (await build_events(serve.url, "git", secret_spec)).last
        assert failed.get("phase") == "failed", failed
    stdout = json_lines(serve.stdout_path.read_text())
    stderr = json_lines(serve.stderr_path.read_text())

    # the notices are JSON lines too: the config file, the URL, the shutdown
    said = [r["message"] for r in stdout]
    assert any(m.startswith("config: ") for m in said), said
    assert f"binderbox is running at {serve.url}" in said
    assert said[-1] == "binderbox stopped"

    launched, refused = launch_records(stderr)
    assert launched["outcome"] == "ready" and launched["provider"] == "git"
    assert launched["session"] == user_of(ready["url"])
    assert launched["cached"] is False
    assert launched["repo"] == ready["repo_url"]
    for phase in ("fetch", "build", "launch", "total"):
        assert launched[f"{phase}_seconds"] >= 0, launched
    assert launched["total_seconds"] >= launched["build_seconds"] + launched["launch_seconds"]

    assert refused["outcome"] == "failed"
    assert refused["failure"] == failed.get("reason") and refused["failure"]
    assert refused["build_seconds"] is None and refused["launch_seconds"] is None

    # the visitor's message stays plain; the operator's log names the setting
    assert "allow_private_hosts" not in failed["message"], failed
    said_why = [r["message"] for r in stderr if "failed: refused" in r["message"]]
    assert len(said_why) == 1 and "c.GitProvider.allow_private_hosts = True" in said_why[0]

    for name, text in serve.logs().items():  # the service's output, the children's logs
        for secret in (ready["token"], SECRET_USER, SECRET_QUERY):
            assert secret not in text, (name, secret)


@pytest.mark.parametrize(
    "text",
    [
        f"https://user:{SECRET_USER}@example.org/r.git?token={SECRET_QUERY}",
        quote(f"https://user:{SECRET_USER}@example.org/r.git?token={SECRET_QUERY}", safe="")
        + "/main",
        f"GET /build/gh/org/repo/main?build_token={SECRET_QUERY} (127.0.0.1)",
    ],
)
def test_log_text_has_no_credentials_but_keeps_the_repository(text: str) -> None:
    masked = loggable(text)
    assert SECRET_USER not in masked and SECRET_QUERY not in masked
    assert "example.org" in masked or "/build/gh/org/repo/main" in masked
    assert masked.endswith(("***", "/main", "(127.0.0.1)")), masked


def test_json_record_carries_its_fields_and_its_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.getLogger("binderbox.test").makeRecord(
            "binderbox.test", logging.ERROR, __file__, 1, "launch %s", ("x",), None, extra={}
        )
        record.exc_info = sys.exc_info()
    record.outcome = "failed"
    record.message_id = 7
    line = json.loads(JsonFormatter().format(record))
    assert line["level"] == "ERROR" and line["logger"] == "binderbox.test"
    assert line["message"] == "launch x" and line["outcome"] == "failed"
    assert line["message_id"] == 7 and "ValueError: boom" in line["exception"]
    assert line["time"].endswith("+00:00")
