"""``requirements.txt`` -> normalised requirement lines.

:func:`read_requirements` reads a pip requirements file the way pip reads it
(backslash continuations, ``#`` comments, ``-r`` includes relative to the
including file) and returns lines that uv installs with the same meaning,
normalised so that equivalent files give equal lines:

* comments, blank lines and surrounding whitespace are dropped; the order
  of the remaining lines is kept (pip semantics);
* ``-r FILE`` / ``--requirement FILE`` is inlined.  A missing file, a file
  outside the repository, a URL or a cycle is an
  :class:`~binderbox.errors.EnvironmentConfigError` naming it;
* a line that parses as a PEP 508 requirement is rewritten by ``packaging``:
  canonical name (lower case, runs of ``-_.`` -> ``-``), sorted extras and
  specifiers, canonical marker quoting (``numpy >= 1.0`` == ``numpy>=1.0``).
  Lines that do not parse are kept as written;
* ``--hash`` options are kept (uv verifies them), sorted, as ``--hash=...``.
  Other per-requirement options (``--config-settings``, ``--global-option``)
  are refused: uv does not accept them;
* local references make the result content-dependent (``local=True``):

  - requirement paths (``.``, ``./pkg``, ``-e .``, ``-e ./sub``, ``file:``
    URLs, ``name @ file:...``, archives such as ``dist/x-1.0.tar.gz``) are
    relative to the *repository root*, as for pip run from the root (which
    is what repo2docker does, even for ``binder/requirements.txt``), and
    are rewritten as ``.`` / ``./path`` relative to the root: the builder
    runs with the content at :data:`~binderbox.environments.HOME` as its
    working directory.  An absolute path under ``/home/jovyan`` is taken as
    inside the repository;
  - ``-c FILE`` (constraints) and ``--find-links DIR`` paths are relative to
    the including file (pip's rule) and are rewritten as absolute paths
    under :data:`~binderbox.environments.HOME`, because uv resolves them
    relative to the requirements file the builder writes, wherever it is;
  - a path that does not exist, or that leaves the repository (``..``, an
    absolute path, a symbolic link pointing outside) is an error;

* global options: ``--index-url``/``-i``, ``--extra-index-url``,
  ``--find-links``/``-f``, ``--no-index``, ``--pre``, ``--no-binary``,
  ``--only-binary`` are kept in a canonical spelling.  Dropped (they only
  tune pip, or weaken security): ``--trusted-host`` (would turn off TLS
  verification of an index), ``--prefer-binary``, ``--use-feature``,
  ``--require-hashes`` (the builder adds the Jupyter packages without
  hashes; the hashes given are still verified).  Anything else is refused;
* ``-e`` with a VCS URL becomes a non-editable ``name @ git+...`` (uv cannot
  install VCS requirements as editable; the environment is read-only).
"""

from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from ..errors import EnvironmentConfigError
from .spec import HOME

#: pip's comment rule: a ``#`` at the start of a line or after whitespace
COMMENT_RE = re.compile(r"(^|\s+)#.*$")
_SCHEME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
_VCS_RE = re.compile(r"^(git|hg|svn|bzr)\+", re.IGNORECASE)
_ARCHIVES = (".whl", ".tar.gz", ".tgz", ".tar.bz2", ".tbz", ".tar.xz", ".txz", ".tar", ".zip")
_EXTRAS_RE = re.compile(r"^(?P<path>.*?)(?P<extras>\[[^\[\]]*\])?$")

#: global options that take a value -> their canonical spelling
_WITH_VALUE = {
    "-r": "--requirement",
    "--requirement": "--requirement",
    "-c": "--constraint",
    "--constraint": "--constraint",
    "-e": "--editable",
    "--editable": "--editable",
    "-i": "--index-url",
    "--index-url": "--index-url",
    "--extra-index-url": "--extra-index-url",
    "-f": "--find-links",
    "--find-links": "--find-links",
    "--no-binary": "--no-binary",
    "--only-binary": "--only-binary",
    "--trusted-host": "--trusted-host",
    "--use-feature": "--use-feature",
}
_FLAGS = frozenset({"--pre", "--no-index", "--prefer-binary", "--require-hashes"})
_DROPPED = frozenset({"--trusted-host", "--use-feature", "--prefer-binary", "--require-hashes"})
_KEPT_VERBATIM = frozenset(
    {"--index-url", "--extra-index-url", "--no-binary", "--only-binary", "--pre", "--no-index"}
)


