"""Running git asynchronously, and reading what it says.

* :func:`run_git` runs one git command without a terminal: no credential
  prompt ever (``GIT_TERMINAL_PROMPT=0``, ssh in batch mode), English
  messages (``LC_ALL=C``) so that :func:`classify_failure` can read them, a
  timeout, and the whole process group killed if the awaiting coroutine is
  cancelled or times out.  ``GIT_ALLOW_PROTOCOL`` is removed from git's
  environment: it would override the ``protocol.*.allow`` settings the
  providers pass with ``-c``.
* :func:`check_git_url` accepts the URL forms git fetches from (https, http,
  ssh, git, file, ``user@host:path``, a local path) and refuses transport
  helpers (``ext::``), option-like strings and unknown schemes.
* :func:`redact` removes credentials from URLs before anything is logged.
* :func:`redirect_refused` tells a redirect git refused to follow
  (``http.followRedirects=false``) from other failures.
* :func:`token_header` makes the setting that sends a visitor's token to one
  origin; :func:`run_git` passes it (and any ``*.extraheader`` setting) through
  ``GIT_CONFIG_COUNT``/``GIT_CONFIG_KEY_n``/``GIT_CONFIG_VALUE_n`` in git's
  environment, never on its command line, where any process may read it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import re
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from ..errors import FetchError, SpecError
from ..logs import LogFn

#: schemes git can fetch from that we accept
GIT_SCHEMES = frozenset({"http", "https", "ssh", "git", "git+ssh", "ssh+git", "file"})

#: ``scheme://`` at the start of a URL (group 1: the scheme)
SCHEME_RE = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_HELPER_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*::")
#: ``[user@]host:path`` with no slash before the colon (git's scp-like syntax;
#: group 1: the host)
SCP_RE = re.compile(r"^(?:[^@/\s]+@)?(\[[^\]/]+\]|[^/:\s]{2,}):(?!//).")
#: the user-info part of a URL, plain (``//user:tok@``) or URL-escaped (``%2F%2F...%40``)
_USERINFO_RE = re.compile(r"(?i)(//|%2F%2F)((?:(?!%2F)[^/?#@\s])+)(@|%40)")
#: a URL's query (``?`` or URL-escaped ``%3F``) up to the next path separator or space
_QUERY_RE = re.compile(r"(?i)(\?|%3F)[^/\s]*")
_PROGRESS_RE = re.compile(r"^(?:remote:\s*)?(?P<what>[^:]+):\s+(?P<pct>\d+)%")
#: what git says when the server answers with a redirect it may not follow
_REDIRECT_RE = re.compile(r"returned error: 30[12378]\b")

#: stderr fragments that mean "this repository cannot be reached"
_REPO_ERRORS = (
    "repository not found",
    "does not appear to be a git repository",
    "could not read from remote repository",
    "not found",
    "unable to access",
    "could not resolve host",
    "connection refused",
    "connection timed out",
    "connection reset",
    "authentication failed",
    "terminal prompts disabled",
    "could not read username",
    "could not read password",
    "access denied",
    "not exported",
    "permission denied",
    "host key verification failed",
    "name or service not known",
    "failed to connect",
    "unable to look up",
    "no route to host",
    "not supported",
    "not allowed",
    "unable to find remote helper",
    "no such device or address",
    "timed out",
)
#: stderr fragments that mean "the repository is there, that commit is not"
_REF_ERRORS = (
    "not our ref",
    "unadvertised object",
    "couldn't find remote ref",
    "no such remote ref",
    "bad object",
    "did not contain",
    "invalid reference",
    "reference is not a tree",
    "unknown revision",
    "unable to read tree",
)


class UrlKind(Enum):
    """Where a git URL points."""

    REMOTE = "remote"
    LOCAL = "local"


class Failure(Enum):
    """What a failed git command's stderr says went wrong."""

    REPOSITORY = "repository"
    REF = "ref"
    OTHER = "other"


@dataclass
class GitResult:
    """The outcome of :func:`run_git`.  ``stderr`` holds complete lines only
    (progress meters left out); credentials are redacted."""

    args: list[str]
    returncode: int
    stdout: str
    stderr: str
    timed_out: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def describe(self) -> str:
        """One text for log messages: the command, its status and stderr."""
        status = "timed out" if self.timed_out else f"exited {self.returncode}"
        cmd = redact(" ".join(self.args))
        return f"`{cmd}` {status}: {self.stderr.strip() or '(no output)'}"


def redact(text: str) -> str:
    """Replace the user-info part of every URL in ``text`` (tokens) by ``***``,
    also in URL-escaped URLs (``git/`` specs).

    ``git@`` (the usual ssh user, never a secret) is kept.
    """
    return _USERINFO_RE.sub(_mask, text)


