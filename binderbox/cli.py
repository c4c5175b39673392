"""The ``binderbox`` command: subcommands over :class:`~binderbox.app.BinderboxApp`.

Only this module exits the process.  Errors a user can act on
(:class:`~binderbox.errors.BinderboxError`) print one plain line and exit
non-zero; nothing prints a traceback unless ``--log-level=DEBUG``.
"""

from __future__ import annotations

import asyncio
import json
import re
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, TextIO

from traitlets import Bool, CaselessStrEnum, TraitError, Unicode

from .app import BinderboxApp
from .builders.registry import Builders
from .environments import HOME
from .errors import BinderboxError
from .events import Building, Built, Event, Failed, Phase, Ready
from .images import ImageRegistry
from .logs import json_line
from .pipeline import LaunchRequest
from .runtime.inpod import refuse_root
from .sessions.identity import Visitor
from .store import Store


class Command(BinderboxApp):
    """Base of subcommands: loads the config file, runs ``run()``, maps errors to exits."""

    def initialize(self, argv: Any = None) -> None:
        # every section of the shared config file, set before the command line is
        # read: traitlets looks the aliases up in these classes (``serve --help``
        # failed with KeyError: 'ManagedHub' without them), --help-all lists them
        self.classes = [
            type(self),
            *(cls for cls in configurable_classes() if cls is not BinderboxApp),
        ]
        super().initialize(argv)
        self.load_config_files()
        self.update_config(self.cli_config)

    def start(self) -> None:
        try:
            code = self.run()
        except BinderboxError as exc:
            self._error(f"error: {exc.user_message}")
            self.log.debug("details: %s", exc.log_message)
            code = 1
        except TraitError as exc:  # a setting of the config file or the command line
            self._error(f"error: a setting is not valid: {exc}")
            code = 1
        except KeyboardInterrupt:
            self._error("interrupted")
            code = 130
        self.exit(code)

    def _error(self, text: str) -> None:
        """The line that ends a failed command, on stderr (JSON with --log-format json)."""
        json_lines = self.log_style == "json"
        print(json_line("ERROR", self.log.name, text) if json_lines else text, file=sys.stderr)

    def run(self) -> int:
        """Do the work; return the exit code."""
        raise NotImplementedError


#: a build log's line of one package installed (+) or removed (-), as uv prints them
_PACKAGE_LINE = re.compile(r"^\s*([+-]) \S+")


class ProgressPrinter:
    """Renders pipeline events for a person (or as JSON lines with ``json_lines``).
    Runs of package lines (``+ six==1.16.0``) are folded to a count unless ``verbose``."""

    def __init__(self, out: TextIO, *, json_lines: bool, verbose: bool = False) -> None:
        self.out = out
        self.json_lines = json_lines
        self.verbose = verbose
        self.phase: Phase | None = None
        self.started = time.monotonic()
        self.folded = {"+": 0, "-": 0}

    def flush_folded(self) -> None:
        """Write the count of the package lines folded since the last one written."""
        for sign, what in (("-", "removed"), ("+", "installed")):
            if self.folded[sign]:
                count = self.folded[sign]
                self.out.write(f"  {sign} {count} package{'s' * (count != 1)} {what}\n")
                self.folded[sign] = 0
        self.out.flush()

    def _line(self, line: str) -> None:
        package = _PACKAGE_LINE.match(line)
        if package and not self.verbose:
            self.folded[package[1]] += 1
            return
        self.flush_folded()
        self.out.write(f"  {line}\n")

    def show(self, event: Event) -> None:
        if self.json_lines:
            self.out.write(json.dumps(event.to_wire()) + "\n")
            self.out.flush()
            return
        if not (event.message and event.phase == self.phase and not isinstance(event, Built)):
            self.flush_folded()
        if event.phase != self.phase and event.phase != Phase.FAILED:
            self.phase = event.phase
            elapsed = time.monotonic() - self.started
            self.out.write(f"[{elapsed:6.1f}s] {event.phase.value}\n")
        if isinstance(event, Failed):
            self.out.write(f"error: {event.message}\n")
        elif isinstance(event, Built):
            state = "cached" if event.cached else "built"
            self.out.write(f"  environment {event.image_name} ({state})\n  path: {event.path}\n")
        elif isinstance(event, Ready):
            self.out.write(f"  {event.url}?token={event.token}\n")
        elif event.message:
            for line in event.message.rstrip("\n").splitlines():
                self._line(line)
        self.out.flush()


