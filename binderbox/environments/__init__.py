"""Repository environment files -> a normalised :class:`EnvSpec`."""

from .spec import ENV_PREFIX, HOME, EnvSpec

__all__ = ["ENV_PREFIX", "HOME", "EnvSpec"]
