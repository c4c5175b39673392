"""The service's own fetches for a visitor obey the destination policy.

Datasets (``DataCache.allow_private_hosts``) and repositories
(``RepoProvider.allow_private_hosts``) on loopback, on a private address, or
redirecting there, are refused with a plain message unless their setting
allows them; networks in ``Destinations.allowed`` pass for both; the address
checked is the address connected to.

Real components: a real test host on a private address in a network namespace
(tests/nethosts.py) serving a file and a bare repository over git's dumb HTTP
protocol; HTTP servers on loopback (tests/data_helpers.py, smart-HTTP git in
tests/fixtures_git.py) and a git daemon; the real cache, fetchers, providers
and git.  Where a test needs a DNS answer that changes after the check (this
machine's resolver cannot be pointed at a server that does that), it stands
in for one and says so: a resolver that answers once (datasets), a pin
recorded by hand (git).
"""

from __future__ import annotations

import ipaddress
import itertools
import json
import ssl
import subprocess
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from data_helpers import FileServer
from nethosts import NamespaceHost, namespace_host
from traitlets.config import Config, Configurable

from binderbox.data import DataCache
from binderbox.data.fetchers.base import FetchContext
from binderbox.data.fetchers.guard import AddrInfo, Guard
from binderbox.data.fetchers.http import read_document
from binderbox.data.fetchers.zenodo import ZenodoFetcher
from binderbox.data.requirement import parse_requirements
from binderbox.errors import DataError, FetchError, RepositoryNotFound, SpecNotAllowed
from binderbox.providers import GitProvider, make_provider
from binderbox.providers.policy import enforce_policy
from binderbox.runtime.destinations import Destinations
from tests.fixtures_git import (
    GitHttpServer,
    GitServer,
    commit_file,
    free_port,
    git,
    git_server,
    serve,
    superproject,
)

__all__ = ["git_server"]  # the fixture, re-exported for pytest

#: a public address no test sends to (through a proxy, only the proxy is contacted)
PUBLIC_V4 = "93.184.216.34"
DATA = b"dataset bytes\n"
PRIVATE_MESSAGE = "Dataset 'p' is not allowed: {host} is on a private network."
_caches = itertools.count()


@pytest.fixture(scope="module")
def private(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[NamespaceHost, str]]:
    """A test host on a private address serving ``data.txt`` and ``r.git`` (dumb
    HTTP); with the sha of ``r.git``'s HEAD."""
    root = tmp_path_factory.mktemp("private-host")
    (root / "data.txt").write_bytes(DATA)
    work = root.parent / "private-work"
    git("init", "-q", str(work))
    sha = commit_file(work, "README.md", "from the private host\n", "private")
    git("clone", "-q", "--bare", str(work), str(root / "r.git"))
    git("update-server-info", cwd=root / "r.git")
    with namespace_host("10.253.0.0/16", root, port=free_port()) as host:
        yield host, sha


# -- datasets ---------------------------------------------------------------------


def data_cache(
    tmp_path: Path, *, allow: bool = False, allowed: list[str] | None = None
) -> DataCache:
    """A new cache with ``DataCache.allow_private_hosts = allow`` and
    ``Destinations.allowed = allowed``, as an operator's config sets them."""
    config = Config(
        {"DataCache": {"allow_private_hosts": allow}, "Destinations": {"allowed": allowed or []}}
    )
    root = tmp_path / f"cache-{next(_caches)}"
    return DataCache(config=config, root=str(root), min_idle=0.0)


async def fetch(cache: DataCache, src: str) -> bytes:
    """Fetch ``src`` as dataset ``p``; the one file it holds."""
    entries = parse_requirements(json.dumps({"src": src, "projectName": "p"}))
    folders = cache.folders(entries)
    try:
        async for _ in cache.ensure(folders):
            pass
        (path,) = (p for p in cache.mounts(folders)["p"].rglob("*") if p.is_file())
        return path.read_bytes()
    finally:
        await cache.aclose()


