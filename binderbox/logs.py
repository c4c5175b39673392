"""Small shared pieces for log lines: the progress callback, a log file's tail, and
JSON lines for operators who ship their logs (``binderbox serve --log-format json``).

With JSON lines every line the service writes is one JSON object: log records
(:class:`JsonFormatter`, on stderr) and the service's notices (:func:`notice`, on
stdout: the config file loaded, the URL, what it did at shutdown).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: A callback that receives one line of human-readable progress.
LogFn = Callable[[str], None]

#: the attributes every LogRecord has: the others are the ``extra=`` fields of a call
_RECORD_ATTRS = frozenset(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {
    "message",
    "asctime",
    "highlevel",  # traitlets' LevelFormatter adds it
    "taskName",
}


def tail(path: Path, lines: int) -> str:
    """The last ``lines`` lines of the file at ``path`` ("" if it cannot be read)."""
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def json_line(
    level: str,
    logger: str,
    message: str,
    fields: Mapping[str, Any] | None = None,
    at: float | None = None,
) -> str:
    """One JSON log line: ``time`` (``at``, else now; UTC, ISO 8601), ``level``,
    ``logger``, ``message``, then ``fields`` (never replacing those four)."""
    when = datetime.now(UTC) if at is None else datetime.fromtimestamp(at, UTC)
    record: dict[str, Any] = {
        "time": when.isoformat(timespec="milliseconds"),
        "level": level,
        "logger": logger,
        "message": message,
    }
    for key, value in (fields or {}).items():
        record.setdefault(key, value)
    return json.dumps(record, default=str)


class JsonFormatter(logging.Formatter):
    """Log records as :func:`json_line` objects; a call's ``extra=`` fields become
    fields of the line, an exception its ``exception`` field (the traceback)."""

    def format(self, record: logging.LogRecord) -> str:
        fields = {k: v for k, v in vars(record).items() if k not in _RECORD_ATTRS}
        if record.exc_info:
            fields["exception"] = self.formatException(record.exc_info)
        return json_line(record.levelname, record.name, record.getMessage(), fields, record.created)


def notice(text: str, *, json_lines: bool, logger: str = "binderbox") -> None:
    """A line for the operator on stdout: ``text``, or its :func:`json_line`."""
    print(json_line("INFO", logger, text) if json_lines else text, flush=True)


def use_json(config: dict[str, Any]) -> dict[str, Any]:
    """``logging.config.dictConfig`` settings (traitlets' console handler) changed to
    JSON lines, for every logger: the root logger gets the handler too (at WARNING,
    as Python's last-resort handler shows them in text mode)."""
    config["formatters"]["console"] = {"()": f"{__name__}.JsonFormatter"}
    config["root"] = {"level": "WARNING", "handlers": ["console"]}
    return config
