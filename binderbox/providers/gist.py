"""``gist/<user>/<gist-id>[/<ref>]``: a GitHub gist.

An empty ref, ``HEAD``, ``master`` or ``main`` means the latest version
(the gist repository's ``HEAD``); any other ref resolves like a git ref (a
commit of the gist's history).  Gists are git repositories at
``<clone_host>/<gist-id>.git``; ``repo_url`` is ``<host>/<user>/<gist-id>``,
``ref_url`` ``<host>/<user>/<gist-id>/<sha>``.
"""

from __future__ import annotations

import re
from urllib.parse import quote, unquote

from ..errors import SpecError
from .git import HostedGitProvider, check_ref
from .github import check_name

GIST_ID_RE = re.compile(r"^[A-Za-z0-9]+$")
LATEST_REFS = frozenset({"", "HEAD", "master", "main"})


class GistProvider(HostedGitProvider):
    """A GitHub gist.  See the module docstring."""

    prefix = "gist"
    display_name = "Gist"
    spec_label = "Gist ID (username/gistId) or URL"
    spec_placeholder = "username/gistId"
    expected_form = "gist/<user>/<gist-id>[/<ref>], e.g. gist/someone/8f0a3c1e/HEAD"

    default_host = "https://gist.github.com"

    def parse(self, spec: str) -> None:
        parts = spec.split("/", 2)
        if len(parts) < 2 or not GIST_ID_RE.match(parts[1].removesuffix(".git")):
            raise SpecError(f"Malformed spec {spec!r}.", hint=f"Expected {self.expected_form}.")
        self.user = check_name(parts[0], spec, self.expected_form)
        self.gist_id = parts[1].removesuffix(".git")
        ref = unquote(parts[2]) if len(parts) == 3 else ""
        ref = "HEAD" if ref in LATEST_REFS else ref
        self.unresolved_ref = check_ref(ref, self.expected_form)
        self.clone_url = f"{self.clone_host.rstrip('/')}/{self.gist_id}.git"

    @property
    def repo_url(self) -> str:
        return f"{self.host.rstrip('/')}/{self.user}/{self.gist_id}"

    def ref_url(self, sha: str) -> str:
        return f"{self.repo_url}/{sha}"

    def persistent_spec(self, sha: str) -> str:
        return make_spec(self.user, self.gist_id, sha)


def make_spec(user: str, gist_id: str, ref: str) -> str:
    """The ``gist/`` spec of ``ref`` in ``user``'s gist ``gist_id``."""
    return f"{user}/{gist_id}/{quote(ref, safe='/')}"
