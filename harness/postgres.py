"""A throwaway PostgreSQL server for tests and benches: `initdb` into a temp directory, started
with `pg_ctl` on a unix socket in that directory (no TCP port to collide on), stopped and
deleted at the end. The server binaries refuse to run as root, so as root they run as the
`postgres` user, who is given the directory.

    server = PostgresServer.start()          # raises PostgresUnavailable without binaries
    url = server.url(await server.create_database())  # a fresh empty database
    server.stop()
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import asyncpg

# Where Debian's `postgresql` package puts a version's binaries; PATH is tried first.
_DEBIAN_BIN_DIRS = tuple(Path(f"/usr/lib/postgresql/{v}/bin") for v in (17, 16, 15, 14))
SUPERUSER = "postgres"
# For tests only: no durability, so a database per test costs milliseconds, not an fsync storm.
FAST_SETTINGS = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}
# ...and in memory when the machine has a tmpfs: copying a template database on a disk-backed
# /tmp took ~0.4 s here, on /dev/shm ~0.02 s, and the suite makes one per test.
_MEMORY_DIR = Path("/dev/shm")  # noqa: S108  # mkdtemp makes a private directory in it


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL server can be started here (binaries or the `postgres` user missing)."""


class PostgresFailed(RuntimeError):
    """The binaries are there but a server tool failed: a real error, never a reason to skip."""


def find_bin_dir() -> Path:
    """The directory holding `initdb`, `pg_ctl` and `postgres`."""
    on_path = shutil.which("initdb")
    candidates = [Path(on_path).resolve().parent] if on_path else []
    for directory in [*candidates, *_DEBIAN_BIN_DIRS]:
        if all((directory / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return directory
    raise PostgresUnavailable(
        "PostgreSQL server binaries (initdb, pg_ctl) not found: install Debian's `postgresql`"
    )


def _as_server_user() -> tuple[list[str], str | None]:
    """The command prefix that runs a server binary, and the user that owns its files."""
    if os.geteuid() != 0:
        return [], None
    try:
        pwd.getpwnam(SUPERUSER)
    except KeyError:
        raise PostgresUnavailable(
            f"running as root and there is no {SUPERUSER!r} user to run the server as"
        ) from None
    runuser = shutil.which("runuser")
    if runuser is None:
        raise PostgresUnavailable("running as root and `runuser` is missing")
    return [runuser, "-u", SUPERUSER, "--"], SUPERUSER


@dataclass
class PostgresServer:
    root: Path  # the temp directory: data/, the socket and the log
    bin_dir: Path
    prefix: list[str]
    port: int = 5432  # only names the socket file: the server listens on no TCP port
    _names: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _template: str | None = None

    @classmethod
    def start(cls, *, durable: bool = False) -> PostgresServer:
        """initdb and start a server; `durable=False` turns fsync off and keeps the files in
        memory (tests), True keeps PostgreSQL's defaults on disk (a bench comparing against
        SQLite's synchronous=FULL)."""
        bin_dir = find_bin_dir()
        prefix, owner = _as_server_user()
        in_memory = not durable and _MEMORY_DIR.is_dir() and os.access(_MEMORY_DIR, os.W_OK)
        # A short path: a unix socket's path must fit in ~107 bytes.
        root = Path(tempfile.mkdtemp(prefix="veo-pg-", dir=_MEMORY_DIR if in_memory else None))
        if owner is not None:
            shutil.chown(root, user=owner)
        server = cls(root, bin_dir, prefix)
        try:
            server._run(
                "initdb", "-D", str(server.data), "-U", SUPERUSER, "--auth=trust",
                "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync",
            )  # fmt: skip
            options = {
                "listen_addresses": "''",
                "unix_socket_directories": f"'{root}'",
                "port": str(server.port),
                "max_connections": "200",
                **({} if durable else FAST_SETTINGS),
            }
            server._run(
                "pg_ctl", "-D", str(server.data), "-l", str(root / "server.log"), "-w",
                "-t", "60", "-o", " ".join(f"-c {k}={v}" for k, v in options.items()), "start",
            )  # fmt: skip
        except BaseException:
            server.stop()
            raise
        return server

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        """A libpq URL for `database` over the socket (asyncpg reads `host` as a directory)."""
        socket_dir = quote(str(self.root), safe="")
        return f"postgresql://{SUPERUSER}@/{database}?host={socket_dir}&port={self.port}"

    def _run(self, tool: str, *args: str) -> None:
        done = subprocess.run(  # noqa: S603  # our own arguments, no shell
            [*self.prefix, str(self.bin_dir / tool), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if done.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise PostgresFailed(
                f"{tool} failed ({done.returncode}): {done.stderr.strip()}\n{tail}".strip()
            )

    async def create_database(self, template: str | None = None) -> str:
        """A new database (empty, or a copy of `template`); returns its name (see `url`)."""
        name = f"veo_{next(self._names)}"
        conn = await asyncpg.connect(self.url())
        try:
            # Identifiers cannot be parameters; both names are made here, not by a caller.
            copy = f" TEMPLATE {template} STRATEGY FILE_COPY" if template else ""
            await conn.execute(f"CREATE DATABASE {name}{copy}")
        finally:
            await conn.close()
        return name

    async def migrated_database(self) -> str:
        """A new database holding the bot's schema, returned as its URL. Copied from a template
        migrated once (a copy takes a fraction of what running the migrations does)."""
        if self._template is None:
            from bot.store.postgres import PostgresStore  # the real migrations, nothing else

            template = await self.create_database()
            await (await PostgresStore.open(self.url(template), min_size=1, max_size=1)).close()
            self._template = template
        return self.url(await self.create_database(template=self._template))

    def stop(self) -> None:
        """Stop the server at once (nothing in it is worth a clean shutdown) and delete it."""
        try:
            if (self.data / "postmaster.pid").exists():
                self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
