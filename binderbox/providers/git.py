"""``git/<url-escaped clone URL>/<ref>``: any repository git can fetch from.

Also the base of the hosted-git providers (``gh``, ``gl``, ``gist``,
``local``): they only parse their spec into :attr:`GitProvider.clone_url` and
:attr:`GitProvider.unresolved_ref` and override the display URLs.

Resolving a ref (:meth:`GitProvider.resolve`), in order:

1. a 40-hex ref is taken as is (no network);
2. ``git ls-remote <url> <ref> <ref>^{}``, preferring ``HEAD`` or an exact
   ``refs/...`` name, then ``refs/heads/<ref>``, then ``refs/tags/<ref>``
   (an annotated tag is peeled to its commit), then ``refs/<ref>``;
3. if nothing matched and the ref looks like an abbreviated commit (4-39 hex
   digits): a commits-only bare clone (``git clone --bare --filter=tree:0``,
   all branches and tags; servers without filter support send everything)
   into a temporary directory, then ``git rev-parse <ref>^{commit}`` there.
   The temporary clone is deleted; the full sha is what gets fetched.

Fetching (:meth:`GitProvider.fetch`) into an empty directory: ``git init``,
``git fetch --depth 1 origin <sha>``; if the server refuses a sha it does not
advertise, a full fetch of branches, tags and HEAD; ``git checkout <sha>``;
then the submodules, one level at a time: ``git submodule init`` registers
their URLs (relative ones resolved against the superproject's), every URL
must pass :func:`~binderbox.providers.policy.url_refusal` (a refused one is
:class:`~binderbox.errors.SpecNotAllowed` naming the submodule's path), then
``git submodule update --depth 1`` (retried without ``--depth`` when a
submodule commit is not a branch tip); submodules with a ``.gitmodules`` of
their own are the next level.  ``.git`` is kept.

Every command that may reach the network gets :meth:`GitProvider.fetch_config`:
transports https, http, git and ssh (``file://`` and local paths only when
the repository itself is local), no recursion git was not asked for, and, when
private hosts are not allowed, no HTTP redirects for a visitor's URL or any
submodule, and the addresses the policy checked for each host
(:attr:`GitProvider.pins`, see :mod:`binderbox.providers.pins` and
:mod:`binderbox.providers.policy`).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar
from urllib.parse import quote, unquote, urlsplit

from traitlets import Float, Unicode, default

from ..errors import (
    FetchError,
    HostUnreachable,
    RefNotFound,
    RepositoryNotFound,
    SpecError,
    SpecNotAllowed,
)
from ..logs import LogFn
from .base import RepoProvider, Resolved
from .gitutil import (
    Failure,
    GitResult,
    UrlKind,
    check_git_url,
    classify_failure,
    connection_failure,
    ls_remote,
    redact,
    redirect_refused,
    run_git,
    token_header,
)
from .pins import GitConfig, Pins
from .policy import UrlRules, url_origin, url_refusal

if TYPE_CHECKING:
    from ..sessions.identity import Visitor

FULL_SHA_RE = re.compile(r"^[0-9a-fA-F]{40}$")
_PRIVATE_HINT = (
    "A private repository launches for visitors who log in with an account that may read it."
)
SHORT_SHA_RE = re.compile(r"^[0-9a-fA-F]{4,39}$")
_BAD_REF_RE = re.compile(r"(^-)|[\x00-\x20~^:?*\[\\\x7f]|\.\.|@\{")
#: transports every fetch may use; ``file`` depends on the repository
_TRANSPORTS = ("https", "http", "git", "ssh")
_REDIRECTED = "the server answered with a redirect, which this service does not follow"


def check_ref(ref: str, expected: str) -> str:
    """Return ``ref`` if git could name a ref or commit that way, else SpecError."""
    if ref == "HEAD" or (ref and not _BAD_REF_RE.search(ref) and not ref.endswith(("/", "."))):
        return ref
    raise SpecError(
        f"Malformed ref {ref!r}.",
        hint=f"Expected {expected}; the ref is a branch, tag or commit.",
    )


class GitProvider(RepoProvider):
    """Any git repository, by URL.  See the module docstring."""

    prefix = "git"
    display_name = "Git repository"
    spec_label = "Git repository URL"
    spec_placeholder = "https://example.org/group/repository.git"
    expected_form = (
        "git/<url-escaped clone URL>/<ref>, e.g. git/https%3A%2F%2Fexample.org%2Frepo.git/main"
    )

    resolve_timeout = Float(
        60.0,
        help="Seconds to wait for the git server to list a repository's refs when resolving "
        "a ref, before reporting the repository as unreachable.",
    ).tag(config=True)
    fetch_timeout = Float(
        900.0,
        help="Seconds a single git command of a fetch may take before it is killed; the "
        "submodules of a repository (all levels) get this long in all.",
    ).tag(config=True)

    #: what git fetches from (may hold credentials: never log it unredacted)
    clone_url: str
    _local: bool = False
    #: the ref as the user gave it (``HEAD`` if none)
    unresolved_ref: str
    token_username = Unicode(
        "x-access-token",
        help="The user name git sends with a logged-in visitor's own token (HTTP basic "
        "auth) to fetch a private repository: GitHub takes x-access-token, GitLab oauth2, "
        "most other git hosts any name.",
    ).tag(config=True)

    #: where git connects for the hosts the policy checked (:mod:`.pins`)
    pins: Pins
    #: the visitor's own token for the repository's host (:meth:`use_visitor`)
    _token: str | None = None
    #: the server answered this provider's resolve (so the visitor may read it)
    _asked: bool = False

    def __init__(self, spec: str, **kwargs: Any) -> None:
        self.pins = Pins()
        super().__init__(spec, **kwargs)

    def parse(self, spec: str) -> None:
        url_part, _, ref = spec.partition("/")
        url = unquote(url_part)
        kind = check_git_url(url, self.expected_form)
        self._local = kind is UrlKind.LOCAL
        self.clone_url = url
        self.unresolved_ref = check_ref(unquote(ref) or "HEAD", self.expected_form)

    # -- what subclasses override ---------------------------------------------

    @property
    def reads_local_disk(self) -> bool:
        """True when the content comes from this machine's disk (``file://``, paths)."""
        return self._local

    @property
    def url_from_visitor(self) -> bool:
        """True when the visitor chose the host git fetches from (``git/`` URLs);
        False for local content and for hosts the operator configures."""
        return not self.reads_local_disk and not self.has_trait("clone_host")

    @property
    def repo_url(self) -> str:
        """Where a person can see the repository."""
        return redact(self.clone_url)

    def ref_url(self, sha: str) -> str:
        """Where a person can see commit ``sha``."""
        return self.repo_url

    def persistent_spec(self, sha: str) -> str:
        """The spec with the ref replaced by ``sha`` (resolves to the same commit)."""
        return make_spec(self.clone_url, sha)

    # -- a visitor's own credentials ---------------------------------------------

    def token_origin(self) -> str | None:
        """``scheme://host[:port]`` a token may be sent to: https, or http on loopback
        (never a plain-text token over the network); None otherwise."""
        origin = url_origin(self.clone_url)
        if origin is None or self.reads_local_disk:
            return None
        scheme, host, port = origin
        if scheme != "https" and not (scheme == "http" and _is_loopback(host)):
            return None
        shown = f"[{host}]" if ":" in host else host
        return f"{scheme}://{shown}" + (f":{port}" if port else "")

    def use_visitor(self, visitor: Visitor) -> None:
        """Fetch with ``visitor``'s own token for this repository's host, if they have
        one (``Visitor.tokens`` by ``host[:port]``): private repositories."""
        origin = self.token_origin()
        if origin is not None:
            self._token = visitor.tokens.get(origin.split("://", 1)[1])

    @property
    def uses_credentials(self) -> bool:
        return self._token is not None

    def credentials(self) -> dict[str, str]:
        origin = self.token_origin()
        if self._token is None or origin is None:
            return {}
        return {origin.split("://", 1)[1]: self._token}

    async def check_access(self) -> None:
        """Ask the server (with the visitor's credentials, if any) whether the visitor
        may read the repository, unless this resolve already did; RepositoryNotFound
        if not."""
        if self.reads_local_disk or self._asked:
            return
        self._check_resolvable()
        result, _ = await ls_remote(
            self.clone_url, ["HEAD"], config=self.fetch_config(), time_limit=self.resolve_timeout
        )
        if not result.ok:
            raise self.unreachable(result)

    # -- resolve ----------------------------------------------------------------

    async def resolve(self) -> Resolved:
        sha = await self.resolve_ref(self.unresolved_ref)
        return self.resolved(sha)

    def resolved(self, sha: str) -> Resolved:
        return Resolved(
            provider=self.prefix,
            spec=self.spec,
            version=sha,
            persistent_spec=self.persistent_spec(sha),
            repo_url=self.repo_url,
            ref_url=self.ref_url(sha),
            clone_url=self.clone_url,
        )

    def not_reachable(self, detail: str) -> RepositoryNotFound:
        if self.uses_credentials:
            message = "Check the URL, and that your account may read the repository."
        else:
            message = "Check the URL and that the repository is public."
        return RepositoryNotFound(
            f"Could not reach {self.repo_url}. {message}",
            hint="" if self.uses_credentials else _PRIVATE_HINT,
            log_message=f"{self.prefix}: {redact(self.clone_url)}: {detail}",
        )

    def unreachable(self, result: GitResult) -> RepositoryNotFound:
        """:meth:`not_reachable` for a failed git command; says so when the
        server redirected and redirects were off."""
        why = connection_failure(result.stderr)
        if why:
            host = urlsplit(self.clone_url).hostname or redact(self.clone_url)
            return HostUnreachable(
                f"Could not connect to {host}: {why}.",
                hint="Its server may be down or unreachable from this service; try again later.",
                log_message=f"{self.prefix}: {redact(self.clone_url)}: {result.describe()}",
            )
        if not redirect_refused(result.stderr):
            return self.not_reachable(result.describe())
        return RepositoryNotFound(
            f"Could not reach {self.repo_url}: {_REDIRECTED}.",
            hint="Use the URL the repository has moved to (where the redirect points).",
            log_message=f"{self.prefix}: {redact(self.clone_url)}: {result.describe()}",
        )

    def ref_not_found(self, ref: str, detail: str, hint: str = "") -> RefNotFound:
        return RefNotFound(
            f"Could not find {ref!r} in {self.repo_url}.",
            hint=hint or "Check the branch, tag or commit name, and that the repository is public.",
            log_message=f"{self.prefix}: {redact(self.clone_url)}: {detail}",
        )

    async def resolve_ref(self, ref: str) -> str:
        """The full commit sha ``ref`` names in :attr:`clone_url`."""
        if FULL_SHA_RE.match(ref):
            return ref.lower()
        self._check_resolvable()
        result, refs = await ls_remote(
            self.clone_url,
            [ref, ref + "^{}"],
            config=self.fetch_config(),
            time_limit=self.resolve_timeout,
        )
        if not result.ok:
            raise self.unreachable(result)
        self._asked = True
        sha = pick_ref(refs, ref)
        if sha:
            return sha
        if SHORT_SHA_RE.match(ref):
            return await self._resolve_short_sha(ref)
        if ref == "HEAD":
            raise self.ref_not_found(ref, "no HEAD", hint="The repository has no commits yet.")
        raise self.ref_not_found(ref, f"ls-remote listed no match among {sorted(refs)}")

    async def _resolve_short_sha(self, ref: str) -> str:
        """Resolve an abbreviated commit sha with a commits-only clone."""
        with tempfile.TemporaryDirectory(prefix="binderbox-resolve-") as tmp:
            repo = Path(tmp) / "repo.git"
            result = await run_git(
                ["clone", "--bare", "--quiet", "--filter=tree:0", "--", self.clone_url, str(repo)],
                config=self.fetch_config(),
                time_limit=self.fetch_timeout,
            )
            if not result.ok:
                raise self.unreachable(result)
            found = await run_git(
                ["rev-parse", "--verify", "--end-of-options", ref + "^{commit}"], cwd=repo
            )
        if found.ok:
            return found.stdout.strip()
        if "ambiguous" in found.stderr:
            raise self.ref_not_found(
                ref, found.describe(), hint="Several commits start with it: give more characters."
            )
        raise self.ref_not_found(ref, found.describe())

    # -- fetch -------------------------------------------------------------------

    def fetch_config(self, *, submodules: bool = False) -> GitConfig:
        """``git -c`` settings for fetching (``submodules``: for fetching submodules).

        Only the transports in ``_TRANSPORTS``, plus ``file`` (and local paths)
        for local repositories; no recursion into submodules except by
        :meth:`_fetch_submodules`; no HTTP redirects unless private hosts are
        allowed, for a visitor's URL and for submodules (the operator's own
        hosts may redirect, as git allows by default); the :attr:`pins` of
        every host checked so far, so git connects where the policy looked.
        """
        config: GitConfig = {
            "protocol.allow": "never",
            **{f"protocol.{name}.allow": "always" for name in _TRANSPORTS},
            "protocol.file.allow": "always" if self.reads_local_disk else "never",
            "protocol.ext.allow": "never",
            "submodule.recurse": "false",
            "fetch.recurseSubmodules": "false",
            "advice.detachedHead": "false",
            "init.defaultBranch": "main",
        }
        if not self.allow_private_hosts and (submodules or self.url_from_visitor):
            config["http.followRedirects"] = "false"
        config.update(self.pins.config())
        origin = self.token_origin()
        if self._token and origin:  # goes to git's environment, never its command line
            config.update(token_header(origin, self.token_username, self._token))
        return config

    def _check_resolvable(self) -> None:
        """RepositoryNotFound if the policy found that :attr:`clone_url`'s host does not
        resolve: git must not look it up again (it could answer differently now)."""
        if self.pins.unresolved(self.clone_url):
            host = urlsplit(self.clone_url).hostname or redact(self.clone_url)
            raise HostUnreachable(
                f"Could not connect to {host}: its name does not resolve.",
                hint="Check the host name in the URL.",
                log_message=f"{self.prefix}: {redact(self.clone_url)}: "
                "the host did not resolve when the policy checked it",
            )

    def url_rules(self, url: str) -> UrlRules:
        """The policy for submodule URLs of the repository at ``url``."""
        return UrlRules(
            allow_local=self.reads_local_disk,
            allow_ssh=self.allow_ssh,
            allow_private_hosts=self.allow_private_hosts,
            trusted_origin=None if self.url_from_visitor else url_origin(url),
            destinations=self.destinations,
        )

    async def fetch(self, resolved: Resolved, dest: Path, log: LogFn) -> None:
        prepare_dest(dest)
        try:
            await self._fetch(resolved, dest, log)
        except BaseException:
            clear_dir(dest)
            raise

    async def _git(
        self, dest: Path, args: list[str], log: LogFn | None = None, *, submodules: bool = False
    ) -> GitResult:
        return await run_git(
            args,
            cwd=dest,
            config=self.fetch_config(submodules=submodules),
            time_limit=self.fetch_timeout,
            log=log,
        )

    async def _fetch(self, resolved: Resolved, dest: Path, log: LogFn) -> None:
        sha = resolved.version
        url = resolved.clone_url or self.clone_url
        log(f"Fetching {redact(url)} at {sha}")
        self._check_resolvable()
        for args in (["init", "--quiet"], ["remote", "add", "--", "origin", url]):
            result = await self._git(dest, args)
            if not result.ok:
                raise FetchError("Could not prepare the checkout.", log_message=result.describe())
        shallow = await self._git(
            dest,
            ["fetch", "--progress", "--no-tags", "--depth", "1", "origin", sha],
            _without_errors(log),  # a failure here is followed by the full fetch below
        )
        if not shallow.ok:
            self._raise_unreachable(shallow)
            log("The server does not serve that commit directly; fetching the whole history")
            full = await self._git(
                dest,
                [
                    "fetch",
                    "--progress",
                    "origin",
                    "+refs/heads/*:refs/remotes/origin/*",
                    "+refs/tags/*:refs/tags/*",
                    "+HEAD:refs/remotes/origin/HEAD",
                ],
                log,
            )
            self._raise_unreachable(full)
            if not full.ok:
                raise FetchError(f"Could not fetch {self.repo_url}.", log_message=full.describe())
        checkout = await self._git(dest, ["checkout", "--quiet", "--detach", sha + "^{commit}"])
        if not checkout.ok:
            raise self.ref_not_found(sha, f"{shallow.describe()}; {checkout.describe()}")
        log(f"Checked out {sha}")
        if (dest / ".gitmodules").exists():
            await self._fetch_submodules(dest, url, log)

    def _raise_unreachable(self, result: GitResult) -> None:
        if result.timed_out:
            raise FetchError(
                f"Fetching {self.repo_url} took too long.", log_message=result.describe()
            )
        if not result.ok and classify_failure(result.stderr) is Failure.REPOSITORY:
            raise self.unreachable(result)

    async def _fetch_submodules(self, dest: Path, url: str, log: LogFn) -> None:
        """Check and fetch the submodules under ``dest``, level by level, within
        ``fetch_timeout`` in all."""
        log("Fetching submodules")
        rules = self.url_rules(url)
        pending = [Path()]
        try:
            async with asyncio.timeout(self.fetch_timeout):
                while pending:
                    level = pending.pop()
                    repo = dest / level
                    urls = await self._submodule_urls(repo)
                    for path, sub_url in urls.items():
                        await self._check_submodule(level / path, sub_url, rules)
                    await self._update_submodules(repo, log)
                    pending += [level / p for p in urls if (repo / p / ".gitmodules").is_file()]
        except TimeoutError:
            raise FetchError(
                f"Fetching the submodules of {self.repo_url} took too long.",
                log_message=f"submodules of {redact(url)}: over {self.fetch_timeout:g} s",
            ) from None

    async def _submodule_urls(self, repo: Path) -> dict[str, str]:
        """``path -> URL`` of the submodules of the checkout ``repo``: the URLs
        ``git submodule init`` registered from its ``.gitmodules``, relative
        ones resolved against its remote, as ``git submodule update`` uses them."""
        init = await self._git(repo, ["submodule", "init"], submodules=True)
        if not init.ok:
            raise FetchError(
                f"Could not read the submodules of {self.repo_url}.",
                hint="Check the repository's .gitmodules file.",
                log_message=init.describe(),
            )
        registered = await self._git(
            repo, ["config", "-z", "--local", "--get-regexp", r"^submodule\..*\.url$"]
        )
        declared = await self._git(
            repo,
            [
                "config",
                "-z",
                "--blob",
                "HEAD:.gitmodules",
                "--get-regexp",
                r"^submodule\..*\.path$",
            ],
        )
        paths = dict(config_entries(declared.stdout, "path"))
        return {
            paths.get(name, name): url for name, url in config_entries(registered.stdout, "url")
        }

    async def _check_submodule(self, path: Path, url: str, rules: UrlRules) -> None:
        """SpecNotAllowed if the policy refuses submodule ``path``'s ``url``; FetchError
        if its host did not resolve when checked (git must not look it up again)."""
        reason = await url_refusal(url, rules, self.pins)
        if reason is None and self.pins.unresolved(url):
            raise FetchError(
                f"Could not fetch the submodules of {self.repo_url}.",
                hint="Check that every submodule URL is reachable and public.",
                log_message=f"{self.prefix}: {redact(self.clone_url)}: the host of submodule "
                f"{path.as_posix()!r} at {redact(url)!r} does not resolve",
            )
        if reason is None:
            return
        raise SpecNotAllowed(
            f"The submodule {path.as_posix()!r} of {self.repo_url} is not allowed: {reason}.",
            hint="This service fetches submodules only from public repository URLs.",
            log_message=f"{self.prefix}: {redact(self.clone_url)}: refused submodule "
            f"{path.as_posix()!r} at {redact(url)!r}: {reason}",
        )

    async def _update_submodules(self, repo: Path, log: LogFn) -> None:
        """Fetch and check out the registered submodules of ``repo`` (one level)."""
        base = ["submodule", "update", "--progress"]
        result = await self._git(repo, [*base, "--depth", "1"], log, submodules=True)
        if not result.ok and not result.timed_out:
            log("Retrying the submodules with their full history")
            result = await self._git(repo, base, log, submodules=True)
        if result.ok:
            return
        if redirect_refused(result.stderr):
            raise FetchError(
                f"Could not fetch the submodules of {self.repo_url}: {_REDIRECTED}.",
                hint="Point each submodule at the URL its repository has moved to.",
                log_message=result.describe(),
            )
        raise FetchError(
            f"Could not fetch the submodules of {self.repo_url}.",
            hint="Check that every submodule URL is reachable and public.",
            log_message=result.describe(),
        )


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def config_entries(text: str, key: str) -> list[tuple[str, str]]:
    """``(name, value)`` of the ``submodule.<name>.<key>`` entries in the output
    of ``git config -z --get-regexp``."""
    head, tail = "submodule.", f".{key}"
    entries = []
    for entry in text.split("\0"):
        name, _, value = entry.partition("\n")
        if name.startswith(head) and name.endswith(tail) and len(name) > len(head + tail):
            entries.append((name[len(head) : -len(tail)], value))
    return entries


