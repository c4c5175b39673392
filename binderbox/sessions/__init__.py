"""Sessions: sandboxed single-user servers run by JupyterHub.

* :mod:`.launcher` -- :class:`SessionLauncher`, the seam the pipeline calls
* :mod:`.request` -- :class:`SessionRequest` (what it is asked) and what it tells the
  server (its launch options) and the visitor (the ``ready`` event)
* :mod:`.hubclient` -- the hub REST client
* :mod:`.spawners` -- what the hub loads: a mixin and one spawner per backend

What a session shares with builds (the sandbox, its layout, limits, the
supervisor) is in :mod:`binderbox.runtime`.
"""

from .launcher import SessionLauncher, SessionRequest

__all__ = ["SessionLauncher", "SessionRequest"]
