"""Operator policy: spec patterns and visitor-chosen hosts (no internet needed:
literal IPs and ``localhost`` resolve locally), and the same rules while
fetching: HTTP redirects (real smart-HTTP servers on 127.0.0.1, one
redirecting to the other) and submodule URLs (real repositories whose
``.gitmodules`` point at file://, loopback and other refused URLs).

Fetch tests build providers with ``allow_private_hosts=False`` and call
``resolve()``/``fetch()`` directly: the provider does not re-check its own
URL (``enforce_policy`` does, before), so they reach their servers on
127.0.0.1 while everything git would reach beyond that URL is checked.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from traitlets import TraitError
from traitlets.config import Config, Configurable

from binderbox.errors import BinderboxError, FetchError, RepositoryNotFound, SpecNotAllowed
from binderbox.providers import GitProvider, make_provider
from binderbox.providers.base import RepoProvider
from binderbox.providers.gitutil import run_git
from binderbox.providers.policy import (
    UrlRules,
    enforce_policy,
    url_host,
    url_origin,
    url_refusal,
)
from tests.fixtures_git import (
    GitHttpServer,
    GitServer,
    commit_file,
    git,
    git_server,
    serve,
    superproject,
)

__all__ = ["git_server"]  # the fixture, re-exported for pytest

PUBLIC_V4 = "93.184.216.34"
PUBLIC_V6 = "2606:2800:220:1:248:1893:25c8:1946"


def parent(config: dict[str, dict[str, Any]] | None = None) -> Configurable:
    """A Configurable holding ``config``, as the pipeline is for its providers."""
    return Configurable(config=Config(config or {}))


def provider(spec: str, config: dict[str, dict[str, Any]] | None = None) -> RepoProvider:
    return make_provider(spec, parent=parent(config), allow_local=False)


def git_spec(url: str, ref: str = "main") -> str:
    return f"git/{quote(url, safe='')}/{ref}"


async def refused(p: RepoProvider) -> SpecNotAllowed:
    with pytest.raises(SpecNotAllowed) as info:
        await enforce_policy(p)
    err = info.value
    assert err.status_code == 403
    assert "\n" not in err.user_message and "Traceback" not in err.user_message
    return err


# -- spec patterns ----------------------------------------------------------------

BANNED = {"GitHubProvider": {"banned_specs": ["^evil-org/.*", "^someone/mining"]}}


@pytest.mark.parametrize(
    "spec",
    [
        "gh/evil-org/anything/main",
        "gh/EVIL-ORG/Anything/HEAD",  # BinderHub ignores case
        "https://github.com/evil-org/repo",  # URL form becomes the same gh spec
        "gh/someone/mining-rig/v1",
    ],
)
async def test_banned_spec_is_refused(spec: str) -> None:
    err = await refused(provider(spec, BANNED))
    assert err.message.startswith("Sorry, ")
    assert err.message.endswith(
        "has been temporarily disabled from launching. Please contact admins for more info!"
    )
    assert err.reason == "banned"


async def test_banned_message_names_the_spec() -> None:
    err = await refused(provider("gh/evil-org/repo/main", BANNED))
    assert "evil-org/repo/main" in err.message


@pytest.mark.parametrize("spec", ["gh/good/repo/main", "gh/someone/other/main"])
async def test_unbanned_specs_pass(spec: str) -> None:
    await enforce_policy(provider(spec, BANNED))


async def test_bans_are_per_provider_class() -> None:
    await enforce_policy(provider("gl/evil-org%2Frepo/main", BANNED))


async def test_ban_matches_the_unescaped_spec_too() -> None:
    config = {"GitLabProvider": {"banned_specs": ["^group/project"]}}
    for spec in ("gl/group%2Fproject/main", "gl/group%2fproject/main"):
        await refused(provider(spec, config))
    await enforce_policy(provider("gl/group%2Fother/main", config))


async def test_ban_written_escaped_still_works() -> None:
    config = {"GitLabProvider": {"banned_specs": ["^group%2Fproject"]}}
    await refused(provider("gl/group%2Fproject/main", config))


async def test_banned_git_url_message_hides_credentials() -> None:
    config = {"GitProvider": {"banned_specs": ["^https://[^/]*example.org/"]}}
    err = await refused(provider(git_spec("https://user:s3cret@example.org/r.git"), config))
    assert "s3cret" not in err.user_message and "s3cret" not in err.log_message
    assert "example.org/r.git" in err.message


ALLOWED = {"GitHubProvider": {"allowed_specs": ["^roboneurolibre/.*"]}}


async def test_allowed_specs_restrict_launches() -> None:
    await enforce_policy(provider("gh/roboneurolibre/paper-1/main", ALLOWED))
    err = await refused(provider("gh/someone/else/main", ALLOWED))
    assert err.message == "someone/else/main is not allowed on this service."


async def test_banned_applies_within_allowed() -> None:
    config = {
        "GitHubProvider": {"allowed_specs": ["^roboneurolibre/.*"], "banned_specs": [".*/bad"]}
    }
    err = await refused(provider("gh/roboneurolibre/bad/main", config))
    assert "temporarily disabled" in err.message
    await enforce_policy(provider("gh/roboneurolibre/good/main", config))


async def test_allowed_prefix_cannot_be_escaped_with_dot_segments() -> None:
    config = {
        "GitProvider": {
            "allowed_specs": [f"^https://{PUBLIC_V4}/ok/"],
        }
    }
    await enforce_policy(provider(git_spec(f"https://{PUBLIC_V4}/ok/repo.git"), config))
    await refused(provider(git_spec(f"https://{PUBLIC_V4}/ok/../secret/repo.git"), config))


async def test_empty_allowed_specs_allow_everything() -> None:
    await enforce_policy(provider("gh/anyone/anything/main", {}))


def test_high_quota_specs() -> None:
    config = {"GitHubProvider": {"high_quota_specs": ["^jupyterlab/.*", "^ipython/ipython"]}}
    assert provider("gh/jupyterlab/jupyterlab-demo/HEAD", config).is_high_quota()
    assert provider("gh/IPython/ipython-in-depth/main", config).is_high_quota()
    assert not provider("gh/someone/else/main", config).is_high_quota()
    assert not provider("gh/jupyterlab/x/main", {}).is_high_quota()


def test_bad_pattern_is_a_config_error() -> None:
    with pytest.raises(TraitError, match="banned_specs"):
        provider("gh/o/r/main", {"GitHubProvider": {"banned_specs": ["(unclosed"]}})


# -- hosts --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/r.git",
        "https://localhost/r.git",
        "git://127.0.0.1:9418/r.git",
        "http://2130706433/r.git",  # 127.0.0.1 spelled as one number
        "http://10.1.2.3/r.git",
        "http://172.16.0.5/r.git",
        "http://192.168.1.1/r.git",
        "http://169.254.169.254/latest/meta-data",  # cloud metadata, link-local
        "http://100.64.0.1/r.git",  # shared address space
        "http://0.0.0.0/r.git",
        "http://224.0.0.1/r.git",  # multicast
        "http://240.0.0.1/r.git",  # reserved
        "http://[::1]/r.git",
        "http://[fe80::1]/r.git",
        "http://[fc00::1]/r.git",
        "http://[ff02::1]/r.git",
        "http://[::ffff:127.0.0.1]/r.git",  # IPv4-mapped
        "http://[::ffff:10.0.0.1]/r.git",
        "http://[2002:7f00:1::]/r.git",  # 6to4 around 127.0.0.1
        "http://[64:ff9b::a00:1]/r.git",  # NAT64 around 10.0.0.1
        "http://user:tok3n@127.0.0.1:8080/r.git",
    ],
)
async def test_private_hosts_are_refused(url: str) -> None:
    err = await refused(provider(git_spec(url)))
    host = url_host(url)[1]
    assert err.message == f"The repository URL is not allowed: {host} is on a private network."
    assert err.hint == "This service only launches repositories from public hosts."
    assert "tok3n" not in err.user_message and "tok3n" not in err.log_message
    # the operator's log names the setting that would allow it; the visitor's message not
    assert "c.GitProvider.allow_private_hosts = True" in err.log_message
    assert "allow_private_hosts" not in err.user_message


@pytest.mark.parametrize(
    "url",
    [
        f"https://{PUBLIC_V4}/r.git",
        f"http://[{PUBLIC_V6}]/r.git",
        f"http://[::ffff:{PUBLIC_V4}]/r.git",
        f"git://{PUBLIC_V4}:9418/r.git",
    ],
)
async def test_public_hosts_pass(url: str) -> None:
    await enforce_policy(provider(git_spec(url)))


@pytest.mark.parametrize(
    "url",
    [
        "http://local%68ost:8080/r.git",  # curl decodes it to localhost; Python's resolver does not
        "https://fa\u00df.example/r.git",  # IDNA 2003 (Python) and 2008 (curl) differ: two names
        "git://LOCAL%68OST/r.git",
    ],
)
async def test_host_names_read_differently_by_resolvers_are_refused(url: str) -> None:
    """The name checked must be the name git connects to: plain ASCII names only."""
    err = await refused(provider(git_spec(url)))
    host = url_host(url)[1]
    assert err.message == (
        f"The repository URL is not allowed: its host name {host!r} has characters this "
        "service does not accept."
    )
    assert "xn--" in err.hint and "percent-escapes" in err.hint
    assert await url_refusal(url, UrlRules()) is not None  # submodules alike
    assert await url_refusal(url, UrlRules(allow_private_hosts=True)) is None


async def test_allow_private_hosts_lets_them_through() -> None:
    config = {"GitProvider": {"allow_private_hosts": True}}
    for url in ("http://127.0.0.1/r.git", "http://localhost/r.git", "http://[::1]/r.git"):
        await enforce_policy(provider(git_spec(url), config))


async def test_unresolvable_host_is_left_to_resolve() -> None:
    await enforce_policy(provider(git_spec("https://no-such-host.invalid/r.git")))


async def test_operator_configured_hosts_are_not_checked() -> None:
    config = {"GitHubProvider": {"clone_host": "git://127.0.0.1:9418"}}
    await enforce_policy(provider("gh/o/r/main", config))


async def test_local_content_is_governed_by_allow_local() -> None:
    p = make_provider(git_spec("file:///srv/repo.git"), parent=parent(), allow_local=True)
    await enforce_policy(p)


async def test_refused_before_any_network_work(git_server: GitServer) -> None:
    """A visitor cannot make the service talk to a server on its own network;
    the operator can allow it, and then the same spec resolves for real."""
    spec = git_spec(f"{git_server.url}/o/r.git", "main")
    await refused(provider(spec))
    allowed = provider(spec, {"GitProvider": {"allow_private_hosts": True}})
    await enforce_policy(allowed)
    assert (await allowed.resolve()).version == git_server.second


# -- ssh ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        f"ssh://git@{PUBLIC_V4}/r.git",
        f"git+ssh://{PUBLIC_V4}/r.git",
        f"git@{PUBLIC_V4}:owner/r.git",
        "git@example.org:owner/r.git",
    ],
)
async def test_ssh_is_refused(url: str) -> None:
    err = await refused(provider(git_spec(url)))
    assert err.message == "The repository URL is not allowed: this service does not fetch over ssh."
    assert "https://" in err.hint
    assert "c.GitProvider.allow_ssh = True" in err.log_message
    assert "allow_ssh" not in err.user_message


async def test_ssh_allowed_by_the_operator() -> None:
    config = {"GitProvider": {"allow_ssh": True}}
    await enforce_policy(provider(git_spec(f"ssh://git@{PUBLIC_V4}/r.git"), config))
    await enforce_policy(provider(git_spec(f"git@{PUBLIC_V4}:owner/r.git"), config))
    # still no private hosts over ssh
    err = await refused(provider(git_spec("git@[::1]:owner/r.git"), config))
    assert "private network" in err.message


def test_url_host() -> None:
    assert url_host("https://u:p@Example.ORG:8443/x") == ("https", "example.org")
    assert url_host("git@[::1]:o/r.git") == ("ssh", "::1")
    assert url_host("me@host.example:o/r.git") == ("ssh", "host.example")
    assert url_host("/srv/repo") == ("", "")


@pytest.mark.parametrize(
    ("url", "config"),
    [
        (f"ssh://git@{PUBLIC_V4}/r.git", {}),
        ("git@example.org:owner/r.git", {}),
        ("http://127.0.0.1/r.git", {}),
        ("http://[::ffff:10.0.0.1]/r.git", {}),
        ("git@[::1]:owner/r.git", {"allow_ssh": True}),
    ],
)
async def test_visitor_and_submodule_urls_are_refused_alike(
    url: str, config: dict[str, bool]
) -> None:
    """One check, one wording: the visitor's URL and a submodule URL under the
    same rules are refused for the same reason."""
    err = await refused(provider(git_spec(url), {"GitProvider": config}))
    reason = await url_refusal(url, UrlRules(**config))
    assert reason is not None
    assert err.message == f"The repository URL is not allowed: {reason}."


# -- while fetching: URL rules ------------------------------------------------------

TRUSTED = UrlRules(trusted_origin=("git", "127.0.0.1", 9418))


@pytest.mark.parametrize(
    ("url", "rules", "reason"),
    [
        ("file:///etc", UrlRules(), "it points at files on this service's own disk"),
        ("/srv/secret.git", UrlRules(), "it points at files on this service's own disk"),
        ("./here", UrlRules(), "it points at files on this service's own disk"),
        ("ext::sh -c id", UrlRules(allow_local=True), "is not a kind this service fetches"),
        ("-uhelp", UrlRules(allow_local=True), "is not a kind this service fetches"),
        ("ftp://example.org/r.git", UrlRules(), "is not a kind this service fetches"),
        (f"ssh://git@{PUBLIC_V4}/r.git", UrlRules(), "this service does not fetch over ssh"),
        (f"git@{PUBLIC_V4}:o/r.git", UrlRules(), "this service does not fetch over ssh"),
        ("http://127.0.0.1/r.git", UrlRules(), "127.0.0.1 is on a private network"),
        ("https://[::1]/r.git", UrlRules(allow_ssh=True), "::1 is on a private network"),
        ("git@[::1]:o/r.git", UrlRules(allow_ssh=True), "::1 is on a private network"),
        # the trusted origin is scheme, host and port: nothing else on that host
        ("git://127.0.0.1:9419/r.git", TRUSTED, "127.0.0.1 is on a private network"),
        ("http://127.0.0.1:9418/r.git", TRUSTED, "127.0.0.1 is on a private network"),
        ("git://localhost:9418/r.git", TRUSTED, "localhost is on a private network"),
        ("file:///etc", TRUSTED, "it points at files on this service's own disk"),
    ],
)
async def test_url_refusal(url: str, rules: UrlRules, reason: str) -> None:
    refusal = await url_refusal(url, rules)
    assert refusal is not None and reason in refusal


@pytest.mark.parametrize(
    ("url", "rules"),
    [
        (f"https://{PUBLIC_V4}/r.git", UrlRules()),
        (f"git://{PUBLIC_V4}/r.git", UrlRules()),
        ("file:///srv/r.git", UrlRules(allow_local=True)),
        ("/srv/r.git", UrlRules(allow_local=True)),
        (f"ssh://git@{PUBLIC_V4}/r.git", UrlRules(allow_ssh=True)),
        ("http://127.0.0.1/r.git", UrlRules(allow_private_hosts=True)),
        ("git://127.0.0.1:9418/other/r.git", TRUSTED),
        ("git://127.0.0.1:9418/r.git", TRUSTED),
    ],
)
async def test_url_allowed(url: str, rules: UrlRules) -> None:
    assert await url_refusal(url, rules) is None


def test_url_origin() -> None:
    assert url_origin("HTTPS://Example.org:8443/x") == ("https", "example.org", 8443)
    assert url_origin("git://127.0.0.1/x") == ("git", "127.0.0.1", None)
    assert url_origin("git@host.example:o/r.git") == ("ssh", "host.example", None)
    assert url_origin("/srv/repo") is None
    assert url_origin("http://h:notaport/x") is None


# -- while fetching: HTTP redirects -------------------------------------------------


@pytest.fixture(scope="module")
def redirect_servers(
    git_server: GitServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[GitHttpServer, GitHttpServer]]:
    """``(public, private)``: two smart-HTTP servers on 127.0.0.1.  ``private``
    serves the git_server repositories; ``public`` serves its own repositories
    and redirects ``/moved/...`` to ``private``."""
    root = tmp_path_factory.mktemp("public")
    private = GitHttpServer(git_server.base)
    public = GitHttpServer(root, {"/moved/": f"{private.url}/"})
    try:
        yield public, private
    finally:
        public.close()
        private.close()


def gh_config(clone_host: str, **traits: Any) -> dict[str, dict[str, Any]]:
    """gh/ pointed at ``clone_host`` (an operator's host) with ``traits``."""
    return {"GitHubProvider": {"clone_host": clone_host, **traits}}


async def test_redirect_to_a_private_server_is_not_followed(
    git_server: GitServer, redirect_servers: tuple[GitHttpServer, GitHttpServer], tmp_path: Path
) -> None:
    public, private = redirect_servers
    private.requests.clear()
    spec = git_spec(f"{public.url}/moved/o/r.git")
    strict = provider(spec, {"GitProvider": {"allow_private_hosts": False}})
    assert isinstance(strict, GitProvider)
    with pytest.raises(RepositoryNotFound) as info:
        await strict.resolve()
    assert_plain(info.value)
    assert "redirect" in info.value.message and "moved" in info.value.hint
    dest = tmp_path / "dest"
    with pytest.raises(RepositoryNotFound, match="redirect"):
        await strict.fetch(strict.resolved(git_server.first), dest, lambda line: None)
    assert list(dest.iterdir()) == []
    assert any("/moved/" in r for r in public.requests)
    assert private.requests == []  # never reached
    # the same URL with private hosts allowed: git follows, and reaches it
    lenient = provider(spec, {"GitProvider": {"allow_private_hosts": True}})
    assert (await lenient.resolve()).version == git_server.second
    assert private.requests


async def test_http_fetches_still_work_without_redirects(
    git_server: GitServer, redirect_servers: tuple[GitHttpServer, GitHttpServer], tmp_path: Path
) -> None:
    _, private = redirect_servers
    strict = provider(
        git_spec(f"{private.url}/o/r.git", "v1"), {"GitProvider": {"allow_private_hosts": False}}
    )
    resolved = await strict.resolve()
    assert resolved.version == git_server.first
    await strict.fetch(resolved, tmp_path / "dest", lambda line: None)
    assert (tmp_path / "dest" / "README.md").read_text() == "version one\n"


async def test_operator_hosts_may_redirect(
    git_server: GitServer, redirect_servers: tuple[GitHttpServer, GitHttpServer]
) -> None:
    public, _ = redirect_servers
    p = provider("gh/o/r/main", gh_config(f"{public.url}/moved", allow_private_hosts=False))
    assert (await p.resolve()).version == git_server.second


async def test_submodule_redirects_are_not_followed(
    git_server: GitServer, redirect_servers: tuple[GitHttpServer, GitHttpServer], tmp_path: Path
) -> None:
    """A submodule on the operator's own origin passes the check, and git
    still does not follow its server's redirect to another address."""
    public, private = redirect_servers
    sub = git("rev-parse", "HEAD", cwd=git_server.base / "sub.git")
    work = superproject(tmp_path / "work", {"lib": f"{public.url}/moved/sub.git"}, sub)
    serve(work, public.root / "o" / "redsub.git")
    private.requests.clear()
    strict = provider("gh/o/redsub/HEAD", gh_config(public.url, allow_private_hosts=False))
    dest = tmp_path / "dest"
    with pytest.raises(FetchError) as info:
        await strict.fetch(await strict.resolve(), dest, lambda line: None)
    assert_plain(info.value)
    assert "submodules" in info.value.message and "redirect" in info.value.message
    assert list(dest.iterdir()) == []
    assert private.requests == []
    lenient = provider("gh/o/redsub/HEAD", gh_config(public.url, allow_private_hosts=True))
    await lenient.fetch(await lenient.resolve(), tmp_path / "ok", lambda line: None)
    assert (tmp_path / "ok" / "lib" / "subfile.txt").read_text() == "from the submodule\n"


# -- while fetching: submodule URLs -------------------------------------------------


def assert_plain(err: BinderboxError) -> None:
    text = err.user_message
    assert "\n" not in text and "Traceback" not in text and "fatal:" not in text


async def fetch_refused(p: RepoProvider, dest: Path) -> SpecNotAllowed:
    """Fetch with ``p``; it must be refused by policy and leave ``dest`` empty."""
    assert isinstance(p, GitProvider)
    with pytest.raises(SpecNotAllowed) as info:
        await p.fetch(await p.resolve(), dest, lambda line: None)
    assert info.value.status_code == 403
    assert_plain(info.value)
    assert list(dest.iterdir()) == []
    return info.value


async def test_visitor_repository_cannot_reach_private_submodules(
    git_server: GitServer, tmp_path: Path
) -> None:
    """git/ at a host the test reaches directly (the provider does not check its
    own URL; enforce_policy does): its submodule on 127.0.0.1 is refused."""
    spec = git_spec(f"{git_server.url}/o/r.git")
    err = await fetch_refused(
        provider(spec, {"GitProvider": {"allow_private_hosts": False}}), tmp_path / "a"
    )
    assert err.message == (
        f"The submodule 'sub' of {git_server.url}/o/r.git is not allowed: "
        "127.0.0.1 is on a private network."
    )
    allowed = provider(spec, {"GitProvider": {"allow_private_hosts": True}})
    await allowed.fetch(await allowed.resolve(), tmp_path / "b", lambda line: None)
    assert (tmp_path / "b" / "sub" / "subfile.txt").is_file()


@pytest.fixture(scope="module")
def sub_commit(git_server: GitServer) -> str:
    return git("rev-parse", "HEAD", cwd=git_server.base / "sub.git")


def hosted_repo(git_server: GitServer, name: str, submodules: dict[str, str], commit: str) -> str:
    """Serve a superproject as ``o/<name>.git``; return its gh spec."""
    work = superproject(git_server.base.parent / f"{name}-work", submodules, commit)
    serve(work, git_server.base / "o" / f"{name}.git")
    return f"gh/o/{name}/HEAD"


async def test_relative_submodule_urls_resolve_against_the_repository(
    git_server: GitServer, sub_commit: str, tmp_path: Path
) -> None:
    spec = hosted_repo(git_server, "relative", {"lib": "../../sub.git"}, sub_commit)
    # on the operator's host: the resolved URL is on its origin, and fetched
    p = provider(spec, gh_config(git_server.url, allow_private_hosts=False))
    assert isinstance(p, GitProvider)
    await p.fetch(await p.resolve(), tmp_path / "ok", lambda line: None)
    assert (tmp_path / "ok" / "lib" / "subfile.txt").read_text() == "from the submodule\n"
    # the same repository by a visitor's URL: resolved to 127.0.0.1, refused
    visitor = provider(
        git_spec(f"{git_server.url}/o/relative.git", "HEAD"),
        {"GitProvider": {"allow_private_hosts": False}},
    )
    err = await fetch_refused(visitor, tmp_path / "no")
    assert "'lib'" in err.message and "127.0.0.1 is on a private network" in err.message


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("file:///etc", "it points at files on this service's own disk"),
        ("/etc", "it points at files on this service's own disk"),
        ("git://localhost:{port}/sub.git", "localhost is on a private network"),
        ("http://127.0.0.1:{port}/sub.git", "127.0.0.1 is on a private network"),
        # a relative URL that climbs out of the operator's origin to another host
        ("../../../localhost:{port}/sub.git", "localhost is on a private network"),
        (f"ssh://git@{PUBLIC_V4}/sub.git", "this service does not fetch over ssh"),
        ("ext::sh -c touch% {pwned}", "is not a kind this service fetches from"),
    ],
)
async def test_refused_submodule_urls(
    git_server: GitServer, sub_commit: str, tmp_path: Path, url: str, reason: str
) -> None:
    pwned = tmp_path / "pwned"
    wanted = url.format(port=git_server.port, pwned=pwned)
    spec = hosted_repo(git_server, tmp_path.name, {"lib": wanted}, sub_commit)
    err = await fetch_refused(provider(spec, gh_config(git_server.url)), tmp_path / "dest")
    assert err.message.startswith("The submodule 'lib' of https://github.com/o/")
    assert reason in err.message
    assert not pwned.exists()