@dataclass
class Requirements:
    """The result of reading a requirements file."""

    #: normalised lines, in order
    lines: list[str] = field(default_factory=list)
    #: files read, relative to the repository root, in reading order
    sources: list[str] = field(default_factory=list)
    #: some line refers to the repository content
    local: bool = False


def relpath(repo: Path, path: Path) -> str:
    """``path`` relative to ``repo`` as a POSIX string, for messages."""
    return Path(os.path.relpath(path, repo)).as_posix()


def resolve_inside(repo: Path, path: Path, where: str) -> Path:
    """``path`` with symbolic links resolved; an error when it leaves ``repo``."""
    resolved = path.resolve()
    if not resolved.is_relative_to(repo.resolve()):
        name = relpath(repo, path)
        subject = name if name == where else f"{where}: {name}"
        raise EnvironmentConfigError(
            f"{subject} points outside the repository",
            hint="Environment files may only refer to files inside the repository.",
        )
    return resolved


def read_text(repo: Path, path: Path) -> str:
    """Read an environment file as text; errors are user errors naming it."""
    name = relpath(repo, path)
    resolved = resolve_inside(repo, path, name)
    if not resolved.is_file():
        raise EnvironmentConfigError(f"{name}: not a regular file")
    try:
        return resolved.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise EnvironmentConfigError(f"{name}: not valid UTF-8 text") from None
    except OSError as e:
        raise EnvironmentConfigError(f"{name}: cannot be read ({e.strerror})") from None


def logical_lines(text: str) -> list[tuple[int, str]]:
    """pip's preprocessing: join ``\\`` continuations, strip comments and blanks."""
    out: list[tuple[int, str]] = []
    pending: list[str] = []
    first = 0
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.endswith("\\") or COMMENT_RE.match(line):
            if COMMENT_RE.match(line):
                line = " " + line
            if pending:
                pending.append(line)
                line, number = "".join(pending), first
                pending = []
            out.append((number, line))
        else:
            if not pending:
                first = number
            pending.append(line[:-1])
    if pending:
        out.append((first, "".join(pending)))
    stripped = ((n, COMMENT_RE.sub("", line).strip()) for n, line in out)
    return [(n, line) for n, line in stripped if line]


def _file_url_path(text: str) -> str | None:
    """The path of a ``file:`` URL, or ``None`` when ``text`` is not one."""
    if not text.lower().startswith("file:"):
        return None
    parts = urlsplit(text)
    if parts.netloc not in ("", "localhost"):
        return None
    return unquote(parts.path)


def repo_relative(repo: Path, raw: str, base: Path, where: str) -> str:
    """A local path as ``.`` or ``./sub`` relative to the root; must exist inside."""
    if raw == HOME or raw.startswith(HOME + "/"):
        raw, base = "./" + raw[len(HOME) + 1 :] if raw != HOME else ".", repo
    elif raw.startswith("/"):
        raise EnvironmentConfigError(
            f"{where}: {raw} is outside the repository",
            hint="Refer to local packages with paths relative to the repository, e.g. ./pkg.",
        )
    path = Path(os.path.normpath(base / raw))
    resolve_inside(repo, path, where)
    if not path.exists():
        raise EnvironmentConfigError(f"{where}: {relpath(repo, path)} does not exist")
    rel = relpath(repo, path)
    return "." if rel == "." else f"./{PurePosixPath(rel)}"


def _extras(text: str) -> str:
    names = sorted({canonicalize_name(e) for e in text.strip("[]").split(",") if e.strip()})
    return f"[{','.join(names)}]" if names else ""


def local_ref(repo: Path, text: str, base: Path, where: str) -> str:
    """Rewrite a local reference (path or ``file:`` URL, extras, fragment)."""
    ref, _, fragment = text.partition("#")
    match = _EXTRAS_RE.match(ref)
    assert match is not None  # the pattern matches every string
    path, extras = match["path"], match["extras"] or ""
    url_path = _file_url_path(path)
    if url_path is not None:
        path = url_path
    rewritten = repo_relative(repo, path or ".", base, where) + _extras(extras)
    return f"{rewritten}#{fragment}" if fragment else rewritten


