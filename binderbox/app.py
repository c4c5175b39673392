"""The composition root: configuration, data directory, and the parts built from it.

``binderbox`` is a traitlets :class:`~traitlets.config.Application` like
JupyterHub: settings come from a config file (``binderbox_config.py``,
written by ``binderbox generate-config``), then environment variables read
by ``@default`` methods, then command-line flags.  Every part (store,
builder, pipeline, web app, hub) takes its settings from its own class
section, e.g. ``c.Store.budget`` or ``c.LaunchPipeline.build_timeout``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from traitlets import CaselessStrEnum, Type, Unicode, default, observe
from traitlets.config import Application

from . import __version__
from .builders.base import Builder
from .builders.python import PythonBuilder
from .builders.registry import Builders
from .content import ContentCache
from .data import DataCache
from .errors import BinderboxError
from .images import ImageRegistry
from .logs import notice, use_json
from .pipeline import LaunchPipeline
from .runtime.provision import make_reachable
from .sessions.sizes import SessionSizes
from .store import Store


class BinderboxApp(Application):
    """Common settings of every ``binderbox`` command."""

    name = "binderbox"
    version = __version__
    description = "A Binder service on one machine: repositories to live Jupyter environments."

    data_dir = Unicode(
        help="""Directory for all state: environments, caches, hub database, session homes.
        Sandboxes run as their own host uids and must be able to enter it.

        Default: $BINDERBOX_DATA_DIR, else /var/lib/binderbox as root, else
        ~/.local/share/binderbox.""",
    ).tag(config=True)
    config_file = Unicode(
        "binderbox_config.py", help="The configuration file to load (if it exists)."
    ).tag(config=True)

    builder_class = Type(
        Builders,
        klass=Builder,
        help="""What builds environments: binderbox.builders.registry.Builders (here, in
        sandboxes), or binderbox.builders.kube.KubernetesBuilds (each build a Kubernetes
        Job; the Helm chart's choice).  `binderbox build` always builds here.""",
    ).tag(config=True)

    log_style = CaselessStrEnum(
        ["text", "json"],
        "text",
        help="""How log lines are written: 'text' for people, 'json' for log shippers
        (one JSON object per line, on stderr: time, level, logger, message and the
        record's fields, e.g. the per-launch summary's; the service's notices on stdout
        are JSON objects too).  The command line's --log-format.""",
    ).tag(config=True)

    aliases = {
        "data-dir": "BinderboxApp.data_dir",
        "log-format": "BinderboxApp.log_style",
        "config": "BinderboxApp.config_file",
        "log-level": "Application.log_level",
    }

    #: the config file :meth:`load_config_files` loaded (None: none was found)
    loaded_config: Path | None = None

    @default("data_dir")
    def _default_data_dir(self) -> str:
        env = os.environ.get("BINDERBOX_DATA_DIR")
        if env:
            return env
        if os.geteuid() == 0:  # root's home is private: sandboxes could not enter it
            return "/var/lib/binderbox"
        return str(Path.home() / ".local" / "share" / "binderbox")

    def load_config_files(self) -> None:
        """Load ``config_file`` from the working directory when it exists."""
        path = Path(self.config_file)
        if path.is_file():
            self.load_config_file(path.name, path=str(path.parent.resolve()))
            self.loaded_config = path.resolve()

    def get_default_logging_config(self) -> dict[str, Any]:
        """traitlets' console handler, with JSON lines for every logger when asked."""
        config: dict[str, Any] = super().get_default_logging_config()
        return use_json(config) if self.log_style == "json" else config

    @observe("log_style")
    def _log_style_changed(self, change: Any) -> None:
        self._configure_logging()

    def notice(self, text: str) -> None:
        """One line for the operator on stdout (a JSON object with --log-format json)."""
        notice(text, json_lines=self.log_style == "json", logger=self.log.name)

    @property
    def data_path(self) -> Path:
        """The data directory, created on first use."""
        path = Path(self.data_dir).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() == 0:  # sandboxes run as other uids: they must enter it
            try:
                make_reachable(path)
            except PermissionError as err:
                raise BinderboxError(
                    f"The data directory {path} cannot be used: {err}.",
                    hint="Choose one the sandboxes can enter, e.g. --data-dir /var/lib/binderbox.",
                ) from None
        return path

    def make_store(self) -> Store:
        """The environment store under the data directory."""
        return Store(parent=self, root=str(self.data_path / "store"))

    def make_data_cache(self) -> DataCache:
        """The dataset cache under the data directory (the service's and the CLI's)."""
        return DataCache(parent=self, root=str(self.data_path / "datasets"))

    def make_images(self) -> ImageRegistry:
        """Image mode's registry (enabled when c.ImageRegistry.url is set), its OCI layout
        under the data directory."""
        images = ImageRegistry(parent=self)
        images.layout_dir = images.layout_dir or str(self.data_path / "images")
        return images

    def make_pipeline(self, *, allow_local: bool) -> LaunchPipeline:
        """A pipeline with every part configured from this application."""
        data = self.data_path
        if allow_local:
            # the operator's own command: their disk, their network, their ssh keys
            for trait in ("allow_private_hosts", "allow_ssh"):
                self.config.RepoProvider.setdefault(trait, True)
        builder = self.builder_class(parent=self)
        for member in getattr(builder, "members", [builder]):
            if not isinstance(member, PythonBuilder):
                continue
            member.host  # noqa: B018 - its settings are checked now, not at the first build
            if "cache_dir" not in self.config.PythonBuilder:
                member.cache_dir = str(data / "uv-cache")  # made on first use
            if "root" not in self.config.AptLayers:
                member.layers.root = str(data / "layers")  # system layers (apt.txt)
        pipeline = LaunchPipeline(
            parent=self,
            store=self.make_store(),
            builder=builder,
            content=ContentCache(parent=self, root=str(data / "content")),
            sizes=SessionSizes(parent=self),
            images=self.make_images(),
        )
        if allow_local:
            pipeline.allow_local = True
        pipeline.work_dir = pipeline.work_dir or str(_mkdir(data / "work"))
        return pipeline


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
