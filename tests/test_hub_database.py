"""The hub on a real PostgreSQL server (tests/pgserver.py), whatever
``BINDERBOX_TEST_HUB_DB`` says for the rest of the suite.

* ``binderbox serve`` with ``ManagedHub.db_url`` naming a database of the server
  and its password in a mode-0600 file: a launch reaches ``ready``, the hub's
  tables are in that database (no SQLite file), ``/health`` says ``postgresql``,
  and the password is in none of the files the service wrote (the generated
  jupyterhub_config.py, the logs), nor in its output or ``/health``;
* the session's environment holds no password; restarted (SIGHUP keeps the
  sessions), the new hub finds the session in the database: the hub lists it,
  and its kernel answers with its state;
* a wrong password, a missing database, a server that does not listen: ``serve``
  exits 1 with a plain error naming the database (not the password), no
  traceback, nothing left listening;
* a :class:`ManagedHub` given the password in the URL itself writes it into no file,
  and a launch through it reaches ``ready``.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kernels import execute, start_kernel
from pgserver import PgServer, database_name
from repos import make_repo, notebook
from serve_helpers import ServeProcess, build_events, end_session, git_spec, user_of
from session_helpers import fetch, new_session, running_hub
from session_helpers import user_of as session_user

from binderbox.hub.children import free_port, port_in_use
from binderbox.sessions.hubclient import HubClient

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]
module_loop = pytest.mark.asyncio(loop_scope="module")


def written_text(*roots: Path) -> str:
    """Every file under ``roots`` (but the password files the test wrote), as text."""
    texts = []
    for root in roots:
        for path in sorted(root.rglob("*")):
            if path.is_file() and not path.is_symlink() and path.name != "db_password":
                texts.append(path.read_text(errors="replace"))
    return "\n".join(texts)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    files = {"requirements.txt": "six==1.16.0\n", "index.ipynb": notebook("print(6*7)")}
    return make_repo(tmp_path_factory.mktemp("repos") / "on-postgresql", files)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, postgresql: PgServer) -> Iterator[Any]:
    """A ``binderbox serve`` whose hub is on PostgreSQL (started by the first test)."""
    work = tmp_path_factory.mktemp("serve-pg")
    serve = ServeProcess(work, work / "data", postgresql=True)
    try:
        yield serve
    finally:
        try:
            if serve.proc is not None:
                serve.stop_sessions()
            assert serve.stop() == 0, serve.output()[-3000:]
        finally:
            serve.kill()


@module_loop
async def test_a_launch_reaches_ready_with_the_hub_on_postgresql(
    service: ServeProcess, repo: Path, postgresql: PgServer
) -> None:
    service.start()
    stream = await build_events(service.url, "git", git_spec(repo))
    assert stream.last.get("phase") == "ready", stream.events[-5:]
    name = user_of(stream.last["url"])

    database = database_name(service.data_dir)
    assert {"users", "spawners", "api_tokens"} <= postgresql.tables(database)
    with postgresql.admin(database) as conn:
        users = {row[0] for row in conn.execute("SELECT name FROM users")}
    assert name in users  # the hub's record of the session is in PostgreSQL
    assert not (service.data_dir / "hub" / "jupyterhub.sqlite").exists()

    health = await fetch(f"{service.url}health")
    assert health.code == 200, health.body
    checks = {check["service"]: check for check in json.loads(health.body)["checks"]}
    assert checks["Hub database"] == {"service": "Hub database", "kind": "postgresql", "ok": True}

    config = (service.data_dir / "hub" / "jupyterhub_config.py").read_text()
    assert "os.environ['BINDERBOX_HUB_DB_URL']" in config
    seen = written_text(service.data_dir, service.workdir) + health.body.decode()
    assert postgresql.password not in seen
    assert f"postgresql://binderbox@127.0.0.1:{postgresql.port}/{database}" in service.output()


@module_loop
async def test_a_restarted_hub_finds_its_sessions_in_postgresql(
    service: ServeProcess, repo: Path, postgresql: PgServer
) -> None:
    stream = await build_events(service.url, "git", git_spec(repo))
    assert stream.last.get("phase") == "ready", stream.events[-5:]
    url, token = stream.last["url"], stream.last["token"]
    kernel = await start_kernel(url, token)
    assert await execute(url, token, kernel, "answer = 6 * 7\nprint(answer)") == "42\n"
    # the hub's environment holds the database URL; the session's does not
    code = f"import os\nprint(any({postgresql.password!r} in v for v in os.environ.values()))"
    assert await execute(url, token, kernel, code) == "False\n"

    assert service.stop(signal.SIGHUP) == 0  # the sessions are kept
    service.start()
    client = HubClient(service.hub_api_url, service.api_token)
    user = await client.get_user(user_of(url))
    assert user["servers"][""]["ready"] is True, user
    status = await fetch(f"{url}api/status?token={token}")
    assert status.code == 200, status.body
    assert await execute(url, token, kernel, "print(answer + 1)") == "43\n"
    await end_session(service, {"url": url})
    assert "Traceback" not in service.output()


def refused(work: Path, postgresql: PgServer, extra: str = "", **fields: Any) -> ServeProcess:
    """A ``binderbox serve`` that must not start: its exit status is 1."""
    serve = ServeProcess(work, work / "data", extra, postgresql=True, **fields)
    try:
        with pytest.raises(RuntimeError, match="exited early"):
            serve.start(timeout=120)
        assert serve.proc is not None
        assert serve.proc.wait(timeout=30) == 1
    finally:
        serve.kill()
    assert "Traceback" not in serve.output()
    assert postgresql.password not in serve.output()
    for port in serve.ports.values():  # nothing was left listening
        assert not port_in_use("127.0.0.1", port)
    return serve


def test_a_wrong_password_is_a_plain_error(tmp_path: Path, postgresql: PgServer) -> None:
    serve = refused(tmp_path, postgresql, db_password="not-the-password")
    database = database_name(serve.data_dir)
    assert (
        f"error: The hub database postgresql://binderbox@127.0.0.1:{postgresql.port}/"
        f"{database} cannot be used"
    ) in serve.output()
    assert 'password authentication failed for user "binderbox"' in serve.output()
    assert "Check the user and password" in serve.output()
    assert "not-the-password" not in serve.output()


def test_a_missing_database_and_a_silent_server_are_plain_errors(
    tmp_path: Path, postgresql: PgServer
) -> None:
    missing = f"c.ManagedHub.db_url = 'postgresql://binderbox@127.0.0.1:{postgresql.port}/nodb'"
    serve = refused(tmp_path / "missing", postgresql, missing)
    assert 'database "nodb" does not exist' in serve.output()
    assert "Create the database first" in serve.output()

    silent = f"c.ManagedHub.db_url = 'postgresql://binderbox@127.0.0.1:{free_port()}/x'"
    serve = refused(tmp_path / "silent", postgresql, silent)
    assert "Connection refused" in serve.output()
    assert "error: The hub database postgresql://binderbox@127.0.0.1:" in serve.output()


def test_a_password_file_others_may_read_is_refused(tmp_path: Path, postgresql: PgServer) -> None:
    secret = tmp_path / "readable"
    secret.write_text(postgresql.password + "\n")
    secret.chmod(0o644)
    serve = refused(tmp_path, postgresql, f"c.ManagedHub.db_password_file = {str(secret)!r}")
    assert f"ManagedHub.db_password_file {secret} may be read by other users" in serve.output()
    assert f"chmod 600 {secret}" in serve.output()


async def test_the_password_in_the_url_is_written_nowhere(
    tmp_path: Path, postgresql: PgServer
) -> None:
    data = tmp_path / "data"
    url = postgresql.url(postgresql.create_database(database_name(data)))
    assert postgresql.password in url
    async with running_hub(data, db_url=url) as hub:
        hub_url = hub.database.shown
        assert hub_url == url.replace(f":{postgresql.password}@", "@")  # as the logs say it
        assert (await hub.database.health())["ok"] is True
        ready = await new_session(hub, make_repo(tmp_path / "content", {"a.txt": "a"}), "pg")
        assert (await fetch(f"{ready.url}api/status?token={ready.token}")).code == 200
        assert session_user(ready) in {row[0] for row in _users(postgresql, data)}
    assert postgresql.password not in written_text(data)


def _users(postgresql: PgServer, data: Path) -> list[tuple[Any, ...]]:
    with postgresql.admin(database_name(data)) as conn:
        return list(conn.execute("SELECT name FROM users"))
