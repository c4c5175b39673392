"""The hub's database: SQLite in the data directory (the default), or a PostgreSQL server.

:class:`DatabaseSettings` holds the operator's settings of
:class:`~binderbox.hub.process.ManagedHub`:

* ``db_url = ''``: SQLite at ``<data>/hub/jupyterhub.sqlite``, as before;
* ``db_url = 'postgresql://binderbox@127.0.0.1:5432/jupyterhub'``: that
  database of a PostgreSQL server (made by the operator, owned by that user;
  the hub makes its tables), through the ``psycopg`` driver (SQLAlchemy's
  ``postgresql+psycopg`` dialect; ``postgresql://`` means it).

The password is a secret and travels like the service tokens: it is read
from ``db_password_file`` (mode 0600, readable by nobody else), from the
environment variable ``BINDERBOX_HUB_DB_PASSWORD``, or from the URL itself,
in that order; the hub gets the whole URL in its environment
(``BINDERBOX_HUB_DB_URL``) and the generated ``jupyterhub_config.py`` reads
it from there.  It is never written into that file, into a log or into
``/health`` (which show :attr:`HubDatabase.shown`, the URL without it).

:meth:`HubDatabase.check` connects once before the hub starts, so a server
that cannot be reached, a wrong password or a missing database is a plain
error of ``binderbox serve`` rather than a traceback in the hub's log.
"""

from __future__ import annotations

import asyncio
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError
from sqlalchemy.pool import NullPool
from traitlets import HasTraits, Unicode

from ..errors import BinderboxError

#: environment variable carrying the hub's database URL (with its password) to the hub
DB_URL_ENV = "BINDERBOX_HUB_DB_URL"
#: environment variable an operator may give the database password in
DB_PASSWORD_ENV = "BINDERBOX_HUB_DB_PASSWORD"
#: the SQLAlchemy dialect binderbox installs the driver of, by URL scheme
DIALECTS = {"postgresql": "postgresql+psycopg", "postgres": "postgresql+psycopg"}
EXAMPLE = "postgresql://binderbox@127.0.0.1:5432/jupyterhub"


class DatabaseError(BinderboxError):
    """The hub's database is misconfigured or cannot be reached."""

    reason = "hub"


class DatabaseSettings(HasTraits):
    """The hub database settings of :class:`~binderbox.hub.process.ManagedHub`."""

    db_url = Unicode(
        "",
        help=f"""The hub's database: '' = SQLite in <data_dir>/hub (the default), or a
        PostgreSQL database, e.g. '{EXAMPLE}' (the database must exist; the hub makes its
        tables).  Give the password in db_password_file or in the environment variable
        {DB_PASSWORD_ENV} rather than in the URL; it reaches the hub through its
        environment only, never the generated jupyterhub_config.py or a log.""",
    ).tag(config=True)
    db_password_file = Unicode(
        "",
        help="""A file holding the password of db_url's user (one line; mode 0600,
        readable by the service's user only).""",
    ).tag(config=True)

    def hub_database(self, hub_dir: Path) -> HubDatabase:
        """The database these settings name (SQLite under ``hub_dir`` by default)."""
        if not self.db_url.strip():
            return HubDatabase(make_url(f"sqlite:///{hub_dir / 'jupyterhub.sqlite'}"))
        return HubDatabase(server_url(self.db_url.strip(), self._password))

    def _password(self) -> str | None:
        """The password from db_password_file, else from the environment (None: neither)."""
        if self.db_password_file:
            return read_password_file(Path(self.db_password_file))
        return os.environ.get(DB_PASSWORD_ENV) or None


def server_url(value: str, password: Callable[[], str | None]) -> URL:
    """``value`` (a PostgreSQL URL) with binderbox's driver and the password
    (``password()``, when the URL has none).  DatabaseError when it is no such URL; the
    message never repeats ``value``, which may hold a password."""
    try:
        url = make_url(value)
    except ArgumentError:
        raise DatabaseError(
            "ManagedHub.db_url is not a database URL.", hint=f"Write it like {EXAMPLE}."
        ) from None
    if url.drivername not in (*DIALECTS, DIALECTS["postgresql"]):
        raise DatabaseError(
            f"ManagedHub.db_url names a {url.get_backend_name()} database: the hub runs on "
            "SQLite (db_url = '') or PostgreSQL.",
            hint=f"Write it like {EXAMPLE}.",
        )
    if not url.database:
        raise DatabaseError(
            "ManagedHub.db_url names no database.", hint=f"Write it like {EXAMPLE}."
        )
    url = url.set(drivername=DIALECTS["postgresql"])
    if url.password is None:
        given = password()
        if given is not None:
            url = url.set(password=given)
    return url


