"""Where the store lives, as one URL: `sqlite:///path/to/file` or `postgresql://…`.

Kept apart from `bot.store` so the settings can check a URL without loading a database driver
(and without the import cycle settings → store → quota → settings)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

BackendName = Literal["sqlite", "postgresql"]
# The schemes each backend answers to; "postgres://" is libpq's (and Heroku's) alias.
SCHEMES: dict[str, BackendName] = {
    "sqlite": "sqlite",
    "postgresql": "postgresql",
    "postgres": "postgresql",
}
SQLITE_PREFIX = "sqlite:///"


class DatabaseUrlError(ValueError):
    """Not a database URL the bot can open. The text never repeats the URL (a password)."""


def sqlite_url(path: str | Path) -> str:
    """The URL of a SQLite file: `sqlite:///data/veo.sqlite3` (relative) or
    `sqlite:////var/lib/veo.sqlite3` (absolute, four slashes), as SQLAlchemy spells them."""
    return f"{SQLITE_PREFIX}{path}"


def backend_of(url: str) -> BackendName:
    """Which backend serves `url`; `DatabaseUrlError` for anything else."""
    scheme, sep, _ = url.partition("://")
    backend = SCHEMES.get(scheme.lower()) if sep else None
    if backend is None:
        known = ", ".join(f"{s}://" for s in SCHEMES)
        raise DatabaseUrlError(f"must start with one of {known}")
    if backend == "sqlite" and not sqlite_path(url).name:
        raise DatabaseUrlError("a sqlite URL names a file: sqlite:///data/veo.sqlite3")
    return backend


def sqlite_path(url: str) -> Path:
    """The file a `sqlite:///…` URL names (everything after the third slash)."""
    _, _, rest = url.partition("://")
    return Path(rest.removeprefix("/")) if rest.startswith("/") else Path(rest)


def password_of(url: str) -> str | None:
    """The password in `url`, if any: a secret for the log redactor."""
    try:
        return urlsplit(url).password
    except ValueError:
        return None