def looks_like_path(text: str) -> bool:
    """pip's rule: a separator, a leading dot, a ``file:`` URL or an archive name."""
    if _file_url_path(text) is not None:
        return True
    if _SCHEME_RE.match(text) and "://" in text:
        return False
    bare = _EXTRAS_RE.sub(r"\g<path>", text.partition("#")[0])
    return "/" in bare or bare.startswith(".") or bare.lower().endswith(_ARCHIVES)


def _normalise_parsed(repo: Path, req: Requirement, where: str) -> tuple[str, bool]:
    req.name = canonicalize_name(req.name)
    req.extras = {canonicalize_name(e) for e in req.extras}
    local = False
    if req.url is not None:
        url_path = _file_url_path(req.url)
        if url_path is not None or not _SCHEME_RE.match(req.url):
            rel = repo_relative(repo, url_path if url_path is not None else req.url, repo, where)
            req.url = f"file:{rel}"
            local = True
    return str(req), local


def normalise_requirement(repo: Path, text: str, where: str) -> tuple[str, bool]:
    """One requirement (no options) -> ``(line, refers to local content)``.

    Local paths are relative to the repository root.  Used for
    requirements files and for Pipfile/Pipfile.lock entries.
    """
    text = text.strip()
    ref, semicolon, marker = text.partition(";")
    ref = ref.strip()
    archive = ref.lower().endswith(_ARCHIVES) and "@" not in ref
    if not archive:
        try:
            return _normalise_parsed(repo, Requirement(text), where)
        except InvalidRequirement:
            pass
    if not looks_like_path(ref):
        return " ".join(text.split()), False
    rewritten = local_ref(repo, ref, repo, where)
    return (f"{rewritten} ; {marker.strip()}" if semicolon else rewritten), True


def _split_tokens(tokens: list[str], where: str) -> list[tuple[str, str | None]]:
    """Option tokens -> ``(canonical option, value)`` pairs."""
    pairs: list[tuple[str, str | None]] = []
    i = 0
    while i < len(tokens):
        token, value = tokens[i], None
        i += 1
        if token.startswith("--") and "=" in token:
            token, value = token.split("=", 1)
        elif not token.startswith("--") and len(token) > 2 and token[:2] in _WITH_VALUE:
            token, value = token[:2], token[2:].removeprefix("=")
        if token in _FLAGS and value is None:
            pairs.append((token, None))
            continue
        if token not in _WITH_VALUE:
            raise EnvironmentConfigError(
                f"{where}: option {token} is not supported",
                hint="binderbox installs requirements with uv; remove the option.",
            )
        if value is None:
            if i >= len(tokens):
                raise EnvironmentConfigError(f"{where}: option {token} needs a value")
            value = tokens[i]
            i += 1
        pairs.append((_WITH_VALUE[token], value))
    return pairs


def _hashes(options: str, where: str) -> list[str]:
    """Per-requirement options: only ``--hash`` is accepted."""
    hashes: list[str] = []
    tokens = shlex.split(options)
    i = 0
    while i < len(tokens):
        token = tokens[i]
        i += 1
        if token.startswith("--hash="):
            hashes.append(token.split("=", 1)[1])
        elif token == "--hash" and i < len(tokens):
            hashes.append(tokens[i])
            i += 1
        else:
            raise EnvironmentConfigError(
                f"{where}: option {token.split('=')[0]} is not supported",
                hint="binderbox installs requirements with uv, which accepts only --hash here.",
            )
    return [f"--hash={h}" for h in sorted(set(hashes))]


def _split_line(line: str) -> tuple[str, str]:
    """pip's ``break_args_options``: the requirement, then its options."""
    tokens = line.split(" ")
    for index, token in enumerate(tokens):
        if token.startswith("-"):
            return " ".join(tokens[:index]), " ".join(tokens[index:])
    return line, ""


