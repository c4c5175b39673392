"""The provider seam: where repository content comes from.

A provider is created for one spec (the part after the provider prefix,
e.g. ``owner/repo/main`` for ``gh``) and answers three questions:

* :meth:`RepoProvider.resolve` -- which immutable version does the spec name
  now?  Returns a :class:`Resolved` (a commit sha for git, a record version
  for DOI providers).  Raises :class:`~binderbox.errors.RepositoryNotFound` or
  :class:`~binderbox.errors.RefNotFound` with a message for the user.
* :meth:`RepoProvider.fetch` -- put the content of that version into an
  empty directory.  Raises :class:`~binderbox.errors.FetchError`.
* the display URLs (``repo_url``, ``ref_url``) that end up in the ``ready``
  event as ``repo_url`` / ``binder_ref_url``.

Subclasses set ``prefix`` and ``display_name`` and implement ``parse``,
``resolve`` and ``fetch``.  Configuration (hosts, API base URLs) lives on the
subclass as traits, so tests point ``gh/...`` at a git server on localhost.

Operator policy (BinderHub's names, per provider class, e.g.
``c.GitHubProvider.banned_specs``) is here too: ``banned_specs``,
``allowed_specs``, ``high_quota_specs``, ``allow_private_hosts`` and
``allow_ssh``.  :func:`binderbox.providers.policy.enforce_policy` applies them,
with the networks of ``c.Destinations`` (:attr:`RepoProvider.destinations`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import unquote

from traitlets import Bool, List, TraitError, Unicode, validate
from traitlets.config import LoggingConfigurable

from ..errors import SpecNotAllowed
from ..logs import LogFn
from ..runtime.destinations import Destinations
from .gitutil import redact

if TYPE_CHECKING:
    from ..sessions.identity import Visitor


@dataclass(frozen=True)
class Resolved:
    """An immutable version of a repository, ready to fetch.

    ``provider``
        the prefix (``gh``, ``git``, ``local``...)
    ``spec``
        the spec as the user asked (``owner/repo/main``)
    ``version``
        the immutable id: a full commit sha, a record version
    ``persistent_spec``
        the spec with the version pinned (``owner/repo/<sha>``)
    ``repo_url``
        where a person can see the repository
    ``ref_url``
        where a person can see this exact version
    ``clone_url``
        what :meth:`RepoProvider.fetch` fetches from (not shown to users)
    """

    provider: str
    spec: str
    version: str
    persistent_spec: str
    repo_url: str
    ref_url: str
    clone_url: str = ""

    @property
    def binder_request(self) -> str:
        """``v2/<provider>/<spec as asked>``, BinderHub's ``binder_request``."""
        return f"v2/{self.provider}/{self.spec}"

    @property
    def binder_persistent_request(self) -> str:
        """``v2/<provider>/<spec with the version>``."""
        return f"v2/{self.provider}/{self.persistent_spec}"