def loggable(text: str) -> str:
    """:func:`redact`, and every URL's query masked too (``?***``, also URL-escaped):
    for the operator's log, where a token in ``?access_token=`` must not land either.
    (Visitors' messages keep their query: it is theirs.)"""
    return _QUERY_RE.sub(lambda m: f"{m.group(1)}***", redact(text))


def _mask(match: re.Match[str]) -> str:
    if match.group(2).lower() == "git":
        return match.group(0)
    return f"{match.group(1)}***{match.group(3)}"


def check_git_url(url: str, expected: str) -> UrlKind:
    """Return whether ``url`` is a remote or local git URL; raise SpecError if
    git should not be asked to fetch from it.  ``expected`` describes the
    expected form for the error message."""
    if not url or url != url.strip() or any(ord(c) < 32 for c in url):
        raise SpecError(f"Malformed repository URL {redact(url)!r}: expected {expected}.")
    if url.startswith("-"):
        raise SpecError(f"Malformed repository URL {redact(url)!r}: it must not start with '-'.")
    m = SCHEME_RE.match(url)
    if m:
        scheme = m.group(1).lower()
        if scheme not in GIT_SCHEMES:
            known = ", ".join(sorted(GIT_SCHEMES))
            raise SpecError(
                f"Unsupported URL scheme {scheme!r} in {redact(url)!r}.",
                hint=f"Use one of: {known}.",
            )
        if len(url) == m.end():
            raise SpecError(f"Malformed repository URL {redact(url)!r}: expected {expected}.")
        return UrlKind.LOCAL if scheme == "file" else UrlKind.REMOTE
    if _HELPER_RE.match(url):
        raise SpecError(f"Unsupported git transport in {redact(url)!r}.")
    if SCP_RE.match(url):
        return UrlKind.REMOTE
    if "://" in url or url.endswith(":"):
        raise SpecError(f"Malformed repository URL {redact(url)!r}: expected {expected}.")
    return UrlKind.LOCAL


def classify_failure(stderr: str) -> Failure:
    """Read git's stderr: is the repository unreachable, the commit missing, or other?"""
    text = stderr.lower()
    if any(s in text for s in _REF_ERRORS):
        return Failure.REF
    if any(s in text for s in _REPO_ERRORS):
        return Failure.REPOSITORY
    return Failure.OTHER


#: git's words for a server it could not connect to -> what we say
_CONNECTION_FAILURES = (
    ("could not resolve host", "its name does not resolve"),
    ("name or service not known", "its name does not resolve"),
    ("connection refused", "the connection was refused"),
    ("timed out", "the connection timed out"),
    ("network is unreachable", "there is no network route to it"),
    ("no route to host", "there is no network route to it"),
    ("connection reset", "the connection was reset"),
    ("failed to connect", "the connection failed"),
    ("couldn't connect", "the connection failed"),
)


def connection_failure(stderr: str) -> str:
    """Why git could not connect to the server at all (its stderr), or ''."""
    text = stderr.lower()
    return next((why for words, why in _CONNECTION_FAILURES if words in text), "")


def redirect_refused(stderr: str) -> bool:
    """True when git failed because the server redirected and redirects are off."""
    return bool(_REDIRECT_RE.search(stderr))


def token_header(origin: str, username: str, token: str) -> dict[str, str]:
    """The git setting that sends ``token`` (HTTP basic auth as ``username``) to the
    URLs under ``origin`` only (``https://host[:port]``): a submodule elsewhere never
    gets it.  GitHub takes ``x-access-token``, GitLab ``oauth2`` as the username."""
    basic = base64.b64encode(f"{username}:{token}".encode()).decode()
    return {f"http.{origin}/.extraHeader": f"Authorization: Basic {basic}"}


def _is_secret(key: str) -> bool:
    return key.lower().endswith(".extraheader")


