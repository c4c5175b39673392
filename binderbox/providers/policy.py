"""Operator policy: which specs and which repository hosts may launch.

The pipeline calls :func:`enforce_policy` once per launch, after
:func:`~binderbox.providers.make_provider` and before ``resolve()``:

1. the spec patterns of the provider's class (``banned_specs``,
   ``allowed_specs``; see :meth:`RepoProvider.check_spec_allowed`);
2. the host of a URL the *visitor* chose (``git/<url>/<ref>``): ssh URLs are
   refused unless ``allow_ssh``; unless ``allow_private_hosts``, a host name
   that is not plain ASCII (letters, digits, dots, hyphens, underscores, or
   an IP address) is refused, and so is a host whose addresses (every address
   ``getaddrinfo`` returns) include one the destination policy blocks
   (:mod:`binderbox.runtime.destinations`: private, shared, loopback,
   link-local, multicast, reserved, unspecified, this machine's own networks;
   IPv4-mapped, 6to4, Teredo and NAT64 IPv6 addresses judged by the IPv4
   address they carry; networks in ``c.Destinations.allowed`` pass).

Step 2 is :func:`host_refusal`, the one ssh / private-host check; submodule
URLs (below) go through it too, so every refusal reads ``"<what> is not
allowed: <reason>."`` with the same reasons.  Every refusal is a
:class:`~binderbox.errors.SpecNotAllowed` (403).  The addresses it checked
are recorded in :attr:`GitProvider.pins <binderbox.providers.git.GitProvider>`
(:mod:`binderbox.providers.pins`).  A host that does not resolve passes here
and fails later, in ``resolve()``, as
:class:`~binderbox.errors.RepositoryNotFound`, without git looking it up again.

Not checked (the operator chose them): hosts from the operator's config
(``GitHubProvider.clone_host`` and the like), and local content, which
``make_provider(allow_local=...)`` governs.

While fetching, :class:`~binderbox.providers.git.GitProvider` applies the
same rules where git would otherwise go further than the checked URL:

* HTTP redirects: unless ``allow_private_hosts``, git does not follow them
  (``http.followRedirects=false``) for a visitor's URL nor for submodules, so
  a public server cannot send the fetch to a private address; the launch
  fails as RepositoryNotFound / FetchError saying the server redirected.
  Redirects of the operator's own hosts are followed as git does by default.
* Submodules: before each level of submodules is fetched, the URLs git will
  use (``.gitmodules`` of the fetched commit as ``git submodule init``
  registers them, relative URLs resolved against the superproject's URL)
  each pass :func:`url_refusal`: the URL forms :func:`check_git_url`
  accepts; ``file://`` and local paths only for local repositories; ssh only
  with ``allow_ssh``; private hosts only with ``allow_private_hosts``; URLs
  on the very origin (scheme, host, port) of an operator-configured host are
  not checked.  A refusal is SpecNotAllowed naming the submodule's path.
  Nested submodules are checked level by level, as each level is fetched.
* git's protocol allow-list is set on every command (``protocol.allow=never``
  and https, http, git and ssh allowed; ``file`` only for local
  repositories), and ``GIT_ALLOW_PROTOCOL`` is removed from git's
  environment, so no inherited setting lets a submodule read this machine's
  files.

* The addresses git connects to are the ones checked (no DNS rebinding):
  every git command gets the provider's :class:`~binderbox.providers.pins.Pins`
  as ``-c`` settings: ``http.curloptResolve`` for http and https (curl takes
  the addresses from there, TLS still checks the name), a ``url.<address
  URL>.insteadOf`` rewrite for ``git://`` (git's own connection), for the
  visitor's URL and for each submodule URL checked; a checked host that did
  not resolve is not left for git to look up again.

Still open: ssh URLs (only with ``allow_ssh``) are checked, not pinned (ssh
resolves the name again); requests through an operator's HTTP proxy are
resolved by the proxy (its egress rules decide).  The checks apply to the
service's own fetches; sessions' and builds' code is held by the sandbox
network (:mod:`binderbox.runtime.destinations` is the one list both use).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from ..errors import RepositoryNotFound, SpecError, SpecNotAllowed
from ..runtime.destinations import Destinations
from .base import RepoProvider
from .gitutil import SCHEME_RE, SCP_RE, UrlKind, check_git_url, redact
from .pins import Pins, is_address

#: seconds to wait for DNS before giving up on a host
RESOLVE_TIMEOUT = 15.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: ``(scheme, host, port)`` of a URL; scp-like ``user@host:path`` is ``("ssh", host, None)``
Origin = tuple[str, str, int | None]

_SSH_SCHEMES = frozenset({"ssh", "git+ssh", "ssh+git"})
#: what a host name may be made of (lower case): what every resolver reads the same way
_PLAIN_HOST_RE = re.compile(r"[a-z0-9._-]+")
_SSH_REFUSED = "this service does not fetch over ssh"
_SSH_HINT = "Use the repository's https:// URL instead."
_PUBLIC_HINT = "This service only launches repositories from public hosts."
_PLAIN_HINT = (
    "Write the host name in ASCII (an internationalised name in its xn-- form), "
    "without percent-escapes."
)


async def enforce_policy(provider: RepoProvider) -> None:
    """Apply the operator's policy to ``provider``; raise SpecNotAllowed (403) if refused.

    Spec patterns first (no network), then the visitor-chosen host (one DNS
    lookup).  Call it after ``make_provider`` and before ``provider.resolve()``.
    """
    provider.check_spec_allowed()
    await check_host(provider)


def visitor_url(provider: RepoProvider) -> str | None:
    """The URL whose host the visitor chose, or None (operator-configured host,
    local content, or a provider without a URL)."""
    from .git import GitProvider  # here, not at the top: git.py imports this module

    if not isinstance(provider, GitProvider) or not provider.url_from_visitor:
        return None
    return provider.clone_url


async def check_host(provider: RepoProvider) -> None:
    """Apply :func:`host_refusal` to the URL the visitor chose; SpecNotAllowed if refused."""
    from .git import GitProvider

    url = visitor_url(provider)
    if url is None:
        return
    assert isinstance(provider, GitProvider)
    refusal = await host_refusal(
        url,
        allow_ssh=provider.allow_ssh,
        allow_private_hosts=provider.allow_private_hosts,
        destinations=provider.destinations,
        pins=provider.pins,
    )
    if refusal is not None:
        setting = f"c.{type(provider).__name__}.{refusal.setting} = True"
        raise SpecNotAllowed(
            f"The repository URL is not allowed: {refusal.reason}.",
            hint=refusal.hint,  # the visitor's message: no operator settings in it
            log_message=f"refused {redact(url)!r}: {refusal.detail}; the operator's "
            f"setting {setting} (every provider: c.RepoProvider.{refusal.setting}) "
            "would allow it",
        )


@dataclass(frozen=True)
class Refusal:
    """Why :func:`host_refusal` refuses a URL.

    ``reason`` is a phrase for the user (``"10.0.0.1 is on a private network"``)
    that ends every message of the family ``"<what> is not allowed: <reason>."``
    (the visitor's repository URL here, a submodule in
    :class:`~binderbox.providers.git.GitProvider`); ``hint`` says what to do
    instead; ``detail`` is for the log only, as is ``setting``: the provider
    setting that would allow the URL (``allow_ssh`` or ``allow_private_hosts``).
    """

    reason: str
    hint: str
    detail: str
    setting: str = "allow_private_hosts"


async def host_refusal(
    url: str,
    *,
    allow_ssh: bool,
    allow_private_hosts: bool,
    destinations: Destinations | None = None,
    pins: Pins | None = None,
) -> Refusal | None:
    """The one ssh / private-host check of a remote URL; None if it passes.

    ssh URLs (``ssh://``, ``git+ssh://``, scp-like ``user@host:path``) are
    refused unless ``allow_ssh``.  Unless ``allow_private_hosts``: a host name
    that is not plain ASCII (letters, digits, ``.``, ``-``, ``_``) or an IP
    address is refused (Python's resolver and curl would read it differently:
    percent-escapes, IDNA 2003 against 2008), and so is a host with an address
    the ``destinations`` policy blocks (one DNS lookup; every address counts).
    What the lookup found goes into ``pins`` (see :mod:`.pins`), so that git
    connects where it looked.  A URL without a host passes.
    """
    scheme, host = url_host(url)
    if scheme in _SSH_SCHEMES and not allow_ssh:
        return Refusal(_SSH_REFUSED, _SSH_HINT, "ssh URL", setting="allow_ssh")
    if allow_private_hosts or not host:
        return None
    if not (_PLAIN_HOST_RE.fullmatch(host) or is_address(host)):
        return Refusal(
            f"its host name {host!r} has characters this service does not accept",
            _PLAIN_HINT,
            "host name not plain",
        )
    addresses = await resolve_host(host, url)
    blocked = blocked_address(addresses, destinations or Destinations())
    if blocked is not None:
        reason = f"{host} is on a private network"
        return Refusal(reason, _PUBLIC_HINT, f"{host} resolves to {blocked}")
    if pins is not None:
        pins.record(url, addresses)
    return None


@dataclass(frozen=True)
class UrlRules:
    """What :func:`url_refusal` lets through: the provider's policy for URLs that
    come from a repository's content (submodules)."""

    #: ``file://`` URLs and local paths (only for repositories on this machine)
    allow_local: bool = False
    allow_ssh: bool = False
    allow_private_hosts: bool = False
    #: the origin of an operator-configured host: URLs there are not checked
    trusted_origin: Origin | None = None
    #: the blocked destinations (``c.Destinations``)
    destinations: Destinations = field(default_factory=Destinations)


async def url_refusal(url: str, rules: UrlRules, pins: Pins | None = None) -> str | None:
    """Why git may not fetch from ``url`` under ``rules`` (a phrase for a user
    message), or None if it may.

    The URL form first: what :func:`check_git_url` refuses (transport helpers,
    unknown schemes, option-like strings) is always refused, local URLs unless
    ``allow_local``; URLs on ``trusted_origin`` pass.  Then :func:`host_refusal`,
    the check :func:`check_host` applies to a visitor's URL (its ``reason``);
    the addresses it checked go into ``pins``.
    """
    try:
        kind = check_git_url(url, "a repository URL")
    except SpecError:
        return f"its URL {redact(url)!r} is not a kind this service fetches from"
    if kind is UrlKind.LOCAL:
        return None if rules.allow_local else "it points at files on this service's own disk"
    if rules.trusted_origin is not None and url_origin(url) == rules.trusted_origin:
        return None
    refusal = await host_refusal(
        url,
        allow_ssh=rules.allow_ssh,
        allow_private_hosts=rules.allow_private_hosts,
        destinations=rules.destinations,
        pins=pins,
    )
    return None if refusal is None else refusal.reason


def url_origin(url: str) -> Origin | None:
    """``(scheme, host, port)`` of a remote git URL (lower case); None for a local
    URL or one that cannot be parsed."""
    scheme, host = url_host(url)
    if not host:
        return None
    if scheme == "ssh" and not SCHEME_RE.match(url):
        return scheme, host, None
    try:
        return scheme, host, urlsplit(url).port
    except ValueError:  # a port that is not a number
        return None


def url_host(url: str) -> tuple[str, str]:
    """``(scheme, host)`` of a git URL; scp-like ``user@host:path`` counts as ``ssh``.

    The host is lower-case, without brackets, port or user; ``""`` if none.
    """
    m = SCHEME_RE.match(url)
    if m:
        try:
            host = urlsplit(url).hostname or ""
        except ValueError:  # malformed brackets
            host = ""
        return m.group(1).lower(), host
    scp = SCP_RE.match(url)
    if scp:
        return "ssh", scp.group(1).strip("[]").lower()
    return "", ""


def blocked_address(addresses: list[IPAddress], destinations: Destinations) -> IPAddress | None:
    """The first of ``addresses`` that ``destinations`` blocks, or None."""
    return next((a for a in addresses if destinations.is_blocked(a)), None)


async def resolve_host(host: str, url: str) -> list[IPAddress]:
    """Every address ``host`` resolves to; ``[]`` if it does not resolve.

    A DNS lookup that does not answer in time is RepositoryNotFound (the fetch
    would fail the same way, and a host is never let through unchecked).
    """
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(RESOLVE_TIMEOUT):
            infos = await loop.getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except TimeoutError:
        raise RepositoryNotFound(
            f"Could not reach {host}. Check the URL and that the repository is public.",
            log_message=f"DNS lookup of {host} for {redact(url)!r} timed out",
        ) from None
    except (OSError, UnicodeError, ValueError):  # gaierror: no such host
        return []
    addresses: list[IPAddress] = []
    for *_, sockaddr in infos:
        text = str(sockaddr[0]).partition("%")[0]  # drop an IPv6 scope id
        try:
            addresses.append(ipaddress.ip_address(text))
        except ValueError:
            continue
    return addresses
