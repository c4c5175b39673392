"""A real PostgreSQL server for the tests (Debian's ``postgresql``, from ``scripts/setup --test``).

:class:`PgServer` runs ``initdb`` and ``pg_ctl start`` in a temporary directory of its
own, as the ``postgres`` OS user when the suite runs as root (PostgreSQL refuses to
run as root), listening on a free loopback port only (its socket in that
directory), every login by password (``scram-sha-256``).  Its superuser
``postgres`` makes, for each hub, a database owned by ``binderbox``, an ordinary role
with a password of its own: the hub logs in as an operator's would.  It is stopped
by the postmaster's pid and its directory removed.

:func:`shared` is the one server of a test run, started on first use and stopped
at the end of the run (conftest.py).  :func:`hub_db_url` is how the test hubs
(session_helpers, serve_helpers) choose their database: SQLite unless
``BINDERBOX_TEST_HUB_DB=postgresql``, then a database of the shared server per data
directory (the same directory, so a restarted hub, finds the same database).
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import pwd
import secrets
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql

from binderbox.hub.children import free_port

#: set to ``postgresql`` to run the test hubs on PostgreSQL
HUB_DB_ENV = "BINDERBOX_TEST_HUB_DB"
#: the role the hubs log in as
HUB_USER = "binderbox"


def pg_bindir() -> Path:
    """Where ``initdb`` and ``pg_ctl`` are: PATH, else Debian's newest server version."""
    found = shutil.which("initdb")
    if found:
        return Path(found).resolve().parent
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/initdb"),
        key=lambda p: int(p.parts[-3]) if p.parts[-3].isdigit() else 0,
    )
    if not versions:
        raise RuntimeError("PostgreSQL is not installed: run scripts/setup --test")
    return versions[-1].parent


def _run_as() -> str | None:
    """The OS user to run the server as (None: this process's own)."""
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return "nobody"
    return "postgres"


@dataclass
class PgServer:
    """One PostgreSQL server in a temporary directory (see the module docstring)."""

    root: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="bbx-postgresql-")))
    port: int = field(default_factory=free_port)
    admin_password: str = field(default_factory=lambda: secrets.token_hex(16))
    #: the password of :data:`HUB_USER`
    password: str = field(default_factory=lambda: secrets.token_hex(16))
    pid: int | None = None

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def log(self) -> Path:
        return self.root / "server.log"

    def _run(self, *cmd: str | Path) -> None:
        user = _run_as()
        ids = {}
        if user is not None:  # its own uid and gid, none of root's groups
            info = pwd.getpwnam(user)
            ids = {"user": info.pw_uid, "group": info.pw_gid, "extra_groups": []}
        proc = subprocess.run(
            [str(part) for part in cmd],
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            **ids,  # type: ignore[arg-type]
        )
        if proc.returncode:
            tail = self.log.read_text(errors="replace")[-2000:] if self.log.exists() else ""
            raise RuntimeError(f"{cmd[0]} failed:\n{proc.stdout}{proc.stderr}\n{tail}")

    def start(self) -> PgServer:
        """initdb, pg_ctl start (waits until it accepts logins), make the hubs' role."""
        user = _run_as()
        if user is not None:
            info = pwd.getpwnam(user)
            os.chown(self.root, info.pw_uid, info.pw_gid)
        self.root.chmod(0o700)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.admin_password + "\n")
        if user is not None:
            os.chown(pwfile, pwd.getpwnam(user).pw_uid, -1)
        bindir = pg_bindir()
        try:
            self._run(
                bindir / "initdb", "-D", self.data, "-U", "postgres", f"--pwfile={pwfile}",
                "--auth=scram-sha-256", "-E", "UTF8", "--locale=C", "--no-sync",
            )  # fmt: skip
        finally:
            pwfile.unlink()
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off"
        self._run(bindir / "pg_ctl", "-D", self.data, "-l", self.log, "-o", options, "-w",
                  "-t", "60", "start")  # fmt: skip
        self.pid = int((self.data / "postmaster.pid").read_text().split()[0])
        with self.admin() as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                    sql.Identifier(HUB_USER), sql.Literal(self.password)
                )
            )
        return self

    @contextlib.contextmanager
    def admin(self, database: str = "postgres") -> Iterator[psycopg.Connection[tuple[object, ...]]]:
        """A superuser connection (autocommit) over TCP."""
        conn = psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", password=self.admin_password,
            dbname=database, autocommit=True, connect_timeout=10,
        )  # fmt: skip
        with conn:
            yield conn

    def url(self, database: str, password: str | None = "") -> str:
        """The URL a hub is given for ``database`` as :data:`HUB_USER`: with the role's
        password (``''``), another (a wrong one), or none (``None``)."""
        secret = self.password if password == "" else password
        login = HUB_USER if secret is None else f"{HUB_USER}:{secret}"
        return f"postgresql://{login}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str) -> str:
        """``name`` made (owned by :data:`HUB_USER`) unless it exists; returns ``name``."""
        with self.admin() as conn:
            found = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,))
            if found.fetchone() is None:
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(name), sql.Identifier(HUB_USER)
                    )
                )
        return name

    def tables(self, database: str) -> set[str]:
        """The tables of ``database``'s public schema."""
        with self.admin(database) as conn:
            rows = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
            return {str(row[0]) for row in rows}

    def stop(self, grace: float = 30) -> None:
        """Stop the postmaster by its pid (fast shutdown, then immediate), remove the dir."""
        pid, self.pid = self.pid, None
        if pid is not None:
            _signal_and_wait(pid, signal.SIGINT, grace) or _signal_and_wait(
                pid, signal.SIGQUIT, grace
            )
        shutil.rmtree(self.root, ignore_errors=True)


def _signal_and_wait(pid: int, sig: int, grace: float) -> bool:
    """Send ``sig`` to ``pid``; True once it is gone (within ``grace`` seconds)."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return True
    for _ in range(int(grace / 0.1)):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # not our child (pg_ctl's): usually raises
        time.sleep(0.1)
    return False


_shared: PgServer | None = None


def shared() -> PgServer:
    """The test run's server, started on first use (stopped by :func:`stop_shared`)."""
    global _shared
    if _shared is None:
        server = PgServer()
        atexit.register(server.stop)
        try:
            server.start()
        except BaseException:
            server.stop()
            raise
        _shared = server
    return _shared


def stop_shared() -> None:
    """Stop the shared server if it was started."""
    global _shared
    server, _shared = _shared, None
    if server is not None:
        server.stop()


def hub_on_postgresql() -> bool:
    """True when this run's test hubs use PostgreSQL (``BINDERBOX_TEST_HUB_DB``)."""
    value = os.environ.get(HUB_DB_ENV, "sqlite").strip().lower()
    if value not in ("sqlite", "postgresql", ""):
        raise RuntimeError(f"{HUB_DB_ENV} must be sqlite or postgresql, not {value!r}")
    return value == "postgresql"


def database_name(data_dir: Path) -> str:
    """The shared server's database for a hub's data directory."""
    return "hub_" + hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:20]


def hub_db_url(data_dir: Path, password: str | None = "", postgresql: bool | None = None) -> str:
    """The database URL for a test hub of ``data_dir``: '' (SQLite) unless
    ``postgresql`` (default: this run's hubs use PostgreSQL); then its database on the
    shared server (made if new), with the password as :meth:`PgServer.url` takes it."""
    if not (hub_on_postgresql() if postgresql is None else postgresql):
        return ""
    server = shared()
    return server.url(server.create_database(database_name(data_dir)), password)
