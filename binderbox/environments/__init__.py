"""Repository environment files -> a normalised :class:`EnvSpec`."""

from .detect import detect
from .spec import ENV_PREFIX, HOME, EnvSpec

__all__ = ["ENV_PREFIX", "HOME", "EnvSpec", "detect"]