async def _consume(events: AsyncIterator[Event], printer: ProgressPrinter) -> Event | None:
    last: Event | None = None
    async for event in events:
        printer.show(event)
        last = event
    printer.flush_folded()
    return last


class BuildCommand(Command):
    """binderbox build SPEC [--ref REF] [--json]: build (or reuse) an environment."""

    name = "binderbox-build"
    description = """Build the environment of a repository, or reuse it when already built.

    SPEC is a local directory, a git URL (https://, file://, ssh://), a
    https://github.com/<owner>/<repo> URL, or a BinderHub spec such as
    gh/<owner>/<repo>/<ref> or git/<escaped url>/<ref>."""
    examples = "binderbox build gh/binder-examples/requirements/HEAD\nbinderbox build ./myrepo"

    ref = Unicode(
        "", help="The branch, tag or commit to build (default: the spec's, else HEAD)."
    ).tag(config=True)
    json_lines = Bool(
        False, help="Print one JSON event a line (the /build event-stream schema)."
    ).tag(config=True)
    verbose = Bool(
        False, help="Show every package line of the build log (else they are counted)."
    ).tag(config=True)
    in_pod = Bool(
        False,
        help="""Build as a Kubernetes build pod does: the pod is the sandbox, every step
        runs directly as this (non-root) user, without bubblewrap
        (SandboxHost.in_pod); the repository is copied into the home folder.""",
    ).tag(config=True)
    output = Unicode(
        "",
        help="""Build into this empty folder rather than the store (with --in-pod:
        /srv/env, the build pod's output volume, which the service publishes).""",
    ).tag(config=True)
    push = Unicode(
        "",
        help="""Then write the environment's OCI image and push it to <registry>/<prefix>
        (e.g. registry.example.org/binder/envs): the image is <registry>/<prefix>:<key>.
        Credentials and TLS: c.ImageRegistry (auth_file, ca_file; --insecure for plain
        HTTP to a loopback registry).""",
    ).tag(config=True)
    fetch_only = Bool(
        False,
        help="""Resolve and fetch the repository into the content cache, build nothing: a
        build Job's fetch init container, for a private repository (the build container
        after it then builds from that cache, and never sees the token).""",
    ).tag(config=True)
    git_tokens = Unicode(
        "",
        help="""A JSON file {"host[:port]": "token"} of a visitor's own git tokens, to fetch
        a private repository (a build Job's Secret, mounted in its fetch init container
        only).  Tokens are never printed.""",
    ).tag(config=True)
    aliases = {
        **BinderboxApp.aliases,
        "ref": "BuildCommand.ref",
        "output": "BuildCommand.output",
        "push": "BuildCommand.push",
        "git-tokens": "BuildCommand.git_tokens",
    }
    flags = {
        "json": ({"BuildCommand": {"json_lines": True}}, "Print JSON events, one a line."),
        "verbose": ({"BuildCommand": {"verbose": True}}, "Show every package line."),
        "in-pod": ({"BuildCommand": {"in_pod": True}}, "Build in a pod, without bubblewrap."),
        "insecure": (
            {"ImageRegistry": {"insecure": True}},
            "Push over plain HTTP (loopback registries only).",
        ),
        "fetch-only": ({"BuildCommand": {"fetch_only": True}}, "Fetch, do not build."),
    }

    def run(self) -> int:
        if len(self.extra_args) != 1:
            print(
                "usage: binderbox build SPEC [--ref REF] [--json] [--verbose] [--in-pod]"
                " [--output DIR] [--push REGISTRY/PREFIX [--insecure]] [--fetch-only]"
                " [--git-tokens FILE]",
                file=sys.stderr,
            )
            return 2
        # no session starts meanwhile: the bytecode may have every core
        self.config.PythonBuilder.setdefault("spare_cores", 0)
        if self.in_pod:
            refuse_root()  # before anything is fetched or written
            self.config.SandboxHost.in_pod = True
            self.config.LaunchPipeline.setdefault("build_home", HOME)
            self.config.ContentCache.shared = False  # the pod's own, for this one build
        self.builder_class = Builders  # here, whatever the service's builds are
        pipeline = self.make_pipeline(allow_local=True)
        pipeline.images = None  # --push pushes what it built or found, whatever the registry has
        images = self.make_images()
        if self.push:
            images.set_target(self.push)  # a malformed target is refused before the build
            images.client()  # so are plain HTTP to another host and an unreadable auth file
        request = LaunchRequest(
            provider="",
            spec=self.extra_args[0],
            build_only=True,
            ref=self.ref or None,
            visitor=Visitor(tokens=read_tokens(self.git_tokens)),
        )
        printer = ProgressPrinter(
            sys.stdout if self.json_lines else sys.stderr,
            json_lines=self.json_lines,
            verbose=self.verbose,
        )
        output = Path(self.output) if self.output else None

        async def build() -> Event | None:
            if self.fetch_only:
                last = await _consume(pipeline.fetch(request), printer)
                return None if isinstance(last, Failed) else last
            if output is not None:
                return await _consume(pipeline.build_into(request, output), printer)
            last = await _consume(pipeline.launch(request), printer)
            if pipeline.finisher.pending:
                print("Compiling bytecode so that sessions start fast...", file=sys.stderr)
                started = time.monotonic()
                await pipeline.finisher.drain()
                print(f"  done in {time.monotonic() - started:.1f}s", file=sys.stderr)
            return last

        last = asyncio.run(build())
        if self.fetch_only:
            return 0 if last is not None else 1
        if not isinstance(last, Built):
            return 1
        if self.push:
            return _push(images, pipeline.store if output is None else None, last, printer)
        if not self.json_lines and last.path:  # the result on stdout; progress: stderr
            print(last.path)
        return 0


