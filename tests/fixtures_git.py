"""Real git repositories and a real git daemon for provider tests.

Import the fixtures into a test module (``from tests.fixtures_git import
git_server  # noqa: F401``).  ``git_server`` builds, once per module:

* ``sub.git``: a repository used as a submodule (``subfile.txt``);
* a project (``first`` tagged ``v1`` annotated and ``light`` lightweight;
  ``second`` on ``main`` adding the submodule ``sub``; ``mid`` then ``third``
  on ``feature/x``, so ``mid`` is no branch tip), served as ``o/r.git`` (gh),
  ``group/sub/project.git`` (for ``gl``), ``abc123def.git`` (for ``gist``) and
  ``o/strict.git`` (without ``uploadpack.allowAnySHA1InWant``);
* a ``git daemon`` on 127.0.0.1 serving them at ``git://127.0.0.1:<port>/``.

:class:`GitHttpServer` serves bare repositories over git's smart HTTP protocol
(``git http-backend``), optionally redirecting some paths elsewhere;
:func:`superproject` makes a repository with submodules at any URL.
"""

from __future__ import annotations

import base64
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import unquote

import pytest
from loopback import LoopbackServer

GIT_IDENTITY = {
    "GIT_AUTHOR_NAME": "Test",
    "GIT_AUTHOR_EMAIL": "test@example.org",
    "GIT_COMMITTER_NAME": "Test",
    "GIT_COMMITTER_EMAIL": "test@example.org",
}


