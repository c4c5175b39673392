"""Providers: where repository content comes from, and the factory that picks one.

:func:`make_provider` turns what a person typed into a provider:

* BinderHub's forms ``<prefix>/<spec>``: ``gh/o/r/ref``, ``gl/<escaped
  namespace>/ref``, ``gist/u/id[/ref]``, ``git/<escaped URL>/ref``, and
  ``local/<escaped path>/ref``;
* plain URLs: ``https://github.com/o/r[.git][/tree/<ref>]`` becomes ``gh``,
  ``https://gitlab.com/g/p[/-/tree/<ref>]`` ``gl``,
  ``https://gist.github.com/u/id`` ``gist``; any other http(s), ssh, git or
  file URL, or ``user@host:path``, becomes ``git``;
* a local directory (``/abs``, ``./rel``, ``~/x``, or an existing directory
  name) becomes ``local``.

``ref`` (the CLI's ``--ref``) supplies or overrides the ref of the URL and
path forms; the ``<prefix>/<spec>`` forms carry their own ref.  The provider's
``Resolved.provider`` / ``persistent_spec`` always make a valid
``v2/<provider>/<persistent_spec>`` link.

With ``allow_local=False`` (the web service's default) anything read from
this machine's disk (``file://`` URLs, local paths, ``local/...``) raises
:class:`~binderbox.errors.SpecNotAllowed` before the disk is touched.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from traitlets.config import Configurable

from ..errors import SpecError, SpecNotAllowed, UnknownProvider
from . import gist, git, github, gitlab
from .base import RepoProvider, Resolved
from .gist import GistProvider
from .git import GitProvider
from .github import GitHubProvider
from .gitlab import GitLabProvider
from .gitutil import SCHEME_RE, SCP_RE, check_git_url, redact
from .local import LocalProvider

__all__ = [
    "PROVIDERS",
    "GistProvider",
    "GitHubProvider",
    "GitLabProvider",
    "GitProvider",
    "LocalProvider",
    "RepoProvider",
    "Resolved",
    "make_provider",
    "offered_providers",
    "provider_class",
    "repoprovider_configs",
]

#: prefix -> provider class, in the order the home page lists them
PROVIDERS: dict[str, type[RepoProvider]] = {
    "gh": GitHubProvider,
    "gl": GitLabProvider,
    "gist": GistProvider,
    "git": GitProvider,
    "local": LocalProvider,
}

LOCAL_REFUSED = "This service does not launch repositories from its own disk."
_PREFIX_RE = re.compile(r"^[a-z][a-z0-9_-]*$")
_GITHUB_HOSTS = frozenset({"github.com", "www.github.com"})
_GITLAB_HOSTS = frozenset({"gitlab.com", "www.gitlab.com"})
_GIST_HOSTS = frozenset({"gist.github.com"})
_WHAT_TO_GIVE = (
    "Give a repository URL, a local directory, or <provider>/<spec> "
    "such as gh/<owner>/<repo>/<ref>."
)


def provider_class(prefix: str) -> type[RepoProvider]:
    """The provider class for ``prefix``; UnknownProvider lists the known ones."""
    try:
        return PROVIDERS[prefix]
    except KeyError:
        raise _unknown(prefix) from None


def _unknown(prefix: str) -> UnknownProvider:
    return UnknownProvider(
        f"Unknown provider {prefix!r}.", hint=f"Known providers: {', '.join(PROVIDERS)}."
    )


def offered_providers(allow_local: bool = True) -> dict[str, type[RepoProvider]]:
    """Prefix -> class of the providers a service offers, in :data:`PROVIDERS`'
    order: ``local`` only when ``allow_local``."""
    return {p: cls for p, cls in PROVIDERS.items() if allow_local or p != "local"}


def repoprovider_configs(
    allow_local: bool = True, *, providers: Mapping[str, type[RepoProvider]] | None = None
) -> list[dict[str, Any]]:
    """The body of ``/api/repoproviders``: each provider's
    :meth:`~RepoProvider.repoprovider_config`, in order.

    ``providers`` (prefix -> class) when given, else :func:`offered_providers`
    (``local`` only when ``allow_local``).
    """
    offered = offered_providers(allow_local) if providers is None else providers
    return [cls.repoprovider_config() for cls in offered.values()]


def make_provider(
    spec: str,
    ref: str | None = None,
    *,
    parent: Configurable | None = None,
    allow_local: bool = True,
) -> RepoProvider:
    """A provider for ``spec`` in any of the forms in the module docstring.

    Raises SpecError (malformed), UnknownProvider, SpecNotAllowed (local
    content while ``allow_local`` is False).  Does no network or git work.
    """
    text = spec.strip()
    if not text:
        raise SpecError("No repository given.", hint=_WHAT_TO_GIVE)
    if SCHEME_RE.match(text) or SCP_RE.match(text):
        prefix, sub = _from_url(text, ref)
    else:
        head, sep, rest = text.partition("/")
        if sep and head in PROVIDERS:
            if ref:
                raise SpecError(
                    f"A separate ref cannot be combined with {head}/... specs.",
                    hint="Put the ref at the end of the spec instead.",
                )
            prefix, sub = head, rest
        elif _looks_like_path(text, allow_local):
            if not allow_local:
                raise SpecNotAllowed(LOCAL_REFUSED, log_message=f"refused local path {text!r}")
            path = str(Path(text).expanduser().absolute())
            prefix, sub = "local", git.make_spec(path, ref or "HEAD")
        elif sep and _PREFIX_RE.match(head):
            raise _unknown(head)
        else:
            raise SpecError(f"Cannot tell which repository {text!r} is.", hint=_WHAT_TO_GIVE)
    if prefix == "local" and not allow_local:
        raise SpecNotAllowed(LOCAL_REFUSED, log_message=f"refused local spec {redact(text)!r}")
    provider = provider_class(prefix)(sub, parent=parent)
    if not allow_local and isinstance(provider, GitProvider) and provider.reads_local_disk:
        raise SpecNotAllowed(LOCAL_REFUSED, log_message=f"refused local URL {redact(text)!r}")
    return provider


def _looks_like_path(text: str, allow_local: bool) -> bool:
    """Path syntax always counts; an existing directory only when local is allowed
    (the web service never looks at its disk)."""
    if text in (".", "..", "~") or text.startswith(("/", "./", "../", "~/")):
        return True
    return allow_local and Path(text).is_dir()


def _from_url(url: str, ref: str | None) -> tuple[str, str]:
    """(prefix, spec) for a URL: GitHub, GitLab and gist web URLs get their providers."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme in ("http", "https") and not parts.username and parts.port is None:
        host = (parts.hostname or "").lower()
        path = [p for p in parts.path.split("/") if p]
        if host in _GITHUB_HOSTS:
            return "gh", _github_spec(url, path, ref)
        if host in _GITLAB_HOSTS:
            return "gl", _gitlab_spec(url, path, ref)
        if host in _GIST_HOSTS:
            return "gist", _gist_spec(url, path, ref)
    check_git_url(url, "a repository URL")
    return "git", git.make_spec(url, ref or "HEAD")