def _push(
    images: ImageRegistry, store: Store | None, built: Built, printer: ProgressPrinter
) -> int:
    """Publish the image of the environment ``built`` names (held in ``store`` meanwhile,
    when it is there); 1 after a ``failed`` event when that fails."""
    name = images.image_name(built.image_name)
    printer.show(Building(message=f"Writing and pushing the image {name}"))
    hold = store.hold(built.image_name) if store is not None else None
    try:
        done = images.publish(Path(built.path), built.image_name)
    except BinderboxError as exc:
        printer.show(exc.to_event())
        return 1
    finally:
        if hold is not None:
            hold.release()
    printer.show(
        Building(
            message=f"Pushed {name}@{done.digest} ({_size(done.size)}): {len(done.uploaded)}"
            f" blobs sent, {len(done.skipped)} already in the registry (write"
            f" {done.write_seconds:.1f}s, push {done.push_seconds:.1f}s)"
        )
    )
    return 0


def read_tokens(path: str) -> dict[str, str]:
    """The git tokens of ``--git-tokens`` (``{}`` without); a plain error for a file that
    is not a JSON object of strings (whose content is never shown)."""
    if not path:
        return {}
    try:
        tokens = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        tokens = None
    if not isinstance(tokens, dict) or not all(
        isinstance(key, str) and isinstance(value, str) for key, value in tokens.items()
    ):
        raise BinderboxError(f'{path} is not a JSON object {{"host": "token"}}.')
    return tokens