class RepoProvider(LoggingConfigurable):
    """Base class of content providers.  See the module docstring."""

    #: the BinderHub prefix, e.g. ``gh``; ``""`` for providers chosen by URL form
    prefix: ClassVar[str] = ""
    #: shown in the home page's provider list
    display_name: ClassVar[str] = ""
    #: the label and placeholder of the spec field on the home page
    spec_label: ClassVar[str] = "Repository"
    spec_placeholder: ClassVar[str] = ""
    #: True when the ref part of the spec is meaningful (git providers)
    has_ref: ClassVar[bool] = True

    banned_specs = List(
        Unicode(),
        help="Regular expressions of specs that may not launch (BinderHub's banned_specs). "
        "Each is matched with re.match, ignoring case, against the spec as asked (the part "
        "after the provider prefix, e.g. 'owner/repo/ref' for gh) and against its "
        "url-unescaped form, so 'group/project' patterns also catch 'group%2Fproject'.",
    ).tag(config=True)
    allowed_specs = List(
        Unicode(),
        help="When not empty, only specs matching one of these regular expressions may "
        "launch (BinderHub's allowed_specs; e.g. ['^roboneurolibre/.*']). Matched like "
        "banned_specs; banned_specs still apply to allowed specs. Specs whose unescaped "
        "form has '.' or '..' path segments are then refused. Note: set on GitProvider, it "
        "also applies to its subclasses (gh, gl, gist); set it on each class you mean.",
    ).tag(config=True)
    high_quota_specs = List(
        Unicode(),
        help="Regular expressions of specs that get the higher per-repository session quota "
        "(BinderHub's high_quota_specs). Matched like banned_specs.",
    ).tag(config=True)
    allow_private_hosts = Bool(
        False,
        help="Launch from repository hosts the visitor names (git/ URLs) even when they "
        "resolve to private, loopback, link-local, multicast or reserved addresses, or to "
        "this machine's own networks. Off for a public service: it would let visitors probe "
        "the operator's internal network. Networks in Destinations.allowed pass either way. "
        "Hosts set in the operator's own config (e.g. GitHubProvider.clone_host) are not "
        "checked.  While off, submodule URLs are checked the same way (except those on the "
        "operator's host), git follows no HTTP redirect for a visitor's URL or a submodule, and "
        "git connects to the addresses that were checked (no second DNS lookup).",
    ).tag(config=True)
    allow_ssh = Bool(
        False,
        help="Accept ssh URLs (ssh://..., user@host:path) that visitors give. Off by "
        "default: git would authenticate with the service's own ssh keys.",
    ).tag(config=True)

    @validate("banned_specs", "allowed_specs", "high_quota_specs")
    def _check_patterns(self, proposal: Any) -> list[str]:
        patterns: list[str] = proposal["value"]
        for pattern in patterns:
            try:
                re.compile(pattern)
            except re.error as e:
                raise TraitError(
                    f"{proposal['trait'].name}: bad regular expression {pattern!r}: {e}"
                ) from None
        return patterns

    def __init__(self, spec: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.parse(spec)

    def parse(self, spec: str) -> None:
        """Split ``spec`` into this provider's parts; raise SpecError if malformed."""
        raise NotImplementedError

    # -- operator policy ----------------------------------------------------------

    @property
    def destinations(self) -> Destinations:
        """The operator's destination policy (``c.Destinations``) from this provider's
        config: what ``allow_private_hosts`` (off) refuses, and the allowed networks."""
        return Destinations(parent=self)

    def spec_forms(self) -> list[str]:
        """The spellings of the spec that patterns are matched against: as asked,
        and url-unescaped (when different)."""
        unescaped = unquote(self.spec)
        return [self.spec] if unescaped == self.spec else [self.spec, unescaped]

    def matches(self, patterns: list[str]) -> bool:
        """True when one of ``patterns`` ``re.match``-es a spelling of the spec (any case)."""
        forms = self.spec_forms()
        return any(re.match(p, form, re.IGNORECASE) for p in patterns for form in forms)

    def is_banned(self) -> bool:
        """True when ``banned_specs`` matches the spec."""
        return self.matches(self.banned_specs)

    def is_allowed(self) -> bool:
        """True unless ``allowed_specs`` is set and does not match the spec (or the
        spec has dot path segments, which could step outside an allowed prefix)."""
        if not self.allowed_specs:
            return True
        segments = re.split(r"[/\\]", unquote(self.spec))
        if "." in segments or ".." in segments:
            return False
        return self.matches(self.allowed_specs)

    def is_high_quota(self) -> bool:
        """True when ``high_quota_specs`` matches the spec (the sessions quota asks)."""
        return self.matches(self.high_quota_specs)

    def check_spec_allowed(self) -> None:
        """Raise SpecNotAllowed (403) if ``banned_specs`` or ``allowed_specs`` refuse the spec."""
        shown = redact(unquote(self.spec))
        if self.is_banned():
            raise SpecNotAllowed(
                f"Sorry, {shown} has been temporarily disabled from launching. "
                "Please contact admins for more info!",
                log_message=f"{self.prefix}/{shown} matches banned_specs",
            )
        if not self.is_allowed():
            raise SpecNotAllowed(
                f"{shown} is not allowed on this service.",
                log_message=f"{self.prefix}/{shown} does not match allowed_specs",
            )

    def use_visitor(self, visitor: Visitor) -> None:
        """Fetch as ``visitor`` where the provider can (their own token for a private
        repository); the default ignores who asks."""

    @property
    def uses_credentials(self) -> bool:
        """Whether fetches carry the visitor's own credentials."""
        return False

    def credentials(self) -> dict[str, str]:
        """The visitor's tokens fetches carry, ``{host[:port]: token}`` (as
        ``Visitor.tokens``): what a build that fetches elsewhere needs (a build Job's
        Secret).  Never log it.  The default: none."""
        return {}

    async def check_access(self) -> None:
        """Raise RepositoryNotFound unless the visitor may read the repository now.

        Called before a cached version is used when the resolve itself asked no
        server (a full commit sha) and the content may be private; the default
        (content anyone may read) does nothing."""

    def notices(self) -> list[str]:
        """What the visitor should know about the resolved content, shown as the launch's
        events after it resolved (e.g. a local checkout's uncommitted changes, not part
        of the commit built).  Default: nothing."""
        return []

    async def resolve(self) -> Resolved:
        """Resolve the spec to an immutable version (no content transfer)."""
        raise NotImplementedError

    async def fetch(self, resolved: Resolved, dest: Path, log: LogFn) -> None:
        """Fill the empty directory ``dest`` with the content of ``resolved``.

        Report progress through ``log`` (one line per call).  ``dest`` must
        not contain VCS metadata the session does not need; keeping ``.git``
        is allowed (repo2docker keeps it).
        """
        raise NotImplementedError

    @classmethod
    def repoprovider_config(cls) -> dict[str, Any]:
        """The entry for ``/api/repoproviders`` (BinderHub's shape)."""
        return {
            "id": cls.prefix,
            "displayName": cls.display_name,
            "spec": {"validateRegex": ".+"},
            "repo": {"label": cls.spec_label, "placeholder": cls.spec_placeholder},
            "ref": {"enabled": cls.has_ref, "default": "HEAD"},
        }
