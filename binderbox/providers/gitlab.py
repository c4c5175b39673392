"""``gl/<url-escaped namespace/project>/<ref>``: a project on GitLab.

For example ``gl/group%2Fsub%2Fproject/main``.  The namespace may be nested
(``group/sub/project``), a trailing ``.git`` is dropped, a missing ref means
``HEAD``.  Refs resolve with ``git ls-remote`` against
``<clone_host>/<namespace>.git`` (see :mod:`binderbox.providers.git`);
``repo_url`` is ``<host>/<namespace>``, ``ref_url``
``<host>/<namespace>/-/tree/<sha>``.
"""

from __future__ import annotations

from urllib.parse import quote, unquote

from ..errors import SpecError
from .git import HostedGitProvider, check_ref
from .github import NAME_RE


class GitLabProvider(HostedGitProvider):
    """A GitLab project.  See the module docstring."""

    prefix = "gl"
    display_name = "GitLab.com"
    spec_label = "GitLab.com repository or URL"
    spec_placeholder = "group/project"
    expected_form = "gl/<url-escaped namespace/project>/<ref>, e.g. gl/group%2Fproject/main"

    default_host = "https://gitlab.com"

    def parse(self, spec: str) -> None:
        escaped, _, ref = spec.partition("/")
        namespace = unquote(escaped).strip("/").removesuffix(".git")
        segments = namespace.split("/")
        if len(segments) < 2 or not all(
            NAME_RE.match(s) and s not in (".", "..") for s in segments
        ):
            raise SpecError(f"Malformed spec {spec!r}.", hint=f"Expected {self.expected_form}.")
        self.namespace = namespace
        self.unresolved_ref = check_ref(unquote(ref) or "HEAD", self.expected_form)
        self.clone_url = f"{self.clone_host.rstrip('/')}/{namespace}.git"

    @property
    def repo_url(self) -> str:
        return f"{self.host.rstrip('/')}/{self.namespace}"

    def ref_url(self, sha: str) -> str:
        return f"{self.repo_url}/-/tree/{sha}"

    def persistent_spec(self, sha: str) -> str:
        return make_spec(self.namespace, sha)


def make_spec(namespace: str, ref: str) -> str:
    """The ``gl/`` spec of ``ref`` in the project ``namespace`` (``group/project``)."""
    return f"{quote(namespace, safe='')}/{quote(ref, safe='/')}"
