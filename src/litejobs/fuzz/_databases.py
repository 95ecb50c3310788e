"""Example databases by address: a directory here, Redis for a fleet, and a
local one that reads a shared one without writing to it.

These are Hypothesis's own databases; ``litejobs fuzz`` writes its failures
to them and ``pytest`` replays from them, so they are the only state the two
share.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

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
            f"{redact(address)} needs the redis package ({exc.name} is missing): "
            "python3 -m pip install 'litejobs[fuzz]'"
        ) from None
    client = redis.Redis.from_url(address)
    try:
        client.ping()
    except redis.RedisError as exc:
        raise ConfigError(
            f"cannot reach the example database {redact(address)}: {type(exc).__name__}"
        ) from None
    return RedisExampleDatabase(client)


def redact(address: str) -> str:
    """``address`` with any password, in the user part or the query, replaced
    by ``***``, for reports, logs and errors. The user part ends at the last
    ``@``, so a password with an unescaped ``/``, ``#`` or ``?`` is hidden
    too (a ``@`` later in the query hides a little more than it must)."""
    scheme, sep, rest = address.partition("://")
    if not sep:
        return address
    userinfo, at, hostpart = rest.rpartition("@")
    if at and ":" in userinfo:
        rest = f"{userinfo.partition(':')[0]}:***@{hostpart}"
    parts = urlsplit(f"{scheme}://{rest}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if any(key == "password" for key, _ in query):
        hidden = [(key, "***" if key == "password" else value) for key, value in query]
        parts = parts._replace(query=urlencode(hidden, safe="*"))
    return urlunsplit(parts)
