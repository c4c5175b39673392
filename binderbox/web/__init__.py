"""The web layer of ``binderbox serve``: pages, the build API, badges.

Build the Tornado application with :func:`make_app`; configure it with
:class:`WebApp` (``c.WebApp.*``).
"""

from .app import WebApp, make_app
from .base import LaunchPipelineProtocol, SessionIndex

__all__ = ["LaunchPipelineProtocol", "SessionIndex", "WebApp", "make_app"]
