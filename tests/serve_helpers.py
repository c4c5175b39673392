"""Helpers for the ``binderbox serve`` acceptance tests and benchmarks.

:class:`ServeProcess` runs the real command (``python -m binderbox serve``) as
a subprocess, in a working directory holding a ``binderbox_config.py`` that
the tests write: free ports, ``file://`` repositories allowed, the shared uv
cache, a short linger after ``ready``; the hub's database is SQLite, or
PostgreSQL when ``BINDERBOX_TEST_HUB_DB=postgresql`` (tests/pgserver.py: the URL
in the config, its password in a mode-0600 file beside it).  :func:`running_serve` wraps it in a
context manager that stops it with SIGTERM (its sessions with it) and checks it
exits cleanly.

:func:`build_events` is a small event-stream client of ``/build``: it speaks
HTTP/1.1 over a raw connection (chunked decoding included), so a test can stop
reading whenever it likes, and records when each event arrived.

:func:`child_pids` finds the service's managed children (proxy, hub, idle
culler) in its process tree, read from ``/proc``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

from pgserver import hub_db_url, hub_on_postgresql, shared
from session_helpers import delete_every_user
from testcache import CACHE as TEST_CACHE

from binderbox.hub.children import free_port
from binderbox.sessions.hubclient import HubClient

UV_CACHE = TEST_CACHE / "uv"
READY_LINE = "binderbox is running at"


def notice_text(line: str) -> str:
    """A line of the service's stdout as text (its ``message`` with --log-format json)."""
    if line.startswith("{"):
        with contextlib.suppress(ValueError):
            return str(json.loads(line).get("message", line))
    return line


def escaped_file_url(repo: Path) -> str:
    """The ``git`` provider spec part for a local repository: its escaped file URL."""
    return quote(f"file://{repo}", safe="")


def git_spec(repo: Path, ref: str = "HEAD") -> str:
    """``<escaped file URL>/<ref>`` (the part after ``/build/git/``)."""
    return f"{escaped_file_url(repo)}/{ref}"