async def refused(cache: DataCache, src: str) -> DataError:
    """Fetching ``src`` fails as a plain, private-host DataError; nothing is left."""
    with pytest.raises(DataError) as info:
        await fetch(cache, src)
    err = info.value
    assert err.status_code == 403 and err.reason == "data_private_host"
    assert err.hint == "This service only downloads datasets from public hosts."
    assert "\n" not in err.user_message and "allow_private_hosts" not in err.user_message
    assert "c.DataCache.allow_private_hosts = True" in err.log_message  # the operator's hint
    assert list((Path(cache.root) / "datasets").iterdir()) == []
    assert list((Path(cache.root) / "tmp").iterdir()) == []
    return err


@pytest.fixture
def server() -> Iterator[FileServer]:
    srv = FileServer()
    srv.add("/data.txt", DATA)
    yield srv
    srv.close()


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost"])
async def test_dataset_on_loopback(server: FileServer, tmp_path: Path, host: str) -> None:
    """``localhost`` is resolved where the service connects, and refused there."""
    src = server.url("/data.txt").replace("127.0.0.1", host)
    err = await refused(data_cache(tmp_path), src)
    assert err.message == PRIVATE_MESSAGE.format(host=host)
    assert server.hits["/data.txt"] == 0
    assert await fetch(data_cache(tmp_path, allow=True), src) == DATA


async def test_dataset_on_a_private_host(
    private: tuple[NamespaceHost, str], tmp_path: Path
) -> None:
    host, _ = private
    src = f"{host.url}data.txt"
    err = await refused(data_cache(tmp_path), src)
    assert err.message == PRIVATE_MESSAGE.format(host=host.address)
    assert await fetch(data_cache(tmp_path, allow=True), src) == DATA


async def test_allowed_network_passes(private: tuple[NamespaceHost, str], tmp_path: Path) -> None:
    host, _ = private
    cache = data_cache(tmp_path, allowed=[f"{host.address}/32"])
    assert await fetch(cache, f"{host.url}data.txt") == DATA


async def test_redirect_to_a_private_host(
    server: FileServer, private: tuple[NamespaceHost, str], tmp_path: Path
) -> None:
    """The first hop is allowed (``Destinations.allowed``), the hop it redirects to is not."""
    host, _ = private
    src = server.add("/go", status=302, headers={"Location": f"{host.url}data.txt"})
    err = await refused(data_cache(tmp_path, allowed=["127.0.0.1/32"]), src)
    assert err.message == (
        f"Dataset 'p' is not allowed: {host.address} is on a private network "
        "(the server redirected there)."
    )
    assert server.hits["/go"] == 1
    assert await fetch(data_cache(tmp_path, allow=True), src) == DATA


async def test_redirect_to_loopback(server: FileServer, tmp_path: Path) -> None:
    other = FileServer("127.0.0.2")
    try:
        other.add("/data.txt", DATA)
        src = server.add("/go", status=302, headers={"Location": other.url("/data.txt")})
        err = await refused(data_cache(tmp_path, allowed=["127.0.0.1/32"]), src)
        assert "127.0.0.2 is on a private network (the server redirected there)" in err.message
        assert other.hits["/data.txt"] == 0
        assert await fetch(data_cache(tmp_path, allow=True), src) == DATA
        assert other.hits["/data.txt"] == 1
    finally:
        other.close()