def pick_ref(refs: dict[str, str], ref: str) -> str | None:
    """The commit ``ref`` names among ``ls-remote`` output (peeled tags first)."""
    if ref == "HEAD" or ref.startswith("refs/"):
        candidates = [ref + "^{}", ref]
    else:
        candidates = [
            f"refs/heads/{ref}",
            f"refs/tags/{ref}^{{}}",
            f"refs/tags/{ref}",
            f"refs/{ref}^{{}}",
            f"refs/{ref}",
        ]
    return next((refs[c] for c in candidates if c in refs), None)


def prepare_dest(dest: Path) -> None:
    """Make sure ``dest`` exists and is empty (FetchError otherwise)."""
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise FetchError(
            "Could not fetch the repository: the target directory is not empty.",
            log_message=f"fetch target {dest} is not empty",
        )


def clear_dir(dest: Path) -> None:
    """Remove everything inside ``dest`` (after a failed or cancelled fetch)."""
    if not dest.is_dir():
        return
    for child in dest.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


class HostedGitProvider(GitProvider):
    """Base of providers for one git hosting service (GitHub, GitLab, gists).

    ``host`` makes the links shown to users (``repo_url``, ``ref_url``);
    ``clone_host`` makes the URLs git fetches from and defaults to ``host``
    (tests point it at a local git daemon, an operator at a mirror).
    """

    #: the public service's web address, the default of ``host``
    default_host: ClassVar[str] = ""

    host = Unicode(
        help="Web address of the hosting service. The repository and commit links shown to "
        "users are made from it, and so are clone URLs unless clone_host is set."
    ).tag(config=True)
    clone_host = Unicode(
        help="Base URL that clone URLs are made from. Defaults to host; any URL git "
        "fetches from works (a mirror, or a local git daemon in tests)."
    ).tag(config=True)

    @default("host")
    def _default_host(self) -> str:
        return self.default_host

    @default("clone_host")
    def _default_clone_host(self) -> str:
        return self.host


def make_spec(where: str, ref: str) -> str:
    """The ``git/`` (or ``local/``) spec of ``ref`` in the repository at ``where``."""
    return f"{quote(where, safe='')}/{quote(ref, safe='/')}"


def _without_errors(log: LogFn) -> LogFn:
    """``log`` minus git's ``fatal:``/``error:`` lines (progress goes on): those of a
    shallow fetch the server cannot serve (dumb HTTP: "dumb http transport does not
    support shallow capabilities") would read as the launch's failure before the
    fallback that works; when that fails too, its own lines say why."""

    def filtered(line: str) -> None:
        if not line.lstrip().startswith(("fatal:", "error:")):
            log(line)

    return filtered
