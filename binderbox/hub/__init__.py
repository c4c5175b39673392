"""JupyterHub and its proxy as managed children of ``binderbox serve``.

See :mod:`binderbox.hub.process` (:class:`ManagedHub`) and
:mod:`binderbox.hub.config` (the generated ``jupyterhub_config.py``).
"""

from .process import HubError, ManagedHub

__all__ = ["HubError", "ManagedHub"]
