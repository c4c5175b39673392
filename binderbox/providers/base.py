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
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from traitlets.config import LoggingConfigurable

from ..logs import LogFn


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

    def __init__(self, spec: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.spec = spec
        self.parse(spec)

    def parse(self, spec: str) -> None:
        """Split ``spec`` into this provider's parts; raise SpecError if malformed."""
        raise NotImplementedError

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