def read_password_file(path: Path) -> str:
    """The first line of ``path``; DatabaseError when it cannot be read or others may read it."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as err:
        raise DatabaseError(
            f"ManagedHub.db_password_file {path} cannot be read: {err.strerror}."
        ) from None
    with os.fdopen(fd) as handle:
        mode = stat.S_IMODE(os.fstat(handle.fileno()).st_mode)
        if mode & 0o077:
            raise DatabaseError(
                f"ManagedHub.db_password_file {path} may be read by other users (mode {mode:04o}).",
                hint=f"chmod 600 {path}",
            )
        line = handle.readline().strip()
    if not line:
        raise DatabaseError(f"ManagedHub.db_password_file {path} is empty.")
    return line


@dataclass(frozen=True)
class HubDatabase:
    """One hub database.  ``url`` holds the password: pass it only to the hub's
    environment (:meth:`secret_url`); show :attr:`shown`."""

    url: URL

    @property
    def kind(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return self.url.get_backend_name()

    @property
    def is_server(self) -> bool:
        """True for a database server (its URL travels through the environment)."""
        return self.kind != "sqlite"

    @property
    def shown(self) -> str:
        """The URL without password or driver, for logs and messages."""
        u = self.url
        return URL.create(
            self.kind, u.username, None, u.host, u.port, u.database
        ).render_as_string()

    def secret_url(self) -> str:
        """The whole URL, password included (for the hub's environment only)."""
        return self.url.render_as_string(hide_password=False)

    def check(self, timeout: float = 10) -> None:
        """Connect once and run ``SELECT 1`` (servers only); DatabaseError in plain words
        when the server cannot be reached, refuses the login or has no such database."""
        if not self.is_server:
            return
        engine = create_engine(
            self.url, poolclass=NullPool, connect_args={"connect_timeout": max(1, int(timeout))}
        )
        try:
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        except ImportError:
            raise DatabaseError(
                "The PostgreSQL driver (psycopg) is not installed.", hint="Run scripts/setup."
            ) from None
        except SQLAlchemyError as err:
            reason = self._reason(err)
            raise DatabaseError(
                f"The hub database {self.shown} cannot be used: {reason}",
                hint=_hint(reason),
            ) from None
        finally:
            engine.dispose()

    def _reason(self, err: SQLAlchemyError) -> str:
        """The driver's words for ``err`` on one line, the password taken out."""
        words = " ".join(str(getattr(err, "orig", None) or err).split())
        words = words.split(" (Background on this error", 1)[0].removeprefix("connection failed: ")
        if self.url.password:
            words = words.replace(str(self.url.password), "***")
        return words if words.endswith((".", "?")) else words + "."

    async def health(self) -> dict[str, Any]:
        """The ``/health`` check: the kind, and whether the database answers (a server)
        or exists (SQLite).  Never the URL: /health is public."""
        result: dict[str, Any] = {"service": "Hub database", "kind": self.kind, "ok": False}
        if not self.is_server:
            result["ok"] = Path(str(self.url.database)).exists()
            return result
        try:
            await asyncio.to_thread(self.check, 5)
        except DatabaseError:  # its words name the server: for the log, not the public
            result["error"] = "the hub database does not answer"
            return result
        result["ok"] = True
        return result


def _hint(reason: str) -> str:
    """What to do about a database failure the driver described as ``reason``."""
    if re.search(r"password|authentication", reason):
        return (
            f"Check the user and password (ManagedHub.db_url, db_password_file or "
            f"{DB_PASSWORD_ENV})."
        )
    if "does not exist" in reason:
        return "Create the database first (e.g. createdb -O <user> <name> on the server)."
    return "Check that the server runs, and ManagedHub.db_url's host and port."