@dataclass
class ServeProcess:
    """One ``binderbox serve`` subprocess and where it keeps its things.

    ``workdir`` holds ``binderbox_config.py``, ``stdout.log`` and
    ``stderr.log``; ``data_dir`` is the service's data directory.  ``ports``
    (``public``, ``hub``, ``api``) are kept across restarts.
    """

    workdir: Path
    data_dir: Path
    extra_config: str = ""
    ports: dict[str, int] = field(default_factory=dict)
    #: more environment variables of the process (secrets such as the OAuth client's)
    env: dict[str, str] = field(default_factory=dict)
    #: the hub on the run's PostgreSQL server (default: ``BINDERBOX_TEST_HUB_DB``)
    postgresql: bool = field(default_factory=hub_on_postgresql)
    #: the password written for it (None: the right one)
    db_password: str | None = None
    proc: subprocess.Popen[bytes] | None = None
    url: str = ""
    #: more arguments of ``binderbox serve`` (e.g. ``--log-format json``)
    args: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if not self.ports:
            self.ports = {"public": free_port(), "hub": free_port(), "api": free_port()}

    def database_lines(self) -> list[str]:
        """The config lines of the hub's database (none: SQLite); the password goes to
        ``<workdir>/db_password`` (mode 0600)."""
        if not self.postgresql:
            return []
        url = hub_db_url(self.data_dir, password=None, postgresql=True)
        secret = self.workdir / "db_password"
        fd = os.open(secret, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write((self.db_password or shared().password) + "\n")
        return [
            f"c.ManagedHub.db_url = {url!r}",
            f"c.ManagedHub.db_password_file = {str(secret)!r}",
        ]

    def config_text(self) -> str:
        """The ``binderbox_config.py`` this process runs with."""
        lines = [
            *self.database_lines(),
            "c = get_config()  # noqa: F821",
            "c.LaunchPipeline.allow_local = True",
            f"c.PythonBuilder.cache_dir = {str(UV_CACHE)!r}",
            "c.ManagedHub.public_ip = '127.0.0.1'",
            f"c.ManagedHub.public_port = {self.ports['public']}",
            f"c.ManagedHub.hub_port = {self.ports['hub']}",
            f"c.ManagedHub.proxy_api_port = {self.ports['api']}",
            "c.WebApp.ready_linger_seconds = 1",
            self.extra_config,
        ]
        return "\n".join(lines) + "\n"

    @property
    def stdout_path(self) -> Path:
        return self.workdir / "stdout.log"

    @property
    def stderr_path(self) -> Path:
        return self.workdir / "stderr.log"

    def output(self) -> str:
        """Everything the process printed so far (stdout, then stderr)."""
        texts = []
        for path in (self.stdout_path, self.stderr_path):
            with contextlib.suppress(OSError):
                texts.append(path.read_text(errors="replace"))
        return "\n".join(texts)

    def start(self, timeout: float = 120) -> str:
        """Start the service; return its public URL once it says it is running."""
        assert self.proc is None, "already running"
        UV_CACHE.mkdir(parents=True, exist_ok=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "binderbox_config.py").write_text(self.config_text())
        out = self.stdout_path.open("ab")
        err = self.stderr_path.open("ab")
        start_at = self.stdout_path.stat().st_size
        with out, err:
            self.proc = subprocess.Popen(
                [
                    *(sys.executable, "-m", "binderbox", "serve"),
                    *("--data-dir", str(self.data_dir), *self.args),
                ],
                cwd=self.workdir,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.stdout_path.read_bytes()[start_at:].decode(errors="replace")
            for line in map(notice_text, text.splitlines()):
                if line.startswith(READY_LINE):
                    self.url = line[len(READY_LINE) :].strip()
                    return self.url
            if self.proc.poll() is not None:
                raise RuntimeError(f"binderbox serve exited early:\n{self.output()[-4000:]}")
            time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"binderbox serve did not start:\n{self.output()[-4000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60) -> int:
        """Send ``sig`` (SIGTERM: sessions stop too; SIGHUP: they are kept), wait,
        return the exit status (killed after ``timeout``: -9)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return 0
        proc.send_signal(sig)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return -9

    def kill(self) -> None:
        """Stop hard (for clean-ups after a failure)."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()

    def stop_sessions(self) -> None:
        """End every session of this service (they outlive ``serve`` by design).

        Deletes every hub user through the hub's API; the service must be
        running.  Safe to call from inside or outside an event loop.
        """
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, self.astop_sessions()).result(timeout=120)

    async def astop_sessions(self) -> None:
        """:meth:`stop_sessions` as a coroutine."""
        await delete_every_user(HubClient(self.hub_api_url, self.api_token))

    def children(self) -> dict[str, int]:
        """The service's running proxy, hub and culler pids (see :func:`child_pids`)."""
        assert self.proc is not None, "not running"
        return child_pids(self.proc.pid)

    @property
    def hub_api_url(self) -> str:
        """The hub's REST API, where the service's hub config says the hub listens (the
        sandbox bridge's gateway where sessions get networks of their own)."""
        config = (self.data_dir / "hub" / "jupyterhub_config.py").read_text()
        found = re.search(r"^c\.JupyterHub\.hub_ip = '([^']+)'$", config, re.MULTILINE)
        address = found.group(1) if found else "127.0.0.1"
        return f"http://{address}:{self.ports['hub']}/hub/api/"

    @property
    def api_token(self) -> str:
        """binderbox's service token for the hub API."""
        return (self.data_dir / "hub" / "service_token").read_text().strip()

    async def web_app_port(self) -> int:
        """The port of the web app itself (on 127.0.0.1), read from the proxy's
        routing table (its ``/`` route)."""
        token = (self.data_dir / "hub" / "proxy_token").read_text().strip()
        proxy_api = HubClient(f"http://127.0.0.1:{self.ports['api']}/api/", token)
        routes = await proxy_api.request("GET", "routes")
        port = urlsplit(routes["/"]["target"]).port
        assert port is not None, routes
        return port

    def logs(self) -> dict[str, str]:
        """What the service logged so far: its own output (``serve``) and each
        child's log (``proxy``, ``hub``, ``culler``)."""
        logs = {"serve": self.output()}
        for path in sorted((self.data_dir / "logs").glob("*.log")):
            logs[path.stem] = path.read_text(errors="replace")
        return logs


# -- the process tree ----------------------------------------------------------------


def _parent_pid(stat: str) -> int:
    """The ppid field of a ``/proc/<pid>/stat`` line (after the ``(comm)`` field)."""
    return int(stat[stat.rindex(")") + 2 :].split()[1])


def _kind(argv: list[str]) -> str:
    """``proxy``, ``hub``, ``culler`` or '' for a command line."""
    if any(arg.endswith("configurable-http-proxy") for arg in argv[:2]):
        return "proxy"
    if argv[1:3] == ["-m", "jupyterhub"]:
        return "hub"
    if argv[1:3] == ["-m", "jupyterhub_idle_culler"]:
        return "culler"
    return ""


def child_pids(parent: int) -> dict[str, int]:
    """The running managed children of ``parent`` (``binderbox serve``) by kind:
    ``proxy``, ``hub``, ``culler`` -> pid.  Zombies do not count."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:  # gone meanwhile
            continue
        zombie = stat[stat.rindex(")") + 2] == "Z"
        if _parent_pid(stat) == parent and not zombie and (kind := _kind(argv)):
            found[kind] = int(entry.name)
    return found


@contextlib.contextmanager
def running_serve(
    workdir: Path,
    data_dir: Path | None = None,
    extra_config: str = "",
    env: dict[str, str] | None = None,
    ports: dict[str, int] | None = None,
    args: list[str] | None = None,
) -> Iterator[ServeProcess]:
    """A started :class:`ServeProcess` (``env`` added to its environment, on ``ports``
    when given: ``public``, ``hub``, ``api``; ``args`` more arguments); on exit its
    sessions are ended, then it gets SIGTERM and must exit with status 0, having
    printed no traceback."""
    serve = ServeProcess(
        workdir,
        data_dir or workdir / "data",
        extra_config,
        ports=ports or {},
        env=env or {},
        args=args or [],
    )
    serve.start()
    status: int | None = None
    try:
        yield serve
    finally:
        try:
            if serve.proc is not None:
                with contextlib.suppress(Exception):
                    serve.stop_sessions()
            status = serve.stop()
        finally:
            serve.kill()
    assert status == 0, f"binderbox serve exited with {status}:\n{serve.output()[-4000:]}"
    assert "Traceback" not in serve.output(), serve.output()[-4000:]


# -- the event-stream client ---------------------------------------------------


@dataclass
class Stream:
    """What one ``/build`` request received: status, events, arrival times."""

    status: int = 0
    events: list[dict[str, Any]] = field(default_factory=list)
    #: seconds since the request was sent, one per event
    times: list[float] = field(default_factory=list)

    @property
    def phases(self) -> list[str]:
        return [e.get("phase", "") for e in self.events]

    @property
    def last(self) -> dict[str, Any]:
        return self.events[-1] if self.events else {}

    def of(self, phase: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e.get("phase") == phase]

    def time_of(self, phase: str) -> float:
        """Arrival time of the first event of ``phase``."""
        return next(t for e, t in zip(self.events, self.times, strict=True) if e["phase"] == phase)


async def read_chunks(reader: asyncio.StreamReader, chunked: bool) -> AsyncIterator[bytes]:
    """A response body as it arrives: chunked transfer decoding, else until EOF."""
    if not chunked:
        while data := await reader.read(65536):
            yield data
        return
    while True:
        size_line = await reader.readline()
        if not size_line:
            return
        size = int(size_line.split(b";")[0].strip() or b"0", 16)
        if size == 0:
            return
        data = await reader.readexactly(size)
        await reader.readexactly(2)
        yield data


async def sse_request(
    url: str,
    *,
    until_terminal: bool = True,
    accept: str = "text/event-stream",
    source: str | None = None,
) -> AsyncIterator[tuple[float, dict[str, Any] | int]]:
    """GET ``url``; yield ``(0.0, status)`` first, then ``(seconds, event)`` for each
    ``data:`` frame.  Stops after ``ready``/``failed`` when ``until_terminal``.

    ``source``: the local address to connect from (another loopback address, e.g.
    ``127.0.0.2``, is another client address for the service)."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    started = time.monotonic()
    local = (source, 0) if source else None
    reader, writer = await asyncio.open_connection(host, port, local_addr=local)
    try:
        request = (
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nAccept: {accept}\r\n"
            "Cache-Control: no-cache\r\nConnection: close\r\n\r\n"
        )
        writer.write(request.encode())
        await writer.drain()
        head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
        status_line, *header_lines = head.strip().split("\r\n")
        headers = {}
        for line in header_lines:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        yield 0.0, int(status_line.split()[1])
        chunked = "chunked" in headers.get("transfer-encoding", "")
        buffer = b""
        async for chunk in read_chunks(reader, chunked):
            buffer += chunk
            while b"\n\n" in buffer:
                frame, buffer = buffer.split(b"\n\n", 1)
                for line in frame.decode(errors="replace").splitlines():
                    if line.startswith("data:"):
                        event = json.loads(line[5:].strip())
                        yield time.monotonic() - started, event
                        if until_terminal and event.get("phase") in ("ready", "failed"):
                            return
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()


async def build_events(
    base_url: str,
    provider: str,
    spec: str,
    query: str = "",
    limit: float = 600,
    source: str | None = None,
) -> Stream:
    """Launch ``<provider>/<spec>`` through ``/build``; the events up to ready/failed
    (``source``: as :func:`sse_request`'s)."""
    url = f"{base_url.rstrip('/')}/build/{provider}/{spec}" + (f"?{query}" if query else "")
    result = Stream()
    async with asyncio.timeout(limit):
        async for seconds, item in sse_request(url, source=source):
            if isinstance(item, int):
                result.status = item
            else:
                result.events.append(item)
                result.times.append(seconds)
    return result


# -- sessions --------------------------------------------------------------------


def user_of(url: str) -> str:
    """The hub user of a session URL ``.../user/<name>/``."""
    return url.rstrip("/").rsplit("/", 1)[-1]


async def end_session(serve: ServeProcess, ready: dict[str, Any]) -> None:
    """Delete the session's (temporary) hub user: stops the server, removes its home."""
    await HubClient(serve.hub_api_url, serve.api_token).delete_user(user_of(ready["url"]))
