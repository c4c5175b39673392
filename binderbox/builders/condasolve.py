"""Conda channels under the operator's rules, and rattler's solve with plain errors.

Channels, as an ``environment.yml`` or ``pixi.toml`` writes them, become URLs
(:meth:`ChannelRules.resolve`):

* ``nodefaults`` is dropped (conda's marker for "not the defaults");
* ``defaults`` (Anaconda's repository, whose terms bind large organisations)
  is refused unless the operator allows it (``CondaBuilder.allow_defaults``),
  as repo2docker does; then it stands for ``CondaBuilder.defaults_channels``;
* a channel named in ``CondaBuilder.mirrors`` (by name, ``conda-forge``, or by
  URL) is fetched from the mirror instead;
* another name becomes ``<channel_alias>/<name>`` (``https://conda.anaconda.org``);
* a URL a repository writes must be ``http(s)``; ``file://`` and paths are
  refused (they would read this server's disk);
* a spec naming its channel (``conda-forge::numpy``) goes through the same
  rules (:meth:`ChannelRules.spec_channels`), and so is fetched from the mirror
  and checked like the others; specs naming a ``url`` or ``channel`` in
  brackets are refused.

Where the service fetches from is checked (:meth:`ChannelRules.check_url`),
because rattler's fetches (repodata here, package archives in
:mod:`.condafetch`) are the service's own, not a sandbox's, first for a plain
message naming the channel, then at every connection, redirects included, by
the proxy they all go through (:mod:`.condaproxy`): a URL at or under
a channel the operator configured (mirrors, aliases, default channels) is
trusted; any other host must resolve to public addresses only, unless
``CondaBuilder.allow_private_channels`` (networks in ``c.Destinations.allowed``
pass either way; :func:`~binderbox.providers.policy.host_refusal` is the one
check).  The proxy connects to the addresses it checked (no second lookup).

:func:`solve` runs rattler's solver for ``linux-64`` with this machine's
virtual packages and turns rattler's errors into
:class:`~binderbox.errors.BuildError` subclasses naming the culprit.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import CondaChannelError, CondaPackageNotFound, CondaUnsolvable
from ..providers.policy import host_refusal
from ..runtime.destinations import Destinations
from .condaproxy import PolicyProxy

#: longest part of a solver's explanation shown to the user
MESSAGE_LIMIT = 400
_NOT_FOUND = re.compile(r"No candidates were found for ([^\s,]+)(?: ([^\s.]+))?")


@dataclass(frozen=True)
class Channel:
    """A channel as written (for messages) and the URL it is fetched from."""

    written: str
    url: str


@dataclass
class ChannelRules:
    """The operator's channel settings (see the module docstring)."""

    channel_alias: str = "https://conda.anaconda.org"
    mirrors: Mapping[str, str] = field(default_factory=dict)
    allow_defaults: bool = False
    defaults_channels: Sequence[str] = ()
    allow_private_channels: bool = False
    destinations: Destinations = field(default_factory=Destinations)
    #: URLs of channels the operator configured (trusted, with what is under them)
    trusted: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.trusted = [_norm(u) for u in [*self.mirrors.values(), self.channel_alias]]
        self.trusted += [_norm(u) for u in self.defaults_channels if "://" in u]

    def resolve(self, written: Sequence[str], defaults: Sequence[str]) -> list[Channel]:
        """The channels to fetch from, in order; ``defaults`` when none is written.
        Raises :class:`CondaChannelError` for a channel the rules refuse."""
        names = [str(c).strip() for c in written if str(c).strip() != "nodefaults"]
        if not names:
            return [self._one(name, operator=True) for name in defaults]
        found: list[Channel] = []
        for name in names:
            if name == "defaults":
                if not self.allow_defaults:
                    raise CondaChannelError(
                        "The conda channel 'defaults' is not allowed on this server.",
                        hint="Use conda-forge instead (or add 'nodefaults' to the channels).",
                    )
                urls = [self._one(url, operator=True).url for url in self.defaults_channels]
                found += [Channel("defaults", url) for url in urls]
                continue
            found.append(self._one(name, operator=False))
        return list(dict.fromkeys(found))

    def _one(self, name: str, *, operator: bool) -> Channel:
        mirror = self.mirrors.get(name) or self.mirrors.get(_norm(name))
        if mirror:
            return Channel(name, _norm(mirror))
        if "://" in name or name.startswith(("/", ".", "~")):
            scheme = urlsplit(name).scheme
            if scheme not in ("http", "https") and not operator:
                raise CondaChannelError(
                    f"The conda channel {name} is not allowed: it points at files on "
                    "this server's own disk.",
                    hint="Use a channel name (conda-forge) or an https:// URL.",
                )
            url = _norm(name if "://" in name else Path(name).expanduser().resolve().as_uri())
            url = _norm(self.mirrored(url))
            if operator:
                self.trusted.append(url)
            return Channel(name, url)
        url = f"{_norm(self.channel_alias)}/{name}"
        return Channel(name, url)

    def spec_channels(
        self, specs: Sequence[str], channels: list[Channel]
    ) -> tuple[list[str], list[Channel]]:
        """``specs`` with the channels they name resolved by these rules (added to
        ``channels`` when missing); a spec naming a URL in brackets is refused."""
        found, out = list(channels), []
        for spec in specs:
            if re.search(r"\[[^\]]*\b(url|channel)\s*=", spec):
                raise CondaUnsolvable(
                    f"The conda spec {spec!r} names a URL or channel in brackets: "
                    "not allowed here.",
                    hint="List the channel under channels: instead.",
                )
            if "://" in spec and "::" not in spec:  # a package URL: fetched as is
                raise CondaUnsolvable(
                    f"The conda spec {spec!r} is a URL: not allowed here.",
                    hint="Name the package, and list its channel under channels:.",
                )
            if "::" not in spec:
                out.append(spec)
                continue
            written, rest = spec.split("::", 1)
            channel = self._one(written.strip(), operator=False)
            if channel.url not in {c.url for c in found}:
                found.append(channel)
            out.append(f"{channel.url}::{rest}")
        return out, found

    def mirrored(self, url: str) -> str:
        """A package URL (from a lock file) fetched from its channel's mirror, if any."""
        norm = _norm(url)
        for written, mirror in self.mirrors.items():
            base = _norm(written if "://" in written else f"{_norm(self.channel_alias)}/{written}")
            if norm == base or norm.startswith(base + "/"):
                return _norm(mirror) + norm[len(base) :]
        return url

    async def check_url(self, url: str) -> None:
        """Raise :class:`CondaChannelError` when the service may not fetch ``url``."""
        norm = _norm(url)
        if any(norm == t or norm.startswith(t + "/") for t in self.trusted):
            return
        scheme = urlsplit(url).scheme
        if scheme not in ("http", "https"):
            raise CondaChannelError(
                f"Fetching {url} is not allowed: it is not an http(s) URL of a channel.",
            )
        refusal = await host_refusal(
            url,
            allow_ssh=False,
            allow_private_hosts=self.allow_private_channels,
            destinations=self.destinations,
        )
        if refusal is not None:
            raise CondaChannelError(
                f"The conda channel at {_origin(url)} is not allowed: {refusal.reason}.",
                hint="This server only fetches conda packages from public channels.",
                log_message=f"{url}: {refusal.detail}",
            )


