"""Sessions: sandboxed single-user servers run by JupyterHub.

* :mod:`.launcher` -- :class:`SessionLauncher`, the seam the pipeline calls
* :mod:`.hubclient` -- the hub REST client
* :mod:`.spawner` -- :class:`BinderSpawner`, loaded by the hub
* :mod:`.limits` -- cgroup memory/CPU limits, :func:`limits_status`
* :mod:`.supervise` -- the detached parent of each sandbox

Names are imported lazily: ``python -m binderbox.sessions.supervise`` runs
once per session and must stay small (standard library only).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .launcher import SessionLauncher, SessionRequest
    from .limits import limits_status

__all__ = ["SessionLauncher", "SessionRequest", "limits_status"]


def __getattr__(name: str) -> Any:
    if name in ("SessionLauncher", "SessionRequest"):
        from . import launcher

        return getattr(launcher, name)
    if name == "limits_status":
        from .limits import limits_status

        return limits_status
    raise AttributeError(name)