def _ref_after(path: list[str], markers: tuple[str, ...] = ("tree", "commit")) -> str | None:
    """The ref in ``.../tree/<ref>`` or ``.../commit/<sha>`` URL tails."""
    if len(path) >= 2 and path[0] in markers:
        return "/".join(path[1:])
    return None


def _github_spec(url: str, path: list[str], ref: str | None) -> str:
    if len(path) < 2:
        raise SpecError(
            f"{url!r} is not a GitHub repository URL.",
            hint="Expected https://github.com/<owner>/<repo>.",
        )
    owner, repo = path[0], path[1].removesuffix(".git")
    final = ref or _ref_after(path[2:]) or "HEAD"
    return github.make_spec(owner, repo, final)


def _gitlab_spec(url: str, path: list[str], ref: str | None) -> str:
    cut = path.index("-") if "-" in path else len(path)
    namespace = "/".join(path[:cut]).removesuffix(".git")
    if cut < 2:
        raise SpecError(
            f"{url!r} is not a GitLab project URL.",
            hint="Expected https://gitlab.com/<group>/<project>.",
        )
    final = ref or _ref_after(path[cut + 1 :]) or "HEAD"
    return gitlab.make_spec(namespace, final)


def _gist_spec(url: str, path: list[str], ref: str | None) -> str:
    if len(path) < 2:
        raise SpecError(
            f"{url!r} is not a gist URL with a user name.",
            hint="Expected https://gist.github.com/<user>/<gist-id>.",
        )
    final = ref or (path[2] if len(path) > 2 else "HEAD")
    return gist.make_spec(path[0], path[1].removesuffix(".git"), final)
