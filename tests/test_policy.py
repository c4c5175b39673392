"""Operator policy: spec patterns and visitor-chosen hosts (no internet needed:
literal IPs and ``localhost`` resolve locally)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import pytest
from traitlets import TraitError
from traitlets.config import Config, Configurable

from binderbox.errors import SpecNotAllowed
from binderbox.providers import make_provider
from binderbox.providers.base import RepoProvider
from binderbox.providers.policy import enforce_policy, url_host
from tests.fixtures_git import GitServer, git_server

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
    assert err.message == (
        f"{host} is on a private network; "
        "this service only launches repositories from public hosts."
    )
    assert "tok3n" not in err.user_message and "tok3n" not in err.log_message


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
    assert err.message == "This service does not fetch repositories over ssh."
    assert "https://" in err.hint


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