def _editable(repo: Path, value: str, where: str) -> tuple[str, bool]:
    """``-e``: a VCS URL becomes a plain direct reference, anything else is a path."""
    if _VCS_RE.match(value):
        url, _, fragment = value.partition("#")
        egg = re.search(r"(?:^|&)egg=([^&]+)", fragment)
        rest = "&".join(p for p in fragment.split("&") if p and not p.startswith("egg="))
        url = f"{url}#{rest}" if rest else url
        return (f"{canonicalize_name(egg[1])} @ {url}" if egg else url), False
    if _SCHEME_RE.match(value) and _file_url_path(value) is None:
        return f"-e {value}", False
    return f"-e {local_ref(repo, value, repo, where)}", True


class _Reader:
    """Reads one requirements file and its includes into a :class:`Requirements`."""

    def __init__(self, repo: Path) -> None:
        self.repo = repo
        self.result = Requirements()
        self.stack: list[Path] = []

    def read(self, path: Path) -> None:
        name = relpath(self.repo, path)
        resolved = resolve_inside(self.repo, path, name)
        if resolved in self.stack:
            raise EnvironmentConfigError(f"{name}: includes itself (a -r cycle)")
        text = read_text(self.repo, path)
        self.stack.append(resolved)
        if name not in self.result.sources:
            self.result.sources.append(name)
        for number, line in logical_lines(text):
            self.line(path, f"{name}, line {number}", line)
        self.stack.pop()

    def add(self, line: str, local: bool) -> None:
        self.result.lines.append(line)
        self.result.local = self.result.local or local

    def line(self, path: Path, where: str, line: str) -> None:
        if not line.startswith("-"):
            requirement, options = _split_line(line)
            normalised, local = normalise_requirement(self.repo, requirement, where)
            self.add(" ".join([normalised, *_hashes(options, where)]), local)
            return
        try:
            tokens = shlex.split(line)
        except ValueError as e:
            raise EnvironmentConfigError(f"{where}: cannot parse {line!r} ({e})") from None
        for option, value in _split_tokens(tokens, where):
            self.option(path, where, option, value)

    def option(self, path: Path, where: str, option: str, value: str | None) -> None:
        if option in _DROPPED:
            return
        if option in _KEPT_VERBATIM:
            self.add(option if value is None else f"{option} {value}", False)
            return
        assert value is not None
        if option == "--editable":
            self.add(*_editable(self.repo, value, where))
            return
        is_url = bool(_SCHEME_RE.match(value)) and _file_url_path(value) is None
        if option == "--find-links" and is_url:
            self.add(f"--find-links {value}", False)
            return
        if is_url:
            raise EnvironmentConfigError(
                f"{where}: {option} {value}: files from URLs are not supported",
                hint="Put the file in the repository and refer to it by a relative path.",
            )
        if option == "--requirement":
            target = Path(os.path.normpath(path.parent / value))
            if not (target.exists() or target.is_symlink()):
                raise EnvironmentConfigError(
                    f"{where}: -r {value}: {relpath(self.repo, target)} does not exist"
                )
            self.read(target)
            return
        # --constraint, --find-links DIR: relative to the including file
        # (pip falls back to the working directory for --find-links)
        value = _file_url_path(value) or value
        base = path.parent
        if option == "--find-links" and not (base / value).exists():
            base = self.repo
        rel = local_ref(self.repo, value, base, where)
        if option == "--constraint":
            self.result.sources.append(rel.removeprefix("./"))
        absolute = HOME if rel == "." else f"{HOME}/{rel.removeprefix('./')}"
        self.add(f"{'-c' if option == '--constraint' else '--find-links'} {absolute}", True)


def read_requirements(repo: Path, path: Path) -> Requirements:
    """Read the requirements file ``path`` (inside ``repo``).

    See the module docstring for the normalisation.  Raises
    :class:`~binderbox.errors.EnvironmentConfigError` naming the file and
    line for anything that cannot be honoured.
    """
    reader = _Reader(repo)
    reader.read(path)
    return reader.result


def read_lines(repo: Path, path: Path, lines: list[str]) -> Requirements:
    """Normalise requirement lines written inside ``path`` (the ``pip:`` section of an
    ``environment.yml``) as if they were a requirements file there."""
    reader = _Reader(repo)
    name = relpath(repo, path)
    for number, line in enumerate(lines, 1):
        text = line.split(" #", 1)[0].strip()
        if text and not text.startswith("#"):
            reader.line(path, f"{name}, pip entry {number}", text)
    return reader.result
