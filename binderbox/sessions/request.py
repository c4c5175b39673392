"""What a launch asks of the session launcher, and what it tells the server and the
visitor: :class:`SessionRequest` (from the pipeline), :func:`session_options` (the
server's ``user_options``: :class:`~binderbox.runtime.options.LaunchOptions`),
:func:`ready_event` (the ``ready`` event) and :func:`binder_info` (the repository's
``BINDER_*`` facts both carry)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..events import Ready
from ..providers.base import Resolved
from ..runtime.options import BinderInfo, LaunchOptions
from .homes import home_policy
from .identity import ANONYMOUS, IdentityPolicy, Visitor, repo_folder


@dataclass(frozen=True)
class SessionRequest:
    """What to launch.

    ``env_key``/``env_path``: the built environment (its store key and host
    directory); ``content_path``: the repository content copied into the
    home; ``resolved``: the version launched (for ``BINDER_*`` and quotas);
    ``start_script``: the repository's ``start`` script relative to its root;
    ``launch_host``: the public base URL of the service (``http://host:8000/``);
    ``data_mounts``: datasets bound read-only at ``~/data/<name>``;
    ``hold_files``: use-lock files (``locks/<key>.use`` of the store and of
    the dataset cache) the session holds shared while it runs, so neither
    its environment nor its datasets are evicted;
    ``high_quota``: the spec matches its provider's ``high_quota_specs``
    (``per_repo_quota_higher`` applies);
    ``client_ip``: the requester's address (``launches_per_address``);
    ``visitor``: who asks (:mod:`binderbox.sessions.identity`);
    ``size``: the operator's size the session gets, by name ('' = the default);
    ``image``: image sessions (``env_path`` None): the environment's image in the registry.
    """

    env_key: str
    env_path: Path | None
    content_path: Path
    resolved: Resolved
    start_script: str | None = None
    launch_host: str = ""
    data_mounts: Mapping[str, Path] = field(default_factory=dict)
    hold_files: Sequence[Path] = ()
    high_quota: bool = False
    client_ip: str = ""
    visitor: Visitor = ANONYMOUS
    size: str = ""
    image: str = ""


def binder_info(req: SessionRequest) -> BinderInfo:
    """What a launch tells about its repository: the ``ready`` event's fields and the
    session's ``BINDER_*`` variables, under the same names."""
    r = req.resolved
    return BinderInfo(
        repo_url=r.repo_url,
        binder_ref_url=r.ref_url,
        binder_launch_host=req.launch_host,
        binder_request=r.binder_request,
        binder_persistent_request=r.binder_persistent_request,
    )


def session_options(req: SessionRequest, token: str, policy: IdentityPolicy) -> dict[str, Any]:
    """The ``user_options`` of the server: the launch's :class:`LaunchOptions`, its home
    as the visitor's identity ``policy`` says."""
    return LaunchOptions(
        env_key=req.env_key,
        env_path=req.env_path,
        image=req.image,
        content_path=req.content_path,
        start_script=req.start_script,
        data_mounts=req.data_mounts,
        hold_files=tuple(req.hold_files),
        token=token,
        binder=binder_info(req),
        size=req.size,
        home=policy.home,
        content_folder=repo_folder(req.resolved),
        content_version=req.resolved.version[:64],
    ).to_user_options()


def ready_event(req: SessionRequest, url: str, token: str, policy: IdentityPolicy) -> Ready:
    """The ``ready`` event of the session at ``url`` (``repo_dir``: the repository's
    folder in the home, as the home policy places it)."""
    return Ready(
        message=f"server running at {url}",
        url=url,
        token=token,
        image=req.env_key,
        repo_dir=home_policy(policy.home).repo_dir(repo_folder(req.resolved)),
        **binder_info(req).fields(),
    )
