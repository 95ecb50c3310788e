"""Example databases by address: a directory here, Redis for a fleet, and a
local one that reads a shared one without writing to it.

These are Hypothesis's own databases; ``litejobs fuzz`` writes its failures
to them and ``pytest`` replays from them, so they are the only state the two
share.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from hypothesis.configuration import storage_directory
from hypothesis.database import (
    DirectoryBasedExampleDatabase,
    ExampleDatabase,
    MultiplexedDatabase,
    ReadOnlyDatabase,
)

from litejobs._errors import ConfigError


def default_database() -> str:
    """The directory ``pytest`` uses by default, so a plain run replays."""
    return str(storage_directory("examples", intent_to_write=False).path)


def open_database(address: str) -> ExampleDatabase:
    """``redis://host:port/db`` (or ``rediss://``, ``unix://``) or a directory.

    Raises :class:`ConfigError` when Redis cannot be reached or the redis
    package is missing, rather than failing in the middle of a run."""
    if address.startswith(("redis://", "rediss://", "unix://")):
        return _redis(address)
    path = Path(address)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"example database {address!r} is a file, not a directory")
    return DirectoryBasedExampleDatabase(path)


def shared_database(local: str, shared: str) -> ExampleDatabase:
    """Save to ``local``; read ``local`` and ``shared``. This is how a laptop
    replays the nightly's failures without writing its own into the fleet's
    database."""
    return MultiplexedDatabase(open_database(local), ReadOnlyDatabase(open_database(shared)))


def _redis(address: str) -> ExampleDatabase:
    try:
        import redis
        from hypothesis.extra.redis import RedisExampleDatabase
    except ImportError as exc:
        raise ConfigError(
            f"{address} needs the redis package ({exc.name} is missing): "
            "python3 -m pip install 'litejobs[fuzz]'"
        ) from None
    client = redis.Redis.from_url(address)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ConfigError(f"cannot reach the example database {address}: {exc}") from None
    return RedisExampleDatabase(client)


def redact(address: str) -> str:
    """``address`` with any password replaced, for reports and logs."""
    parts = urlsplit(address)
    if not parts.password:
        return address
    host = parts.hostname or ""
    netloc = f"{parts.username or ''}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))