def git_env(secrets: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every git command: no prompts, English messages, no
    inherited protocol allow-list overriding the ``-c`` settings, and the
    ``secrets`` settings (see the module docstring)."""
    env = dict(os.environ)
    count = env.get("GIT_CONFIG_COUNT", "")
    inherited = int(count) if secrets and count.isdigit() else 0
    for i, (key, value) in enumerate((secrets or {}).items(), start=inherited):
        env[f"GIT_CONFIG_KEY_{i}"], env[f"GIT_CONFIG_VALUE_{i}"] = key, value  # after the
    if secrets:  # service's own settings of this kind, which stay
        env["GIT_CONFIG_COUNT"] = str(inherited + len(secrets))
    env.update(
        GIT_TERMINAL_PROMPT="0",
        GCM_INTERACTIVE="never",
        LC_ALL="C",
        LANGUAGE="C",
    )
    env.pop("GIT_ASKPASS", None)
    env.pop("SSH_ASKPASS", None)
    env.pop("GIT_ALLOW_PROTOCOL", None)
    env.pop("GIT_PROTOCOL_FROM_USER", None)
    env.setdefault("GIT_SSH_COMMAND", "ssh -o BatchMode=yes")
    return env


@dataclass
class _ProgressFilter:
    """Pass complete lines through; of git's ``\\r`` progress meters pass one
    line per quarter (0, 25, 50, 75 %) per meter, so logs stay short."""

    log: LogFn | None
    _last: tuple[str, int] = field(default=("", -1))

    def line(self, text: str, complete: bool) -> None:
        text = redact(text.strip())
        if not text or self.log is None:
            return
        m = _PROGRESS_RE.match(text)
        if m and not complete:
            what, quarter = m.group("what"), int(m.group("pct")) // 25
            if (what, quarter) == self._last or quarter >= 4:
                return
            self._last = (what, quarter)
        self.log(text)


async def _read_stderr(stream: asyncio.StreamReader, progress: _ProgressFilter) -> str:
    lines: list[str] = []
    buf = b""
    while chunk := await stream.read(4096):
        buf += chunk
        while True:
            cut = min((i for i in (buf.find(b"\n"), buf.find(b"\r")) if i >= 0), default=-1)
            if cut < 0:
                break
            text = buf[:cut].decode("utf-8", "replace")
            complete = buf[cut : cut + 1] == b"\n"
            buf = buf[cut + 1 :]
            progress.line(text, complete)
            if complete and text.strip():
                lines.append(text)
    if buf.strip():
        text = buf.decode("utf-8", "replace")
        progress.line(text, True)
        lines.append(text)
    return redact("\n".join(lines[-200:]))


def _kill(proc: asyncio.subprocess.Process) -> None:
    """Kill git and its helpers (ssh, git-remote-https, upload-pack)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


async def run_git(
    args: Sequence[str],
    *,
    cwd: Path | None = None,
    config: Mapping[str, str | tuple[str, ...]] | None = None,
    time_limit: float | None = None,
    log: LogFn | None = None,
) -> GitResult:
    """Run ``git [-c k=v ...] <args>`` and return its result (a tuple value: the
    key given once per value, for multi-valued settings).

    Never raises for a failing command (FetchError only if git cannot be
    started at all).  stderr lines go to ``log`` as they come.  On
    cancellation the process group is killed and CancelledError re-raised."""
    cmd = ["git"]
    secrets: dict[str, str] = {}
    for key, values in (config or {}).items():
        for value in (values,) if isinstance(values, str) else values:
            if _is_secret(key):
                secrets[key] = value
            else:
                cmd += ["-c", f"{key}={value}"]
    cmd += list(args)
    try:
        proc = await asyncio.create_subprocess_exec(
            *cmd,
            cwd=cwd,
            env=git_env(secrets),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
    except OSError as e:  # no git binary, or cwd vanished
        raise FetchError(
            f"Could not run git: {e.strerror}.", log_message=f"running {cmd[:3]} in {cwd}: {e!r}"
        ) from e
    assert proc.stdout is not None and proc.stderr is not None
    reading = asyncio.gather(proc.stdout.read(), _read_stderr(proc.stderr, _ProgressFilter(log)))
    try:
        async with asyncio.timeout(time_limit):
            out, err = await reading
            returncode = await proc.wait()
    except TimeoutError:
        _kill(proc)
        await proc.wait()
        reading.cancel()
        return GitResult(cmd, -1, "", f"timed out after {time_limit:g} s", timed_out=True)
    except BaseException:
        _kill(proc)
        reading.cancel()
        with contextlib.suppress(BaseException):
            await asyncio.shield(proc.wait())
        raise
    return GitResult(cmd, returncode, out.decode("utf-8", "replace"), err)


async def ls_remote(
    url: str,
    patterns: Sequence[str],
    *,
    config: Mapping[str, str | tuple[str, ...]] | None = None,
    time_limit: float | None = None,
) -> tuple[GitResult, dict[str, str]]:
    """``git [-c k=v ...] ls-remote -- <url> <patterns>``: the result and a
    refname -> sha map."""
    result = await run_git(
        ["ls-remote", "--", url, *patterns], config=config, time_limit=time_limit
    )
    refs: dict[str, str] = {}
    if result.ok:
        for line in result.stdout.splitlines():
            sha, _, name = line.partition("\t")
            if sha and name:
                refs.setdefault(name.strip(), sha.strip())
    return result, refs