def git(*args: str, cwd: Path | None = None) -> str:
    """Run git with a fixed identity and no user/system config; return stdout."""
    env = {
        **os.environ,
        **GIT_IDENTITY,
        "GIT_CONFIG_GLOBAL": "/dev/null",
        "GIT_CONFIG_NOSYSTEM": "1",
    }
    out = subprocess.run(
        ["git", "-c", "init.defaultBranch=main", *args],
        cwd=cwd,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def commit_file(repo: Path, name: str, text: str, message: str) -> str:
    """Write ``name`` in ``repo``, commit it, return the commit sha."""
    (repo / name).write_text(text)
    git("add", name, cwd=repo)
    git("commit", "-q", "-m", message, cwd=repo)
    return git("rev-parse", "HEAD", cwd=repo)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    for _ in range(200):
        if process.poll() is not None:
            raise RuntimeError("git daemon exited")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError("git daemon did not start")


def serve(work: Path, served: Path, allow_any_sha: bool = True) -> None:
    """Publish ``work`` as the bare repository ``served``."""
    served.parent.mkdir(parents=True, exist_ok=True)
    git("clone", "-q", "--bare", str(work), str(served))
    if allow_any_sha:
        git("config", "uploadpack.allowAnySHA1InWant", "true", cwd=served)
    git("config", "uploadpack.allowFilter", "true", cwd=served)


@dataclass
class GitServer:
    """What the ``git_server`` fixture built."""

    base: Path
    port: int
    work: Path
    first: str
    second: str
    mid: str
    third: str
    tag_object: str

    @property
    def url(self) -> str:
        return f"git://127.0.0.1:{self.port}"


@pytest.fixture(scope="module")
def git_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GitServer]:
    root = tmp_path_factory.mktemp("gitserver")
    base = root / "srv"
    base.mkdir()
    port = free_port()
    daemon = subprocess.Popen(
        [
            "git",
            "daemon",
            "--reuseaddr",
            f"--base-path={base}",
            "--export-all",
            "--enable=upload-pack",
            "--listen=127.0.0.1",
            f"--port={port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, daemon)
        yield _build_repositories(root, base, port)
    finally:
        daemon.terminate()
        daemon.wait(timeout=10)


def _build_repositories(root: Path, base: Path, port: int) -> GitServer:
    sub_work = root / "sub-work"
    git("init", "-q", str(sub_work))
    commit_file(sub_work, "subfile.txt", "from the submodule\n", "sub")
    serve(sub_work, base / "sub.git")

    work = root / "work"
    git("init", "-q", str(work))
    first = commit_file(work, "README.md", "version one\n", "first")
    git("tag", "-a", "v1", "-m", "release one", cwd=work)
    git("tag", "light", cwd=work)
    tag_object = git("rev-parse", "v1", cwd=work)
    git(
        "submodule",
        "add",
        "-q",
        f"git://127.0.0.1:{port}/sub.git",
        "sub",
        cwd=work,
    )
    (work / "README.md").write_text("version two\n")
    git("add", "README.md", cwd=work)
    git("commit", "-q", "-m", "second", cwd=work)
    second = git("rev-parse", "HEAD", cwd=work)
    git("checkout", "-q", "-b", "feature/x", cwd=work)
    mid = commit_file(work, "feature.txt", "draft\n", "draft")
    third = commit_file(work, "feature.txt", "feature\n", "third")
    git("checkout", "-q", "main", cwd=work)

    for name in ("o/r.git", "group/sub/project.git", "abc123def.git"):
        serve(work, base / name)
    serve(work, base / "o/strict.git", allow_any_sha=False)
    return GitServer(base, port, work, first, second, mid, third, tag_object)


def superproject(work: Path, submodules: dict[str, str], commit: str) -> Path:
    """Make ``work`` a repository whose one commit has a ``README.md`` and, for
    each ``path -> url`` of ``submodules``, a submodule at ``commit`` declared
    with exactly that URL in ``.gitmodules`` (nothing is fetched)."""
    git("init", "-q", str(work))
    (work / "README.md").write_text("superproject\n")
    git("add", "README.md", cwd=work)
    for path, url in submodules.items():
        git("config", "-f", ".gitmodules", f"submodule.{path}.path", path, cwd=work)
        git("config", "-f", ".gitmodules", f"submodule.{path}.url", url, cwd=work)
        git("update-index", "--add", "--cacheinfo", f"160000,{commit},{path}", cwd=work)
    if submodules:
        git("add", ".gitmodules", cwd=work)
    git("commit", "-q", "-m", "superproject", cwd=work)
    return work


class GitHttpServer(LoopbackServer):
    """A real HTTP server on 127.0.0.1 answering git's smart HTTP protocol by
    running ``git http-backend`` (CGI) over the bare repositories under ``root``.

    ``redirects`` maps a path prefix to a base URL: a request under that prefix
    is answered ``302`` to the base URL plus the rest of the path.  ``requests``
    records every request line (method and path) the server received.  Request
    bodies need a Content-Length (git sends small ones that way).  ``tokens``:
    when given, every request needs HTTP basic auth whose password is one of them
    (a private repository host); others get ``401``.  ``authorizations`` records
    the Authorization headers received.
    """

    def __init__(
        self,
        root: Path,
        redirects: dict[str, str] | None = None,
        tokens: set[str] | None = None,
    ) -> None:
        self.root = root
        self.redirects = dict(redirects or {})
        self.tokens = tokens
        self.requests: list[str] = []
        self.authorizations: list[str] = []
        super().__init__(self._handler())

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                server.answer(self)

            def do_POST(self) -> None:
                server.answer(self)

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler

    def answer(self, req: BaseHTTPRequestHandler) -> None:
        self.requests.append(f"{req.command} {req.path}")
        if self.tokens is not None and not self._authorized(req):
            req.send_response(401)
            req.send_header("WWW-Authenticate", 'Basic realm="private"')
            req.send_header("Content-Length", "0")
            req.end_headers()
            return
        path, _, query = req.path.partition("?")
        for prefix, target in self.redirects.items():
            if path.startswith(prefix):
                req.send_response(302)
                req.send_header("Location", target + req.path[len(prefix) :])
                req.send_header("Content-Length", "0")
                req.end_headers()
                return
        body = req.rfile.read(int(req.headers.get("Content-Length") or 0))
        status, headers, payload = self._backend(req, unquote(path), query, body)
        req.send_response(status)
        for name, value in headers:
            req.send_header(name, value)
        req.send_header("Content-Length", str(len(payload)))
        req.end_headers()
        req.wfile.write(payload)

    def _authorized(self, req: BaseHTTPRequestHandler) -> bool:
        header = req.headers.get("Authorization", "")
        self.authorizations.append(header)
        kind, _, value = header.partition(" ")
        if kind.lower() != "basic":
            return False
        try:
            _user, _, password = base64.b64decode(value).decode().partition(":")
        except ValueError:
            return False
        return password in (self.tokens or set())

    def _backend(
        self, req: BaseHTTPRequestHandler, path: str, query: str, body: bytes
    ) -> tuple[int, list[tuple[str, str]], bytes]:
        env = {
            "PATH": os.environ["PATH"],
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_PROJECT_ROOT": str(self.root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_PROTOCOL": req.headers.get("Git-Protocol", ""),
            "REQUEST_METHOD": req.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "CONTENT_TYPE": req.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "HTTP_CONTENT_ENCODING": req.headers.get("Content-Encoding", ""),
            "REMOTE_ADDR": "127.0.0.1",
        }
        out = subprocess.run(
            ["git", "http-backend"], input=body, env=env, capture_output=True, check=False
        ).stdout
        head, _, payload = out.partition(b"\r\n\r\n")
        status, headers = 200, []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers.append((name, value.strip()))
        return status, headers, payload
