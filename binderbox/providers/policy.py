"""Operator policy: which specs and which repository hosts may launch.

The pipeline calls :func:`enforce_policy` once per launch, after
:func:`~binderbox.providers.make_provider` and before ``resolve()``:

1. the spec patterns of the provider's class (``banned_specs``,
   ``allowed_specs``; see :meth:`RepoProvider.check_spec_allowed`);
2. the host of a URL the *visitor* chose (``git/<url>/<ref>``): ssh URLs are
   refused unless ``allow_ssh``; a host whose addresses (every address
   ``getaddrinfo`` returns) include a private, loopback, link-local,
   multicast, reserved, unspecified or otherwise non-global one is refused
   unless ``allow_private_hosts``.  IPv4-mapped, 6to4, Teredo and NAT64 IPv6
   addresses are judged by the IPv4 address they carry.

Every refusal is a :class:`~binderbox.errors.SpecNotAllowed` (403).  A host
that does not resolve passes here and fails later, in ``resolve()``, as
:class:`~binderbox.errors.RepositoryNotFound`.

Not checked (the operator chose them): hosts from the operator's config
(``GitHubProvider.clone_host`` and the like), and local content, which
``make_provider(allow_local=...)`` governs.

Known limits of a pre-check: the address git connects to is looked up again
by git, so a host whose DNS answers change between the check and the fetch
(DNS rebinding) can still reach a private address; so can an HTTP redirect
from a public server, and a submodule URL inside a public repository.
Network-level egress rules are the complete answer for a public service.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
from urllib.parse import urlsplit

from ..errors import RepositoryNotFound, SpecNotAllowed
from .base import RepoProvider
from .git import GitProvider
from .gitutil import redact

#: seconds to wait for DNS before giving up on a host
RESOLVE_TIMEOUT = 15.0

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_SSH_SCHEMES = frozenset({"ssh", "git+ssh", "ssh+git"})
_SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
#: git's scp-like ``[user@]host:path``; group 1 is the host (maybe ``[v6]``)
_SCP_HOST_RE = re.compile(r"^(?:[^@/\s]+@)?(\[[^\]/]+\]|[^/:\s]{2,}):(?!//)")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_SSH_REFUSED = "This service does not fetch repositories over ssh."
_SSH_HINT = "Use the repository's https:// URL instead."


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
    if not isinstance(provider, GitProvider) or provider.reads_local_disk:
        return None
    if provider.has_trait("clone_host"):
        return None
    return provider.clone_url


async def check_host(provider: RepoProvider) -> None:
    """Refuse ssh URLs (unless ``allow_ssh``) and hosts on private networks
    (unless ``allow_private_hosts``) for the URL the visitor chose."""
    url = visitor_url(provider)
    if url is None:
        return
    scheme, host = url_host(url)
    if scheme in _SSH_SCHEMES and not provider.allow_ssh:
        raise SpecNotAllowed(
            _SSH_REFUSED, hint=_SSH_HINT, log_message=f"refused ssh URL {redact(url)!r}"
        )
    if provider.allow_private_hosts or not host:
        return
    for address in await resolve_host(host, url):
        if not is_public(address):
            raise SpecNotAllowed(
                f"{host} is on a private network; "
                "this service only launches repositories from public hosts.",
                log_message=f"refused {redact(url)!r}: {host} resolves to {address}",
            )


def url_host(url: str) -> tuple[str, str]:
    """``(scheme, host)`` of a git URL; scp-like ``user@host:path`` counts as ``ssh``.

    The host is lower-case, without brackets, port or user; ``""`` if none.
    """
    m = _SCHEME_RE.match(url)
    if m:
        try:
            host = urlsplit(url).hostname or ""
        except ValueError:  # malformed brackets
            host = ""
        return m.group(1).lower(), host
    scp = _SCP_HOST_RE.match(url)
    if scp:
        return "ssh", scp.group(1).strip("[]").lower()
    return "", ""


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


def is_public(address: IPAddress) -> bool:
    """True for a globally routable unicast address.

    IPv6 addresses that carry an IPv4 address (mapped, 6to4, Teredo, NAT64)
    are public only if that IPv4 address is too.
    """
    if isinstance(address, ipaddress.IPv6Address):
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            return is_public(embedded)
    return address.is_global and not (
        address.is_private
        or address.is_loopback
        or address.is_link_local
        or address.is_multicast
        or address.is_reserved
        or address.is_unspecified
    )


def _embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]  # the client's (obfuscated-back) address
    if address in _NAT64:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None
