"""Environment builders: an :class:`~binderbox.environments.EnvSpec` becomes a directory."""

from .base import Builder
from .python import PythonBuilder, apply_home_overlay, env_sandbox, run_in_env

__all__ = ["Builder", "PythonBuilder", "apply_home_overlay", "env_sandbox", "run_in_env"]
