"""One detector per environment kind, in the order :func:`~binderbox.environments.detect`
tries them (see :mod:`.base`)."""

from .apt import read_apt
from .base import Checkout, Detector, Found
from .conda import CondaDetector, CondaLockDetector, PixiDetector
from .pylock import PylockDetector
from .python import PipenvDetector, PythonDetector
from .r import RDetector
from .refused import REFUSED
from .uvlock import UvLockDetector

#: repo2docker's order of precedence, extended with the kinds it does not read
#: (a lock file before the loose file beside it); the last one always detects
DETECTORS: tuple[Detector, ...] = (
    *REFUSED,
    RDetector(),
    PixiDetector(),
    CondaLockDetector(),
    CondaDetector(),
    UvLockDetector(),
    PylockDetector(),
    PipenvDetector(),
    PythonDetector(),
)

__all__ = ["DETECTORS", "Checkout", "Detector", "Found", "read_apt"]
