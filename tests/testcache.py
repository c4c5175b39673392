"""Where the suite keeps what it builds once and reuses across runs (environments,
uv's package cache, compiled modules): ``$BINDERBOX_TEST_CACHE``, by default
``/tmp/binderbox-test-cache``.  Every sandbox uid must be able to enter it."""

from __future__ import annotations

import os
from pathlib import Path

CACHE = Path(os.environ.get("BINDERBOX_TEST_CACHE") or "/tmp/binderbox-test-cache")
