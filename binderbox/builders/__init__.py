"""Environment builders: an :class:`~binderbox.environments.EnvSpec` becomes a directory."""

from ..runtime.layout import env_interpreter_mounts, env_sandbox, run_in_env
from .base import Builder
from .overlay import apply_home_overlay
from .python import PythonBuilder

__all__ = [
    "Builder",
    "PythonBuilder",
    "apply_home_overlay",
    "env_interpreter_mounts",
    "env_sandbox",
    "run_in_env",
]