class EnvsCommand(Command):
    """binderbox envs list | show KEY | rm KEY... | gc"""

    name = "binderbox-envs"
    description = "List, inspect, remove and garbage-collect built environments."
    examples = "binderbox envs list\nbinderbox envs rm 3f2a...\nbinderbox envs gc"

    def run(self) -> int:
        store = self.make_store()
        action, *args = self.extra_args or ["list"]
        if action == "list":
            envs = store.list()
            for env in envs:
                used = time.strftime("%Y-%m-%d %H:%M", time.localtime(env.last_used))
                print(f"{env.key}  {_size(env.size):>9}  {used}  {env.source}")
            print(f"{len(envs)} environments, {_size(sum(e.size for e in envs))}", file=sys.stderr)
            return 0
        if action == "show" and len(args) == 1:
            found = store.get(args[0], touch=False)  # looking is not using
            if found is None:
                raise BinderboxError(
                    f"No environment with key {args[0]}.", hint="See `binderbox envs list`."
                )
            info = {k: getattr(found, k) for k in ("key", "source", "size", "created", "last_used")}
            print(json.dumps({**info, "path": str(found.path), "spec": found.spec}, indent=2))
            return 0
        if action == "rm" and args:
            missing = [key for key in args if not store.remove(key)]
            for key in missing:
                print(
                    f"error: cannot remove {key}: no such environment, or in use", file=sys.stderr
                )
            return 1 if missing else 0
        if action == "gc" and not args:
            removed = store.gc()
            print(f"removed {len(removed)} environments", file=sys.stderr)
            return 0
        print("usage: binderbox envs list | show KEY | rm KEY... | gc", file=sys.stderr)
        return 2


class HomesCommand(Command):
    """binderbox homes list | rm USER..."""

    name = "binderbox-homes"
    description = "List and remove logged-in users' persistent homes."
    examples = "binderbox homes list\nbinderbox homes rm alice"

    def run(self) -> int:
        from .sessions.persistent import HomeInUse, persistent_homes, remove_persistent_home

        action, *args = self.extra_args or ["list"]
        if action == "list" and not args:
            homes = persistent_homes(self.data_path)
            for name in homes:
                print(name)
            print(f"{len(homes)} persistent homes", file=sys.stderr)
            return 0
        if action == "rm" and args:
            failed = 0
            for user in args:
                try:
                    removed = remove_persistent_home(self.data_path, user)
                except HomeInUse:
                    print(
                        f"error: {user}'s home is in use: stop their sessions first",
                        file=sys.stderr,
                    )
                    failed += 1
                    continue
                if not removed:
                    print(f"error: {user} has no persistent home", file=sys.stderr)
                    failed += 1
                else:
                    print(f"removed the home of {user}", file=sys.stderr)
            return 1 if failed else 0
        print("usage: binderbox homes list | rm USER...", file=sys.stderr)
        return 2


