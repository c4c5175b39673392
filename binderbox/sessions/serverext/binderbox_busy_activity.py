"""A Jupyter server extension every binder session loads: a busy kernel is activity.

jupyter_server counts a kernel's messages as activity, but a cell that runs for
an hour without printing sends none, and the idle culler would stop its server.
Every ``interval`` seconds this extension looks at the kernels' execution state
and, while one is busy, sets the ``binderbox_busy_last_activity`` setting, which
``ServerWebApplication.last_activity`` counts (any setting ending in
``_last_activity`` is, by jupyter_server's documented hook), so jupyterhub-singleuser
reports the server active to the hub.

Loaded from ``/srv/binderbox-ext`` in the sandbox (on ``PYTHONPATH``, enabled by
``config/jupyter_server_config.d/binderbox.json`` on ``JUPYTER_CONFIG_PATH``); it
imports nothing but Tornado, which every Jupyter server has, and runs on every
Python a session may have (no ``datetime.UTC``: 3.11+).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import Any

from tornado.ioloop import PeriodicCallback

#: the setting jupyter_server's last_activity() picks up
SETTING = "binderbox_busy_last_activity"


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "binderbox_busy_activity"}]


def busy(kernel_manager: Any) -> bool:
    """Whether any kernel of ``kernel_manager`` is executing now."""
    for kernel_id in list(kernel_manager.list_kernel_ids()):
        kernel = kernel_manager.get_kernel(kernel_id)
        if getattr(kernel, "execution_state", "") == "busy":
            return True
    return False


def _load_jupyter_server_extension(serverapp: Any) -> None:
    settings = serverapp.web_app.settings
    settings[SETTING] = settings["started"]
    interval = float(os.environ.get("BINDERBOX_BUSY_INTERVAL") or 10)

    def tick() -> None:
        if busy(serverapp.kernel_manager):
            settings[SETTING] = datetime.now(timezone.utc)  # noqa: UP017  (datetime.UTC: Python 3.11+)

    # started from inside the server's loop: at load time IOLoop.current() is not it
    serverapp.io_loop.add_callback(lambda: PeriodicCallback(tick, interval * 1000).start())
