"""``gh/<owner>/<repo>/<ref>``: a repository on GitHub (or a GitHub Enterprise).

The ref may contain ``/`` (``feature/x``); a trailing ``.git`` on the
repository name is dropped; a missing ref means ``HEAD``.  Refs resolve with
``git ls-remote`` against ``<clone_host>/<owner>/<repo>`` (see
:mod:`binderbox.providers.git`), so no GitHub API token or rate limit is
involved.  ``repo_url`` is ``<host>/<owner>/<repo>``, ``ref_url``
``<host>/<owner>/<repo>/tree/<sha>``.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from ..errors import SpecError
from .git import HostedGitProvider, check_ref

#: GitHub user, organisation and repository names
NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def check_name(name: str, spec: str, expected: str) -> str:
    """Return ``name`` if it can be an owner or repository name, else SpecError."""
    if NAME_RE.match(name) and name not in (".", ".."):
        return name
    raise SpecError(f"Malformed spec {spec!r}.", hint=f"Expected {expected}.")


class GitHubProvider(HostedGitProvider):
    """A GitHub repository.  See the module docstring."""

    prefix = "gh"
    display_name = "GitHub"
    spec_label = "GitHub repository name or URL"
    spec_placeholder = "owner/repository"
    expected_form = "gh/<owner>/<repo>/<ref>, e.g. gh/jupyterlab/jupyterlab-demo/HEAD"

    default_host = "https://github.com"

    def parse(self, spec: str) -> None:
        parts = spec.split("/", 2)
        if len(parts) < 2:
            raise SpecError(f"Malformed spec {spec!r}.", hint=f"Expected {self.expected_form}.")
        self.owner = check_name(parts[0], spec, self.expected_form)
        self.repo = check_name(parts[1].removesuffix(".git"), spec, self.expected_form)
        ref = unquote(parts[2]) if len(parts) == 3 else ""
        self.unresolved_ref = check_ref(ref or "HEAD", self.expected_form)
        self.clone_url = f"{self.clone_host.rstrip('/')}/{self.owner}/{self.repo}"

    @property
    def repo_url(self) -> str:
        return f"{self.host.rstrip('/')}/{self.owner}/{self.repo}"

    def ref_url(self, sha: str) -> str:
        return f"{self.repo_url}/tree/{sha}"

    def persistent_spec(self, sha: str) -> str:
        return make_spec(self.owner, self.repo, sha)


def make_spec(owner: str, repo: str, ref: str) -> str:
    """The ``gh/`` spec of ``ref`` in ``owner/repo``."""
    return f"{owner}/{repo}/{quote(ref, safe='/')}"