@pytest.fixture
def tls_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FileServer]:
    """:class:`FileServer` over TLS with a certificate for ``localhost`` that this
    process trusts (``SSL_CERT_FILE``)."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    self_signed = ["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1"]
    names = ["-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost"]
    files = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        ["openssl", *self_signed, *names, *files],
        check=True,
        capture_output=True,
        timeout=60,
    )
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    srv = FileServer()
    srv.add("/data.txt", DATA)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    srv.httpd.socket = context.wrap_socket(srv.httpd.socket, server_side=True)
    yield srv
    srv.close()


async def test_https_keeps_the_name(tls_server: FileServer, tmp_path: Path) -> None:
    """https through the checked connection: the certificate is checked against the
    name (the TLS server name), while the socket goes to the address checked."""
    port = tls_server.base.rsplit(":", 1)[1]
    url = f"https://localhost:{port}/data.txt"
    err = await refused(data_cache(tmp_path), url)
    assert err.message == PRIVATE_MESSAGE.format(host="localhost")
    assert await fetch(data_cache(tmp_path, allowed=["127.0.0.1/32"]), url) == DATA
    with pytest.raises(DataError, match="certificate"):  # issued to localhost, not 127.0.0.1
        await fetch(data_cache(tmp_path, allow=True), f"https://127.0.0.1:{port}/data.txt")


@pytest.mark.parametrize("target", ["file:///etc/passwd", "ftp://127.0.0.1/data.txt"])
async def test_redirect_to_another_scheme(server: FileServer, tmp_path: Path, target: str) -> None:
    """Refused even with private hosts allowed: only http and https are downloaded."""
    src = server.add("/go", status=302, headers={"Location": target})
    with pytest.raises(DataError) as info:
        await fetch(data_cache(tmp_path, allow=True), src)
    assert info.value.message == (
        f"Dataset 'p' could not be fetched from {src}: the server redirected to {target}, "
        "which is not an http or https URL."
    )


async def test_links_in_api_answers_are_checked(
    server: FileServer, private: tuple[NamespaceHost, str], tmp_path: Path
) -> None:
    """A Zenodo record (its API allowed) whose file link points at a private host."""
    host, _ = private
    record = {"files": [{"key": "data.txt", "links": {"self": f"{host.url}data.txt"}}]}
    server.add("/api/records/123", json.dumps(record).encode())
    cache = data_cache(tmp_path, allowed=["127.0.0.1/32"])
    for fetcher in cache.fetchers:
        if isinstance(fetcher, ZenodoFetcher):
            fetcher.api_url = server.url("/api")
    err = await refused(cache, "10.5281/zenodo.123")
    assert err.message == PRIVATE_MESSAGE.format(host=host.address)


async def test_an_operators_proxy(
    server: FileServer,
    private: tuple[NamespaceHost, str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With ``http_proxy`` set, the connection goes to the proxy (on loopback: the
    operator's choice, not checked); the target's name is checked before."""
    host, _ = private
    for name in ("no_proxy", "NO_PROXY", "HTTP_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("http_proxy", server.base)  # it answers for any URL's path
    public = f"http://{PUBLIC_V4}/data.txt"
    assert await fetch(data_cache(tmp_path), public) == DATA
    assert server.hits["/data.txt"] == 1
    err = await refused(data_cache(tmp_path), f"{host.url}data.txt")
    assert err.message == PRIVATE_MESSAGE.format(host=host.address)
    assert server.hits["/data.txt"] == 1  # the proxy was not asked


@dataclass(frozen=True)
class AnswersOnce(Guard):
    """Stands in for a DNS server that answers an allowed address first and a
    blocked one afterwards (DNS rebinding): the connection uses the one answer."""

    answers: list[str] = field(default_factory=list)

    def resolve(self, host: str, port: int) -> Sequence[AddrInfo]:
        return super().resolve(self.answers.pop(0), port)


async def test_the_address_checked_is_the_address_connected_to(server: FileServer) -> None:
    other = FileServer("127.0.0.2")
    try:
        other.add("/data.txt", b"rebound\n")
        allowed = Destinations(allowed=["127.0.0.1/32"])
        guard = AnswersOnce(allowed, answers=["127.0.0.1", "127.0.0.2"])
        port = server.base.rsplit(":", 1)[1]
        entry = parse_requirements(json.dumps({"src": "x", "projectName": "p"}))[0]
        ctx = FetchContext(emit=lambda event: None, limit=1 << 20, deadline=1e12, guard=guard)
        body, _ = read_document(f"http://rebind.test:{port}/data.txt", ctx, entry)
        assert body == DATA
        assert guard.answers == ["127.0.0.2"]  # asked once
        assert other.hits["/data.txt"] == 0
    finally:
        other.close()


# -- repositories -----------------------------------------------------------------


def provider(url: str, **config: Any) -> GitProvider:
    """The ``git/`` provider of ``url`` with ``config`` sections (as the pipeline's)."""
    parent = Configurable(config=Config(config))
    spec = f"git/{quote(url, safe='')}/HEAD"
    made = make_provider(spec, parent=parent, allow_local=False)
    assert isinstance(made, GitProvider)
    return made


async def test_repository_on_a_private_host(
    private: tuple[NamespaceHost, str], tmp_path: Path
) -> None:
    host, sha = private
    url = f"{host.url}r.git"
    with pytest.raises(SpecNotAllowed) as info:
        await enforce_policy(provider(url))
    assert info.value.message == (
        f"The repository URL is not allowed: {host.address} is on a private network."
    )
    allowed = provider(url, GitProvider={"allow_private_hosts": True})
    await enforce_policy(allowed)
    resolved = await allowed.resolve()
    assert resolved.version == sha
    lines: list[str] = []
    await allowed.fetch(resolved, tmp_path / "dest", lines.append)
    assert (tmp_path / "dest" / "README.md").read_text() == "from the private host\n"
    # dumb HTTP serves no shallow fetch: the visitor sees the fallback, not git's error
    assert "The server does not serve that commit directly" in "\n".join(lines)
    assert not [line for line in lines if "fatal:" in line or "dumb http" in line], lines


async def test_repository_redirect_to_a_private_host(
    private: tuple[NamespaceHost, str], tmp_path: Path
) -> None:
    """The first hop is allowed (``Destinations.allowed``); git does not follow its
    redirect to the private host unless private hosts are allowed."""
    host, sha = private
    public = GitHttpServer(tmp_path, {"/moved/": host.url})
    try:
        url = f"{public.url}/moved/r.git"
        strict = provider(url, Destinations={"allowed": ["127.0.0.1/32"]})
        await enforce_policy(strict)
        with pytest.raises(RepositoryNotFound) as info:
            await strict.resolve()
        assert "redirect" in info.value.message
        lenient = provider(url, GitProvider={"allow_private_hosts": True})
        await enforce_policy(lenient)
        assert (await lenient.resolve()).version == sha
    finally:
        public.close()


@pytest.fixture(scope="module")
def smart_http(git_server: GitServer) -> Iterator[GitHttpServer]:
    served = GitHttpServer(git_server.base)
    yield served
    served.close()


async def test_git_over_http_connects_to_the_address_checked(
    git_server: GitServer, smart_http: GitHttpServer, tmp_path: Path
) -> None:
    """``localhost`` allowed (``Destinations.allowed``): checked once, and every git
    command is told that address (curl's resolve list), submodules included."""
    port = smart_http.url.rsplit(":", 1)[1]
    url = f"http://localhost:{port}/o/r.git"
    p = provider(url, Destinations={"allowed": ["127.0.0.1/32"]})
    await enforce_policy(p)
    assert p.fetch_config()["http.curloptResolve"] == (f"localhost:{port}:127.0.0.1",)
    resolved = await p.resolve()
    assert resolved.version == git_server.second
    await p.fetch(resolved, tmp_path / "dest", lambda line: None)
    assert (tmp_path / "dest" / "sub" / "subfile.txt").is_file()  # git:// submodule on 127.0.0.1


async def test_git_uses_the_pin_not_a_new_lookup(
    private: tuple[NamespaceHost, str], tmp_path: Path
) -> None:
    """Stands in for a DNS answer that changed after the check: the pin says the
    private test host, ``localhost`` resolves to 127.0.0.1 (where nothing serves
    that port); git fetches from the test host, so it did not look the name up."""
    host, sha = private
    url = f"http://localhost:{host.port}/r.git"
    p = provider(url)
    p.pins.record(url, [ipaddress.ip_address(host.address)])
    resolved = await p.resolve()
    assert resolved.version == sha
    await p.fetch(resolved, tmp_path / "dest", lambda line: None)
    assert (tmp_path / "dest" / "README.md").read_text() == "from the private host\n"
    with pytest.raises(RepositoryNotFound):  # without the pin: 127.0.0.1, nobody there
        await provider(url).resolve()


async def test_git_protocol_connects_to_the_address_checked(git_server: GitServer) -> None:
    """``git://`` (git's own connection): the URL is rewritten to the address checked."""
    url = f"git://localhost:{git_server.port}/o/r.git"
    p = provider(url, Destinations={"allowed": ["127.0.0.1/32"]})
    await enforce_policy(p)
    rewrite = f"url.git://127.0.0.1:{git_server.port}/.insteadOf"
    assert p.fetch_config()[rewrite] == (f"git://localhost:{git_server.port}/",)
    assert (await p.resolve()).version == git_server.second
    # stands in for a changed DNS answer: pinned where no daemon listens, git goes there
    elsewhere = provider(url)
    elsewhere.pins.record(url, [ipaddress.ip_address("127.0.0.2")])
    with pytest.raises(RepositoryNotFound):
        await elsewhere.resolve()


async def test_submodule_hosts_are_pinned(
    git_server: GitServer, smart_http: GitHttpServer, tmp_path: Path
) -> None:
    """The superproject by IP address (no pin), its submodule by name: the name's
    check is what git is told."""
    port = smart_http.url.rsplit(":", 1)[1]
    sub = git("rev-parse", "HEAD", cwd=git_server.base / "sub.git")
    work = superproject(tmp_path / "work", {"lib": f"http://localhost:{port}/sub.git"}, sub)
    serve(work, git_server.base / "o" / f"{tmp_path.name}.git")
    url = f"{smart_http.url}/o/{tmp_path.name}.git"
    p = provider(url, Destinations={"allowed": ["127.0.0.1/32"]})
    await enforce_policy(p)
    assert "http.curloptResolve" not in p.fetch_config()
    await p.fetch(await p.resolve(), tmp_path / "dest", lambda line: None)
    assert (tmp_path / "dest" / "lib" / "subfile.txt").is_file()
    assert p.fetch_config()["http.curloptResolve"] == (f"localhost:{port}:127.0.0.1",)


async def test_a_host_that_did_not_resolve_is_not_looked_up_again() -> None:
    p = provider("https://no-such-host.invalid/r.git")
    await enforce_policy(p)  # passes: nothing to check
    with pytest.raises(RepositoryNotFound) as info:
        await p.resolve()
    assert "did not resolve when the policy checked it" in info.value.log_message
    assert (
        info.value.message
        == "Could not connect to no-such-host.invalid: its name does not resolve."
    )


async def test_a_submodule_host_that_did_not_resolve_is_not_looked_up_again(
    git_server: GitServer, tmp_path: Path
) -> None:
    sub = git("rev-parse", "HEAD", cwd=git_server.base / "sub.git")
    work = superproject(tmp_path / "work", {"lib": "https://no-such-host.invalid/sub.git"}, sub)
    serve(work, git_server.base / "o" / f"{tmp_path.name}.git")
    p = make_provider(
        f"gh/o/{tmp_path.name}/HEAD",
        parent=Configurable(config=Config({"GitHubProvider": {"clone_host": git_server.url}})),
    )
    assert isinstance(p, GitProvider)
    dest = tmp_path / "dest"
    with pytest.raises(FetchError) as info:
        await p.fetch(await p.resolve(), dest, lambda line: None)
    assert info.value.message == f"Could not fetch the submodules of {p.repo_url}."
    assert "'lib'" in info.value.log_message and "does not resolve" in info.value.log_message
    assert list(dest.iterdir()) == []