async def test_nested_submodules_are_checked_level_by_level(
    git_server: GitServer, sub_commit: str, tmp_path: Path
) -> None:
    """Each level's URLs are resolved against its own repository and checked
    before that level is fetched."""
    for name, deep in (("ok", "../../sub.git"), ("bad", "file:///etc")):
        inner = superproject(tmp_path / f"inner-{name}", {"deep": deep}, sub_commit)
        serve(inner, git_server.base / "o" / f"inner-{name}.git")
        inner_sha = git("rev-parse", "HEAD", cwd=inner)
        hosted_repo(git_server, f"outer-{name}", {"mid": f"../inner-{name}.git"}, inner_sha)
    ok = provider("gh/o/outer-ok/HEAD", gh_config(git_server.url))
    await ok.fetch(await ok.resolve(), tmp_path / "ok", lambda line: None)
    assert (tmp_path / "ok" / "mid" / "deep" / "subfile.txt").is_file()
    bad = provider("gh/o/outer-bad/HEAD", gh_config(git_server.url))
    err = await fetch_refused(bad, tmp_path / "bad")
    assert err.message == (
        "The submodule 'mid/deep' of https://github.com/o/outer-bad is not allowed: "
        "it points at files on this service's own disk."
    )


async def test_git_protocol_settings_outrank_the_environment(
    git_server: GitServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Even with an environment that allows ``file`` everywhere, a remote
    repository's git commands cannot fetch a file:// submodule."""
    secret = tmp_path / "secret"
    git("init", "-q", str(secret))
    sha = commit_file(secret, "secret.txt", "server-side secret\n", "secret")
    work = superproject(tmp_path / "work", {"sec": secret.as_uri()}, sha)
    monkeypatch.setenv("GIT_ALLOW_PROTOCOL", "file:git:http:https")
    monkeypatch.setenv("GIT_PROTOCOL_FROM_USER", "1")
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "protocol.file.allow")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "always")
    remote = provider("gh/o/r/main", gh_config(git_server.url))
    local = make_provider(str(work), parent=parent())
    assert isinstance(remote, GitProvider) and isinstance(local, GitProvider)
    cases = {
        "plain": ({}, True),  # without our -c settings, this environment lets git fetch it
        "local": (local.fetch_config(submodules=True), True),
        "remote": (remote.fetch_config(submodules=True), False),
    }
    for name, (config, fetched) in cases.items():
        checkout = tmp_path / name
        git("clone", "-q", str(work), str(checkout))
        result = await run_git(["submodule", "update", "--init"], cwd=checkout, config=config)
        assert result.ok is fetched, result.describe()
        assert (checkout / "sec" / "secret.txt").is_file() is fetched
        if not fetched:
            assert "transport 'file' not allowed" in result.stderr