def _size(n: int) -> str:
    value = float(n)
    for unit in ("B", "KB", "MB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} GB"


class ServeCommand(Command):
    """binderbox serve [--ip IP] [--port PORT] [--data-dir DIR]"""

    name = "binderbox-serve"
    description = """Start the Binder service: web app, JupyterHub, proxy and idle culler.

    Open http://<ip>:<port>/ for the home page (with --domain: https://<domain>/,
    a certificate obtained over ACME, see c.HTTPS); launch links are
    /v2/<provider>/<spec> as on mybinder.org.  SIGINT/SIGTERM stop the service;
    running sessions survive and are found again by the next start."""
    examples = """binderbox serve --ip 0.0.0.0 --port 8000 --data-dir /srv/binderbox
    binderbox serve --domain binder.example.org --data-dir /srv/binderbox  (HTTPS: 443, 80)"""

    aliases = {
        **BinderboxApp.aliases,
        "ip": "ManagedHub.public_ip",
        "port": "ManagedHub.public_port",
        "hub-port": "ManagedHub.hub_port",
        "proxy-api-port": "ManagedHub.proxy_api_port",
        "base-url": "WebApp.base_url",
        "domain": "HTTPS.domain",
        "https-port": "HTTPS.https_port",
        "http-port": "HTTPS.http_port",
        "acme-directory": "HTTPS.acme_directory",
        "cert-file": "HTTPS.cert_file",
        "key-file": "HTTPS.key_file",
    }

    hub = CaselessStrEnum(
        ["managed", "external"],
        "managed",
        help="""'managed': start JupyterHub, the proxy and the idle culler (one machine).
        'external': use a hub and proxy that run already (zero-to-jupyterhub's, the Helm
        chart's): see c.ExternalHub and binderbox/hub/external.py.""",
    ).tag(config=True)

    def run(self) -> int:
        from .serve import serve

        if self.loaded_config is not None:
            self.notice(f"config: {self.loaded_config}")
        else:
            looked = Path(self.config_file).resolve()
            self.notice(f"config: none found (looked for {looked}); the defaults apply")
        pipeline = self.make_pipeline(allow_local=False)
        asyncio.run(serve(self, pipeline))
        return 0


class GenerateConfigCommand(Command):
    """binderbox generate-config [--output FILE]: write a commented config file."""

    name = "binderbox-generate-config"
    description = "Write a commented binderbox_config.py with every setting and its help."
    output = Unicode("binderbox_config.py", help="Where to write the file.").tag(config=True)
    force = Bool(False, help="Overwrite an existing file.").tag(config=True)
    aliases = {**BinderboxApp.aliases, "output": "GenerateConfigCommand.output"}
    flags = {"force": ({"GenerateConfigCommand": {"force": True}}, "Overwrite the file.")}

    def run(self) -> int:
        from pathlib import Path

        path = Path(self.output)
        if path.exists() and not self.force:
            raise BinderboxError(f"{path} exists.", hint="Use --force to overwrite it.")
        self.classes = configurable_classes()
        path.write_text(self.grouped_config_file(configurable_groups()))
        print(f"wrote {path}", file=sys.stderr)
        return 0

    def generate_config_file(self, classes: Any = None) -> str:
        """traitlets' commented file, with each inherited setting once, on the class that
        defines it (``c.RepoProvider.allow_ssh`` applies to every provider): a subclass's
        section names the ones it inherits instead of repeating them."""
        return inherited_once(super().generate_config_file(classes))

    def grouped_config_file(self, groups: list[tuple[str, list[type]]]) -> str:
        """:meth:`generate_config_file` with its sections under the headings of
        ``groups`` (what an operator wants to do); a base class comes with the first
        group that has a subclass of it."""
        every = list(self._classes_with_config_traits([c for _, cs in groups for c in cs]))
        lines = [f"# Configuration file for {self.name}.", "", "c = get_config()  #noqa", ""]
        placed: set[type] = set()
        for title, members in groups:
            ours = [c for c in every if c not in placed and any(issubclass(m, c) for m in members)]
            placed.update(ours)
            rule = "#" * 78
            lines += [rule, f"# {title}", rule, ""]
            lines += [cls.class_config_section(every) for cls in ours]
        return inherited_once("\n".join(lines))


_SEE_ALSO_RE = re.compile(r"^#  See also: (\w+)\.(\w+)$", re.MULTILINE)
_SETTING_RE = re.compile(r"^# c\.(\w+)\.\w+ = ", re.MULTILINE)


def inherited_once(text: str) -> str:
    """``text`` (a generated config file) without the blocks traitlets repeats for
    inherited settings (``See also: Base.name``); in their place, at the first, one
    note per class naming them by the class that defines them."""
    blocks = text.split("\n\n")
    inherited: dict[int, tuple[str, dict[str, list[str]]]] = {}  # at: class, base: names
    first: dict[str, int] = {}
    kept: list[int] = []
    for i, block in enumerate(blocks):
        also, setting = _SEE_ALSO_RE.search(block), _SETTING_RE.search(block)
        if also is None or setting is None:
            kept.append(i)
            continue
        at = first.setdefault(setting.group(1), i)
        if at == i:
            kept.append(i)
            inherited[i] = (setting.group(1), {})
        inherited[at][1].setdefault(also.group(1), []).append(also.group(2))
    out = [blocks[i] if i not in inherited else _inherited_note(*inherited[i]) for i in kept]
    return "\n\n".join(out)


def _inherited_note(cls: str, names: dict[str, list[str]]) -> str:
    """``## Also the settings of Base (a, b) ...``, commented and wrapped."""
    of = "; ".join(f"c.{base}.* ({', '.join(listed)})" for base, listed in names.items())
    note = f"## Also applies here: {of}. Set c.{cls}.<name> for this class only."
    return textwrap.fill(note, 78, subsequent_indent="#  ", break_on_hyphens=False)


def configurable_classes() -> list[type]:
    """Every class whose settings a config file may set."""
    return [cls for _, classes in configurable_groups() for cls in classes]


def configurable_groups() -> list[tuple[str, list[type]]]:
    """:func:`configurable_classes` by what an operator wants to do (generate-config's
    headings)."""
    from .builders.aptlayer import AptLayers
    from .builders.conda import CondaBuilder
    from .builders.kube import KubernetesBuilds
    from .builders.python import PythonBuilder
    from .builders.r import RBuilder
    from .builders.registry import Builders
    from .content import ContentCache
    from .data import DataCache
    from .data.fetchers import default_fetcher_classes
    from .hub import ManagedHub
    from .hub.external import ExternalHub
    from .hub.logins import Logins
    from .hub.watcher import ChildWatcher
    from .images import ImageRegistry
    from .images.layout import ImageLayout
    from .pipeline import LaunchPipeline
    from .providers import PROVIDERS
    from .runtime.destinations import Destinations
    from .runtime.host import SandboxHost
    from .runtime.network import SandboxNetwork
    from .serve import Maintenance
    from .sessions import SessionLauncher
    from .store import Store
    from .tls import HTTPS
    from .web import WebApp

    return [
        ("Access: what may be launched, from where", [*PROVIDERS.values(), LaunchPipeline]),
        ("Limits: sessions, quotas, sandboxes", [SessionLauncher, SandboxHost, ChildWatcher]),
        (
            "Storage: environments, content, datasets, images",
            [Store, ContentCache, DataCache, *default_fetcher_classes(), ImageLayout, Maintenance],
        ),
        ("Login: who the visitors are", [Logins]),
        ("Network: what sandboxes reach; HTTPS", [SandboxNetwork, Destinations, HTTPS]),
        (
            "Builds: Python, conda, R, apt; on Kubernetes; images",
            [
                Builders,
                PythonBuilder,
                CondaBuilder,
                RBuilder,
                AptLayers,
                KubernetesBuilds,
                ImageRegistry,
            ],
        ),
        (
            "Service: the command, the hub, the web app",
            [BinderboxApp, ManagedHub, ExternalHub, WebApp],
        ),
    ]


class Main(BinderboxApp):
    """The top-level ``binderbox`` command."""

    subcommands = {
        "build": (BuildCommand, BuildCommand.description.splitlines()[0]),
        "envs": (EnvsCommand, EnvsCommand.description),
        # an import string: binderbox.data.cli imports this module
        "data": ("binderbox.data.cli.DataCommand", "Fetch, list and remove datasets."),
        "homes": (HomesCommand, HomesCommand.description),
        "status": ("binderbox.opscli.StatusCommand", "Show the running service and its sessions."),
        "sessions": ("binderbox.opscli.SessionsCommand", "List or stop the service's sessions."),
        "serve": (ServeCommand, ServeCommand.description.splitlines()[0]),
        "generate-config": (GenerateConfigCommand, GenerateConfigCommand.description),
    }

    def start(self) -> None:
        if self.subapp is None and self.extra_args:
            _unknown_command(self.extra_args[0])
        if self.subapp is None:
            self.print_help()
            self.exit(2)
        else:
            self.subapp.start()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``binderbox`` console script."""
    args = sys.argv[1:] if argv is None else argv
    if args and not args[0].startswith("-") and args[0] not in Main.subcommands:
        _unknown_command(args[0])  # before its options are read as the top level's
    app = Main.instance()
    app.initialize(argv)
    app.start()


def _unknown_command(name: str) -> None:
    """Name an unknown subcommand in one line and exit 2 (not the whole help)."""
    print(f"unknown command {name!r}; see binderbox --help", file=sys.stderr)
    sys.exit(2)
