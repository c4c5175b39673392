"""The store's metadata: one SQLite file shared by every process using the store.

Two tables:

* ``envs`` -- one row per *published* environment (spec, source, size in
  bytes, created / last used as Unix times).  A row is inserted only after
  its tree was renamed into place, and deleted before the tree is removed,
  so a row never names a half-built environment.
* ``builds`` -- the state of the last build attempt of a key
  (``building``, ``failed``, ``cancelled``, ``ready``) with the failure as
  the user should see it (message, hint, reason, status code).  A process
  that waited for another process's build reads the outcome here.

The database runs in WAL mode with a busy timeout, and every method uses
its own short-lived connection, so it is safe from several processes and
threads at once.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

from ..errors import BuildError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS envs (
    key TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    source TEXT NOT NULL,
    size INTEGER NOT NULL,
    created REAL NOT NULL,
    last_used REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS envs_last_used ON envs (last_used);
CREATE TABLE IF NOT EXISTS builds (
    key TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    hint TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    status_code INTEGER NOT NULL DEFAULT 500,
    pid INTEGER NOT NULL,
    updated REAL NOT NULL
);
"""


class BuildState(StrEnum):
    """The state of the last build attempt of a key."""

    BUILDING = "building"
    FAILED = "failed"
    CANCELLED = "cancelled"
    READY = "ready"


@dataclass(frozen=True)
class EnvRecord:
    """One published environment as stored."""

    key: str
    spec: dict[str, Any]
    source: str
    size: int
    created: float
    last_used: float


@dataclass(frozen=True)
class BuildStatus:
    """The last build attempt of a key, as recorded by the process that ran it."""

    key: str
    state: BuildState
    message: str
    hint: str
    reason: str
    status_code: int
    pid: int
    updated: float

    def error(self) -> BuildError:
        """The recorded failure as an error to raise in another process."""
        return BuildError(
            self.message or "The environment build failed.",
            hint=self.hint,
            reason=self.reason or None,
            status_code=self.status_code,
            log_message=f"build of {self.key} failed in process {self.pid}: {self.message}",
        )


class Metadata:
    """Access to ``store.sqlite``.  Creates the schema on first use."""

    def __init__(self, path: Path, *, timeout: float = 30.0) -> None:
        self.path = path
        self.timeout = timeout
        with closing(self._connect()) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(_SCHEMA)

    def _connect(self) -> sqlite3.Connection:
        db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        db.execute(f"PRAGMA busy_timeout={int(self.timeout * 1000)}")
        db.row_factory = sqlite3.Row
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with closing(self._connect()) as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def _query(self, sql: str, *args: Any) -> list[sqlite3.Row]:
        with closing(self._connect()) as db:
            return list(db.execute(sql, args))

    # -- environments ---------------------------------------------------

    def publish(self, record: EnvRecord) -> None:
        """Insert (or replace) a published environment and mark its build ready."""
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO envs VALUES (?, ?, ?, ?, ?, ?)",
                (
                    record.key,
                    json.dumps(record.spec, sort_keys=True),
                    record.source,
                    record.size,
                    record.created,
                    record.last_used,
                ),
            )
            _put_status(db, record.key, BuildState.READY)

    def get(self, key: str) -> EnvRecord | None:
        """The record of ``key`` or ``None``."""
        rows = self._query("SELECT * FROM envs WHERE key = ?", key)
        return _record(rows[0]) if rows else None

    def records(self) -> list[EnvRecord]:
        """All records, least recently used first."""
        return [_record(row) for row in self._query("SELECT * FROM envs ORDER BY last_used, key")]

    def touch(self, key: str, when: float) -> None:
        """Set the last-used time of ``key``."""
        with closing(self._connect()) as db:
            db.execute("UPDATE envs SET last_used = ? WHERE key = ?", (when, key))

    def set_size(self, key: str, size: int) -> None:
        """Record a new size for ``key``."""
        with closing(self._connect()) as db:
            db.execute("UPDATE envs SET size = ? WHERE key = ?", (size, key))

    def delete(self, key: str) -> None:
        """Forget ``key`` entirely (environment and build state)."""
        with self._transaction() as db:
            db.execute("DELETE FROM envs WHERE key = ?", (key,))
            db.execute("DELETE FROM builds WHERE key = ?", (key,))

    # -- build state ----------------------------------------------------

    def set_status(
        self,
        key: str,
        state: BuildState,
        *,
        message: str = "",
        hint: str = "",
        reason: str = "",
        status_code: int = 500,
    ) -> None:
        """Record the state of the current build attempt of ``key``."""
        with self._transaction() as db:
            _put_status(db, key, state, message, hint, reason, status_code)

    def status(self, key: str) -> BuildStatus | None:
        """The last recorded build attempt of ``key``."""
        rows = self._query("SELECT * FROM builds WHERE key = ?", key)
        if not rows:
            return None
        row = rows[0]
        return BuildStatus(
            key=row["key"],
            state=BuildState(row["state"]),
            message=row["message"],
            hint=row["hint"],
            reason=row["reason"],
            status_code=row["status_code"],
            pid=row["pid"],
            updated=row["updated"],
        )


def _put_status(
    db: sqlite3.Connection,
    key: str,
    state: BuildState,
    message: str = "",
    hint: str = "",
    reason: str = "",
    status_code: int = 500,
) -> None:
    db.execute(
        "INSERT OR REPLACE INTO builds VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (key, state.value, message, hint, reason, status_code, os.getpid(), time.time()),
    )


def _record(row: sqlite3.Row) -> EnvRecord:
    return EnvRecord(
        key=row["key"],
        spec=json.loads(row["spec"]),
        source=row["source"],
        size=row["size"],
        created=row["created"],
        last_used=row["last_used"],
    )
