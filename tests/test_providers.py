"""Providers against real git repositories served by a real ``git daemon``."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from traitlets.config import Config, Configurable

from binderbox.errors import (
    BinderboxError,
    FetchError,
    HostUnreachable,
    RefNotFound,
    RepositoryNotFound,
    SpecError,
    SpecNotAllowed,
    UnknownProvider,
)
from binderbox.providers import (
    PROVIDERS,
    GistProvider,
    GitHubProvider,
    GitLabProvider,
    GitProvider,
    LocalProvider,
    make_provider,
    offered_providers,
    provider_class,
    repoprovider_configs,
)
from binderbox.providers.base import RepoProvider, Resolved
from binderbox.providers.gitutil import _ProgressFilter
from tests.fixtures_git import GitServer, commit_file, free_port, git, git_server, serve

__all__ = ["git_server"]  # the fixture, re-exported for pytest


# -- helpers ---------------------------------------------------------------------


def hosted(server: GitServer) -> Configurable:
    """A config parent pointing gh/gl/gist at the local git daemon."""
    cfg = Config()
    cfg.GitHubProvider.clone_host = server.url
    cfg.GitLabProvider.clone_host = server.url
    cfg.GistProvider.clone_host = server.url
    return Configurable(config=cfg)


async def resolve(spec: str, server: GitServer, ref: str | None = None) -> Resolved:
    return await make_provider(spec, ref, parent=hosted(server)).resolve()


async def fetch(spec: str, server: GitServer, dest: Path) -> tuple[Resolved, list[str]]:
    provider = make_provider(spec, parent=hosted(server))
    resolved = await provider.resolve()
    lines: list[str] = []
    await provider.fetch(resolved, dest, lines.append)
    return resolved, lines


def assert_plain(err: BinderboxError) -> None:
    """A user message is one line, with no traceback or git noise."""
    text = err.user_message
    assert "\n" not in text and "Traceback" not in text and "fatal:" not in text


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A TCP port that accepts connections and never answers."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


def git_processes(marker: str) -> list[int]:
    """Live processes whose command line mentions ``marker``."""
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            state = (proc / "stat").read_text().split(") ", 1)[1][0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            pids.append(int(proc.name))
    return pids


# -- parsing -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "ref", "cls", "clone_url", "unresolved"),
    [
        ("gh/o/r/main", None, GitHubProvider, "https://github.com/o/r", "main"),
        ("gh/o/r.git/feature/x", None, GitHubProvider, "https://github.com/o/r", "feature/x"),
        ("gh/o/r", None, GitHubProvider, "https://github.com/o/r", "HEAD"),
        (
            "gl/group%2Fsub%2Fproject/main",
            None,
            GitLabProvider,
            "https://gitlab.com/group/sub/project.git",
            "main",
        ),
        ("gist/u/abc123/HEAD", None, GistProvider, "https://gist.github.com/abc123.git", "HEAD"),
        ("gist/u/abc123", None, GistProvider, "https://gist.github.com/abc123.git", "HEAD"),
        ("gist/u/abc123/master", None, GistProvider, "https://gist.github.com/abc123.git", "HEAD"),
        (
            "gist/u/abc123/0a1b2c3",
            None,
            GistProvider,
            "https://gist.github.com/abc123.git",
            "0a1b2c3",
        ),
        (
            "git/https%3A%2F%2Fexample.org%2Frepo.git/v1",
            None,
            GitProvider,
            "https://example.org/repo.git",
            "v1",
        ),
        (
            "git/https%3A%2F%2Fexample.org%2Frepo.git/feature%2Fx",
            None,
            GitProvider,
            "https://example.org/repo.git",
            "feature/x",
        ),
        ("local/%2Fsrv%2Frepo/HEAD", None, LocalProvider, "file:///srv/repo", "HEAD"),
        # plain URLs
        ("https://github.com/o/r", None, GitHubProvider, "https://github.com/o/r", "HEAD"),
        ("https://github.com/o/r.git", "dev", GitHubProvider, "https://github.com/o/r", "dev"),
        (
            "https://github.com/o/r/tree/feature/x",
            None,
            GitHubProvider,
            "https://github.com/o/r",
            "feature/x",
        ),
        ("https://github.com/o/r/tree/main", "v2", GitHubProvider, "https://github.com/o/r", "v2"),
        ("https://gitlab.com/g/s/p", None, GitLabProvider, "https://gitlab.com/g/s/p.git", "HEAD"),
        (
            "https://gitlab.com/g/p/-/tree/dev",
            None,
            GitLabProvider,
            "https://gitlab.com/g/p.git",
            "dev",
        ),
        (
            "https://gist.github.com/u/abc123",
            None,
            GistProvider,
            "https://gist.github.com/abc123.git",
            "HEAD",
        ),
        ("https://example.org/x.git", "v1", GitProvider, "https://example.org/x.git", "v1"),
        ("http://example.org/x", None, GitProvider, "http://example.org/x", "HEAD"),
        ("ssh://git@example.org/x.git", None, GitProvider, "ssh://git@example.org/x.git", "HEAD"),
        ("git://example.org/x", None, GitProvider, "git://example.org/x", "HEAD"),
        ("git@example.org:o/r.git", "main", GitProvider, "git@example.org:o/r.git", "main"),
        ("file:///srv/x", None, GitProvider, "file:///srv/x", "HEAD"),
        ("/srv/some dir", "main", LocalProvider, "file:///srv/some%20dir", "main"),
    ],
)
def test_spec_forms_parse(
    spec: str, ref: str | None, cls: type[RepoProvider], clone_url: str, unresolved: str
) -> None:
    provider = make_provider(spec, ref)
    assert type(provider) is cls
    assert isinstance(provider, GitProvider)
    assert provider.clone_url == clone_url
    assert provider.unresolved_ref == unresolved


def test_relative_path_is_local(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "proj").mkdir()
    monkeypatch.chdir(tmp_path)
    for spec in ("proj", "./proj"):
        provider = make_provider(spec)
        assert isinstance(provider, LocalProvider)
        assert provider.path == tmp_path / "proj"


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("gh/onlyowner", "gh/<owner>/<repo>/<ref>"),
        ("gh/o/r/bad..ref", "gh/<owner>/<repo>/<ref>"),
        ("gh/../r/main", "gh/<owner>/<repo>/<ref>"),
        ("gl/project/main", "gl/<url-escaped namespace/project>/<ref>"),
        ("gist/u", "gist/<user>/<gist-id>"),
        ("git/https:/example.org/x/main", "git/<url-escaped clone URL>/<ref>"),
        ("git/https%3A%2F%2F/main", "git/<url-escaped clone URL>/<ref>"),
        ("local/relative%2Fpath/HEAD", "local/<url-escaped absolute path>/<ref>"),
        ("", "a repository URL, a local directory"),
        ("just-a-word", "a repository URL, a local directory"),
        ("https://github.com/onlyowner", "https://github.com/<owner>/<repo>"),
    ],
)
def test_malformed_specs_say_the_expected_form(spec: str, expected: str) -> None:
    with pytest.raises(SpecError) as info:
        make_provider(spec)
    assert type(info.value) is SpecError
    assert expected in info.value.user_message
    assert_plain(info.value)


@pytest.mark.parametrize(
    "spec",
    [
        "git/ext%3A%3Ash%20-c%20touch%20%2Ftmp%2Fpwned/HEAD",
        "git/-uploadpack%3Devil/HEAD",
        "git/ftp%3A%2F%2Fexample.org%2Fx/HEAD",
        "ftp://example.org/x",
    ],
)
def test_dangerous_git_urls_are_refused(spec: str) -> None:
    with pytest.raises(SpecError) as info:
        make_provider(spec)
    assert_plain(info.value)


def test_unknown_provider_lists_the_known_ones() -> None:
    with pytest.raises(UnknownProvider) as info:
        make_provider("bitbucket/o/r/main")
    assert "'bitbucket'" in info.value.message
    assert "gh, gl, gist, git, local" in info.value.user_message
    with pytest.raises(UnknownProvider):
        provider_class("nope")
    assert provider_class("gh") is GitHubProvider
    assert set(PROVIDERS) == {"gh", "gl", "gist", "git", "local"}


def test_prefix_spec_with_separate_ref_is_refused() -> None:
    with pytest.raises(SpecError, match="separate ref"):
        make_provider("gh/o/r/main", "dev")


@pytest.mark.parametrize(
    "spec",
    [
        "file:///srv/repo",
        "/srv/repo",
        "./repo",
        "~/repo",
        "local/%2Fsrv%2Frepo/HEAD",
        "git/file%3A%2F%2F%2Fsrv%2Frepo/HEAD",
        "git/%2Fsrv%2Frepo/HEAD",
        "git/..%2Frepo/HEAD",
    ],
)
def test_allow_local_false_refuses_the_disk(spec: str) -> None:
    with pytest.raises(SpecNotAllowed) as info:
        make_provider(spec, allow_local=False)
    assert "does not launch repositories from its own disk" in info.value.message
    assert_plain(info.value)


def test_allow_local_false_still_takes_remote_urls() -> None:
    for spec in ("https://example.org/x.git", "gh/o/r/main", "git@example.org:o/r.git"):
        assert make_provider(spec, allow_local=False).prefix in ("git", "gh")
    ids = [c["id"] for c in repoprovider_configs(allow_local=False)]
    assert ids == ["gh", "gl", "gist", "git"]


def test_offered_providers_and_their_configs() -> None:
    assert list(offered_providers()) == list(PROVIDERS)
    assert list(offered_providers(allow_local=False)) == ["gh", "gl", "gist", "git"]
    assert [c["id"] for c in repoprovider_configs()] == list(PROVIDERS)
    # given classes: their own configs, in the given order (allow_local plays no part)
    chosen = {"git": GitProvider, "gh": GitHubProvider}
    configs = repoprovider_configs(allow_local=False, providers=chosen)
    assert configs == [GitProvider.repoprovider_config(), GitHubProvider.repoprovider_config()]
    assert [c["id"] for c in configs] == ["git", "gh"]


def test_host_traits_make_display_urls() -> None:
    cfg = Config()
    cfg.GitHubProvider.host = "https://ghe.example.org"
    provider = make_provider("gh/o/r/main", parent=Configurable(config=cfg))
    assert isinstance(provider, GitHubProvider)
    assert provider.clone_url == "https://ghe.example.org/o/r"
    resolved = provider.resolved("a" * 40)
    assert resolved.repo_url == "https://ghe.example.org/o/r"
    assert resolved.ref_url == f"https://ghe.example.org/o/r/tree/{'a' * 40}"
    assert resolved.binder_persistent_request == f"v2/gh/o/r/{'a' * 40}"


# -- resolving ---------------------------------------------------------------------


async def test_refs_resolve_to_the_right_commit(git_server: GitServer) -> None:
    s = git_server
    expected = {
        "HEAD": s.second,
        "main": s.second,
        "refs/heads/main": s.second,
        "feature/x": s.third,
        "v1": s.first,  # annotated tag, peeled
        "refs/tags/v1": s.first,
        "light": s.first,
        s.mid[:7]: s.mid,  # abbreviated sha of a commit that is no branch tip
        s.third[:12].upper(): s.third,
        s.first: s.first,
    }
    for ref, sha in expected.items():
        resolved = await resolve(f"gh/o/r/{quote(ref, safe='/')}", s)
        assert resolved.version == sha, ref


async def test_full_sha_is_taken_as_is_without_network() -> None:
    sha = "0123456789abcdef0123456789abcdef01234567"
    resolved = await make_provider(f"git/git%3A%2F%2F127.0.0.1%3A1%2Fx/{sha}").resolve()
    assert resolved.version == sha


async def test_resolved_fields_for_github(git_server: GitServer) -> None:
    resolved = await resolve("gh/o/r.git/feature/x", git_server)
    sha = git_server.third
    assert resolved.provider == "gh"
    assert resolved.spec == "o/r.git/feature/x"
    assert resolved.persistent_spec == f"o/r/{sha}"
    assert resolved.repo_url == "https://github.com/o/r"
    assert resolved.ref_url == f"https://github.com/o/r/tree/{sha}"
    assert resolved.binder_request == "v2/gh/o/r.git/feature/x"
    assert resolved.binder_persistent_request == f"v2/gh/o/r/{sha}"


async def test_gitlab_gist_and_git_resolve(git_server: GitServer) -> None:
    s = git_server
    gl = await resolve("gl/group%2Fsub%2Fproject/feature%2Fx", s)
    assert gl.version == s.third
    assert gl.ref_url == f"https://gitlab.com/group/sub/project/-/tree/{s.third}"
    gist = await resolve("gist/someone/abc123def", s)
    assert gist.version == s.second
    assert gist.ref_url == f"https://gist.github.com/someone/abc123def/{s.second}"
    plain = await resolve(f"{s.url}/o/r.git", s, ref="v1")
    assert (plain.provider, plain.version) == ("git", s.first)


async def test_persistent_spec_round_trips(git_server: GitServer, tmp_path: Path) -> None:
    s = git_server
    specs = [
        "gh/o/r/feature/x",
        "gl/group%2Fsub%2Fproject/v1",
        "gist/someone/abc123def/HEAD",
        f"git/{quote(s.url + '/o/r.git', safe='')}/main",
        f"local/{quote(str(s.work), safe='')}/feature/x",
    ]
    for spec in specs:
        first = await resolve(spec, s)
        assert first.binder_persistent_request.startswith(f"v2/{first.provider}/")
        link = first.binder_persistent_request.removeprefix("v2/")
        again = await resolve(link, s)
        assert again.version == first.version, spec
        assert again.persistent_spec == first.persistent_spec


# -- fetching ----------------------------------------------------------------------


async def test_fetch_gives_exactly_the_commit_with_submodules(
    git_server: GitServer, tmp_path: Path
) -> None:
    dest = tmp_path / "content"
    resolved, lines = await fetch("gh/o/r/main", git_server, dest)
    assert (dest / "README.md").read_text() == "version two\n"
    assert (dest / "sub" / "subfile.txt").read_text() == "from the submodule\n"
    assert not (dest / "feature.txt").exists()
    assert git("rev-parse", "HEAD", cwd=dest) == git_server.second
    assert any(line.startswith("Fetching ") for line in lines)
    assert f"Checked out {resolved.version}" in lines


async def test_fetch_tag_and_branch(git_server: GitServer, tmp_path: Path) -> None:
    await fetch("gh/o/r/v1", git_server, tmp_path / "v1")
    assert (tmp_path / "v1" / "README.md").read_text() == "version one\n"
    assert sorted(p.name for p in (tmp_path / "v1").iterdir()) == [".git", "README.md"]
    await fetch("gl/group%2Fsub%2Fproject/feature%2Fx", git_server, tmp_path / "fx")
    assert (tmp_path / "fx" / "feature.txt").read_text() == "feature\n"


async def test_fetch_falls_back_when_server_refuses_a_sha(
    git_server: GitServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # protocol v0 + no allowAnySHA1InWant: the server refuses unadvertised commits
    monkeypatch.setenv("GIT_CONFIG_COUNT", "1")
    monkeypatch.setenv("GIT_CONFIG_KEY_0", "protocol.version")
    monkeypatch.setenv("GIT_CONFIG_VALUE_0", "0")
    dest = tmp_path / "mid"
    _, lines = await fetch(f"gh/o/strict/{git_server.mid}", git_server, dest)
    assert (dest / "feature.txt").read_text() == "draft\n"
    assert git("rev-parse", "HEAD", cwd=dest) == git_server.mid
    assert any("whole history" in line for line in lines)


async def test_fetch_needs_an_empty_directory(git_server: GitServer, tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(FetchError):
        await fetch("gh/o/r/main", git_server, tmp_path)
    assert (tmp_path / "keep.txt").read_text() == "mine"


async def test_remote_repositories_cannot_pull_file_submodules(
    git_server: GitServer, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    git("init", "-q", str(secret))
    commit_file(secret, "secret.txt", "server-side secret\n", "secret")
    work = tmp_path / "work"
    git("init", "-q", str(work))
    commit_file(work, "a.txt", "a\n", "a")
    git(
        "-c",
        "protocol.file.allow=always",
        "submodule",
        "add",
        "-q",
        secret.as_uri(),
        "sec",
        cwd=work,
    )
    git("commit", "-q", "-m", "file submodule", cwd=work)
    serve(work, git_server.base / "o" / "filesub.git")
    dest = tmp_path / "dest"
    with pytest.raises(SpecNotAllowed) as info:
        await fetch("gh/o/filesub/HEAD", git_server, dest)
    assert info.value.message == (
        "The submodule 'sec' of https://github.com/o/filesub is not allowed: "
        "it points at files on this service's own disk."
    )
    assert_plain(info.value)
    assert list(dest.iterdir()) == []
    # the operator's own local repository may use them
    provider = make_provider(str(work))
    await provider.fetch(await provider.resolve(), tmp_path / "local", lambda line: None)
    assert (tmp_path / "local" / "sec" / "secret.txt").read_text() == "server-side secret\n"


def test_progress_meters_are_thinned() -> None:
    lines: list[str] = []
    meter = _ProgressFilter(lines.append)
    for pct in range(101):
        meter.line(f"remote: Counting objects: {pct:3d}% ({pct}/100)", complete=False)
    meter.line("remote: Counting objects: 100% (100/100), done.", complete=True)
    meter.line("From git://127.0.0.1/x", complete=True)
    assert len(lines) == 6
    assert lines[-2:] == [
        "remote: Counting objects: 100% (100/100), done.",
        "From git://127.0.0.1/x",
    ]


# -- errors --------------------------------------------------------------------------


async def test_missing_repository(git_server: GitServer) -> None:
    with pytest.raises(RepositoryNotFound) as info:
        await resolve("gh/o/missing/main", git_server)
    assert info.value.message == (
        "Could not reach https://github.com/o/missing. "
        "Check the URL and that the repository is public."
    )
    assert "o/missing" in info.value.log_message  # git's stderr kept for the operator
    assert_plain(info.value)


async def test_unreachable_hosts_never_prompt() -> None:
    port = free_port()  # nothing listens there
    for url in (f"https://user:s3cret@127.0.0.1:{port}/x.git", f"git://127.0.0.1:{port}/x"):
        with pytest.raises(HostUnreachable) as info:
            await make_provider(url).resolve()
        assert "s3cret" not in info.value.message + info.value.log_message
        assert_plain(info.value)
        # said as it is: the server did not answer, not "repository not found"
        assert info.value.message in (  # curl's words (https) or git's (git://)
            "Could not connect to 127.0.0.1: the connection failed.",
            "Could not connect to 127.0.0.1: the connection was refused.",
        )
        assert info.value.status_code == 503


async def test_unknown_ref(git_server: GitServer) -> None:
    for ref in ("no-such-branch", "deadbeef"):
        with pytest.raises(RefNotFound) as info:
            await resolve(f"gh/o/r/{ref}", git_server)
        assert repr(ref) in info.value.message
        assert "https://github.com/o/r" in info.value.message
        assert_plain(info.value)


async def test_unknown_full_sha_fails_at_fetch_and_leaves_nothing(
    git_server: GitServer, tmp_path: Path
) -> None:
    dest = tmp_path / "content"
    with pytest.raises(RefNotFound) as info:
        await fetch(f"gh/o/r/{'0' * 40}", git_server, dest)
    assert "0" * 40 in info.value.message
    assert list(dest.iterdir()) == []


async def test_resolve_timeout(silent_port: int) -> None:
    cfg = Config()
    cfg.GitProvider.resolve_timeout = 0.5
    provider = make_provider(f"git://127.0.0.1:{silent_port}/x", parent=Configurable(config=cfg))
    with pytest.raises(RepositoryNotFound) as info:
        await provider.resolve()
    assert "timed out" in info.value.log_message
    assert not git_processes(f"127.0.0.1:{silent_port}")


async def test_cancelled_fetch_kills_git_and_leaves_nothing(
    git_server: GitServer, silent_port: int, tmp_path: Path
) -> None:
    marker = f"127.0.0.1:{silent_port}"
    provider = make_provider(f"git://{marker}/x")
    assert isinstance(provider, GitProvider)
    resolved = provider.resolved(git_server.second)  # as if resolved earlier
    dest = tmp_path / "dest"
    task = asyncio.create_task(provider.fetch(resolved, dest, lambda line: None))
    fetching = f"fetch --progress --no-tags --depth 1 origin {git_server.second}".replace(" ", "\0")
    for _ in range(200):
        if git_processes(fetching):
            break
        await asyncio.sleep(0.02)
    assert git_processes(fetching)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not git_processes(fetching)
    assert list(dest.iterdir()) == []


async def test_cancel_kills_git(silent_port: int) -> None:
    marker = f"127.0.0.1:{silent_port}"
    task = asyncio.create_task(make_provider(f"git://{marker}/x").resolve())
    for _ in range(200):
        if git_processes(marker):
            break
        await asyncio.sleep(0.02)
    assert git_processes(marker)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not git_processes(marker)


# -- local ---------------------------------------------------------------------------


async def test_local_checkout_uses_the_commit_not_the_worktree(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    git("init", "-q", str(repo))
    sha = commit_file(repo, "a.txt", "committed\n", "one")
    (repo / "a.txt").write_text("uncommitted\n")
    (repo / "new.txt").write_text("untracked\n")
    provider = make_provider(str(repo))
    resolved = await provider.resolve()
    assert resolved.version == sha
    assert resolved.provider == "local"
    dest = tmp_path / "dest"
    await provider.fetch(resolved, dest, lambda line: None)
    assert (dest / "a.txt").read_text() == "committed\n"
    assert not (dest / "new.txt").exists()
    # the visitor is told what the build leaves out
    assert provider.notices() == [
        f"{repo} has 2 uncommitted change(s) (e.g. a.txt): they are not part of the build, "
        f"which uses commit {sha[:12]}. Commit them to include them."
    ]
    by_sha = make_provider(str(repo), sha)  # a ref named: the worktree is not the point
    await by_sha.resolve()
    assert by_sha.notices() == []
    clean = tmp_path / "clean"
    git("init", "-q", str(clean))
    commit_file(clean, "a.txt", "committed\n", "one")
    provider = make_provider(str(clean))
    await provider.resolve()
    assert provider.notices() == []
    with pytest.raises(RefNotFound):
        await make_provider(str(repo), "nope").resolve()


async def test_local_plain_folder(tmp_path: Path) -> None:
    folder = tmp_path / "folder"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("hello\n")
    (folder / "sub" / "b.txt").write_text("world\n")
    (folder / "link").symlink_to("a.txt")
    resolved = await make_provider(str(folder)).resolve()
    assert len(resolved.version) == 64
    dest = tmp_path / "dest"
    await make_provider(str(folder)).fetch(resolved, dest, lambda line: None)
    assert (dest / "sub" / "b.txt").read_text() == "world\n"
    assert (dest / "link").readlink() == Path("a.txt")
    again = await make_provider(f"local/{resolved.persistent_spec}").resolve()
    assert again.version == resolved.version
    (folder / "a.txt").write_text("changed\n")
    with pytest.raises(RefNotFound, match="has changed"):
        await make_provider(f"local/{resolved.persistent_spec}").resolve()
    changed = await make_provider(str(folder)).resolve()
    assert changed.version != resolved.version
    with pytest.raises(RefNotFound):
        await make_provider(str(folder), "main").resolve()


async def test_local_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(RepositoryNotFound) as info:
        await make_provider(str(tmp_path / "nope")).resolve()
    assert str(tmp_path / "nope") in info.value.message
    assert_plain(info.value)
