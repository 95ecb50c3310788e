"""The litejobs exception hierarchy.

Every error a public call raises derives from :class:`LiteJobsError`; no raw
``apsw`` exception escapes. Errors that mean "you passed a bad argument" also
derive from the matching built-in (``ValueError``, ``LookupError``) so that
generic handlers keep working.
"""

from __future__ import annotations


class LiteJobsError(Exception):
    """Base class of every error litejobs raises."""


class ConfigError(LiteJobsError, ValueError):
    """Raised for an invalid argument or setting: a negative or NaN timeout, an
    unknown tolerance action, a non-positive batch size, a queue name, kind or
    key that is not valid Unicode (a lone surrogate)."""


class InvalidPayloadError(LiteJobsError, ValueError):
    """Raised when a body, payload or result is not JSON-serialisable, or when
    something read back from the file is not what litejobs writes (JSON that
    does not parse, or text in any column that is not UTF-8, named with its
    row). Nothing is written."""


class NotFoundError(LiteJobsError, LookupError):
    """Raised when a job or parent id names no row in the database."""


class StaleReceiptError(LiteJobsError):
    """Raised when a receipt no longer holds its message: the message was
    received again, dead-lettered, redriven or deleted. Nothing is changed."""


class InvalidTransitionError(LiteJobsError):
    """Raised for a job status change the lifecycle forbids, such as leaving a
    terminal state or completing a job that was never started."""


class BusyError(LiteJobsError):
    """Raised when the database stayed locked through every attempt of the
    retry policy. The transaction was rolled back; nothing was written."""

    def __init__(self, message: str, *, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


class SchemaError(LiteJobsError):
    """Raised when a file is not a litejobs database, or was written by a newer
    litejobs whose schema this version does not know."""


class StorageError(LiteJobsError):
    """Raised when the database file cannot be opened or written: a missing or
    read-only directory, a read-only file, a full disk, an I/O error or a
    corrupt file."""
