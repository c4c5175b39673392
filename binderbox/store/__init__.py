"""The environment store: content-addressed, atomic, LRU-evicted (see store.py)."""

from .finishing import Finisher
from .locks import FileLock
from .store import BuildFn, Env, SharedBuild, Store

__all__ = ["BuildFn", "Env", "FileLock", "Finisher", "SharedBuild", "Store"]