def _norm(url: str) -> str:
    return url.rstrip("/")


def _origin(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


async def solve(
    channels: Sequence[Channel],
    specs: Sequence[str],
    *,
    cache_dir: Path,
    virtual_packages: Sequence[object],
    proxy: PolicyProxy | None = None,
) -> list[object]:
    """rattler's solution for ``specs`` (``RepoDataRecord`` list), or a BuildError:
    :class:`CondaPackageNotFound` naming an unknown package,
    :class:`CondaUnsolvable` with the solver's reasons condensed,
    :class:`CondaChannelError` naming a channel that is missing or unreachable, or
    the destination ``proxy`` refused (a redirect to a private address)."""
    import rattler
    from rattler.exceptions import GatewayError, InvalidMatchSpecError, SolverError

    try:
        parsed = [rattler.MatchSpec(s) for s in specs]
    except InvalidMatchSpecError as err:
        raise CondaUnsolvable(f"Not a conda package spec: {err}") from None
    client = None if proxy is None else _client(proxy.url)
    gateway = rattler.Gateway(cache_dir=cache_dir, show_progress=False, client=client)
    sources = [rattler.Channel(c.url) for c in channels]
    try:
        records = await rattler.solve(
            sources,
            parsed,
            gateway=gateway,
            platforms=["linux-64", "noarch"],
            virtual_packages=list(virtual_packages),  # type: ignore[arg-type]
        )
    except SolverError as err:
        raise _unsolvable(str(err), specs, channels) from None
    except GatewayError as err:
        if proxy is not None:
            only = channels[0].written if len(channels) == 1 else ""
            proxy.raise_refused(_culprit(str(err), channels) or only)
        raise _channel_error(str(err), channels) from None
    return list(records)


def _client(proxy: str) -> Any:
    """rattler's standard client, every request through ``proxy``."""
    import rattler

    config = rattler.Config.from_toml(f'[proxy-config]\nhttps = "{proxy}"\nhttp = "{proxy}"\n')
    return rattler.Client.from_config(config)


def _names(channels: Sequence[Channel]) -> str:
    return ", ".join(c.written for c in channels)


def _unsolvable(text: str, specs: Sequence[str], channels: Sequence[Channel]) -> CondaUnsolvable:
    """rattler's SolverError, condensed: the unknown package, else the reasons on one line."""
    body = text.split("because of:", 1)[-1]
    missing = _NOT_FOUND.search(body)
    lines = [ln.strip(" │├└─\t") for ln in body.splitlines()]
    condensed = " ".join(ln for ln in lines if ln).replace(": ", ": ").rstrip(".") + "."
    if len(condensed) > MESSAGE_LIMIT:
        condensed = condensed[: MESSAGE_LIMIT - 3] + "..."
    if missing and len(lines) <= 2 and missing[1] in {spec_name(s) for s in specs}:
        name = missing[1]
        return CondaPackageNotFound(
            f"No conda package named {name} in the channels {_names(channels)}.",
            hint="Check the package's name, or add the channel that has it.",
            log_message=text,
        )
    return CondaUnsolvable(
        f"The conda environment cannot be solved. {condensed[0].upper()}{condensed[1:]}",
        hint="Relax the versions in environment.yml, or check the channels.",
        log_message=text,
    )


def spec_name(spec: str) -> str:
    """The package name a match spec names (``conda-forge::numpy >=1.2`` -> ``numpy``)."""
    return re.split(r"[\s=<>!~\[]", spec.strip().split("::")[-1], maxsplit=1)[0].lower()


def _culprit(text: str, channels: Sequence[Channel]) -> str:
    """The channel (as written) an error of rattler's names, else ''."""
    culprit = next((c for c in channels if c.url in text or c.url + "/" in text), None)
    return culprit.written if culprit else ""


def _channel_error(text: str, channels: Sequence[Channel]) -> CondaChannelError:
    name = _culprit(text, channels) or _names(channels)
    missing = "404" in text or "could not find" in text.lower()
    what = "was not found" if missing else "could not be reached"
    return CondaChannelError(
        f"The conda channel {name} {what}.",
        hint="Check the channel's name in environment.yml." if missing else "Try again later.",
        log_message=text,
    )
