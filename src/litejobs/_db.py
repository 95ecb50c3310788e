"""The database file: opening it safely, one connection per thread, and write
transactions wrapped in the retry policy.

Rules this module enforces (they come from measurements, see docs/design.md):
every write is ``BEGIN IMMEDIATE`` or one autocommit statement, every
connection sets its own busy timeout, cursors are always fully consumed, and no
raw ``apsw`` exception reaches a caller.
"""

from __future__ import annotations

import contextlib
import os
import random
import reprlib
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from importlib import resources
from typing import Any, Literal, TypeVar

import apsw

from litejobs._clock import Clock, SystemClock
from litejobs._errors import (
    BusyError,
    ConfigError,
    InvalidPayloadError,
    LiteJobsError,
    SchemaError,
    StorageError,
)
from litejobs._payload import MAX_PAYLOAD_BYTES
from litejobs._retry import RetryCounter, RetryMetrics, RetryPolicy

T = TypeVar("T")

#: Marks a file as ours in the SQLite header ("LJob" in ASCII).
APPLICATION_ID = 0x4C4A6F62
#: Bumped whenever schema.sql changes; a file with a larger number is refused.
SCHEMA_VERSION = 1

Synchronous = Literal["OFF", "NORMAL", "FULL", "EXTRA"]
_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")

_STORAGE_ERRORS = (
    apsw.CantOpenError,
    apsw.ReadOnlyError,
    apsw.PermissionsError,
    apsw.IOError,
    apsw.FullError,
    apsw.CorruptError,
)


def rows(conn: apsw.Connection, sql: str, params: Sequence[Any] | dict[str, Any] = ()) -> list:
    """Run one statement and consume its cursor completely.

    A cursor left half-read keeps a read transaction open, which silently turns
    the connection's next ``BEGIN IMMEDIATE`` into a savepoint.
    """
    return conn.execute(sql, params).fetchall()


def translate(exc: apsw.Error, path: str) -> LiteJobsError:
    """Map an apsw exception to the litejobs error a caller should see."""
    if isinstance(exc, apsw.BusyError):
        return BusyError(f"database {path} is locked: {exc}", attempts=1)
    if isinstance(exc, apsw.NotADBError):
        return SchemaError(f"{path} is not a litejobs database (not an SQLite file)")
    if isinstance(exc, _STORAGE_ERRORS):
        return StorageError(f"cannot use database {path}: {exc}")
    return LiteJobsError(f"unexpected SQLite error on {path}: {type(exc).__name__}: {exc}")


def for_caller(exc: BaseException, path: str) -> BaseException:
    """What a caller sees for ``exc``, raised while a statement ran: the
    litejobs error for an apsw one, or for text apsw could not bind or read;
    anything else (a litejobs error, an interrupt) as it is."""
    if isinstance(exc, apsw.Error):
        return translate(exc, path)
    if isinstance(exc, UnicodeEncodeError):  # a lone surrogate in a name, kind or key
        return ConfigError(
            f"text passed to litejobs must be valid Unicode: {exc.reason} at character "
            f"{exc.start} of {reprlib.repr(exc.object)}; nothing was written"
        )
    if isinstance(exc, UnicodeDecodeError):  # every TEXT read should be CAST AS BLOB
        return InvalidPayloadError(
            f"database {path} holds text that is not valid UTF-8 (byte {exc.start}); "
            "something other than litejobs wrote it"
        )
    return exc


def _close(conn: apsw.Connection) -> apsw.Error | None:
    """Close ``conn`` and return the error closing it raised, if any.

    The last connection to close checkpoints the log into the database file.
    SQLite closes the connection and ignores a checkpoint that fails (what
    was committed stays in the log, and the next open replays it), but apsw
    re-raises an error that a Python VFS raised meanwhile, after closing.
    """
    try:
        conn.close()
    except apsw.Error as exc:
        return exc
    return None


def _nothing(conn: apsw.Connection) -> None:
    """An operation that only makes sure the connection is set up."""


def _create_private(path: str) -> None:
    """Create a missing database file readable by its owner only (SQLite gives
    the -wal and -shm files the same mode)."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except FileExistsError:
        pass
    except OSError as exc:
        raise StorageError(f"cannot create database {path}: {exc.strerror}") from None


def _transaction(conn: apsw.Connection, begin: str, fn: Callable[[apsw.Connection], T]) -> T:
    """Run ``fn`` between ``begin`` and COMMIT; roll back on any exception,
    including one that interrupts BEGIN or COMMIT themselves."""
    try:
        conn.execute(begin)
        result = fn(conn)
        conn.execute("COMMIT")
    except BaseException:
        if not conn.get_autocommit():
            conn.execute("ROLLBACK")
        raise
    return result


def _use_wal(conn: apsw.Connection) -> None:
    if rows(conn, "PRAGMA journal_mode")[0][0] != "wal":
        rows(conn, "PRAGMA journal_mode=WAL")


class _Slot:
    """A thread's connection, and what :class:`Database` knows about it."""

    __slots__ = ("__weakref__", "calls", "conn", "ready")

    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn
        #: Whether the connection is set up (:meth:`Database._set_up`).
        self.ready = False
        #: Calls running on it now: :meth:`Database.close` leaves such a
        #: connection for its thread to close.
        self.calls = 0


class _Owner:
    """Holds a thread's slot in the thread's locals; it is collected when the
    thread ends, and that closes the connection. (Not the slot itself: a
    traceback kept after the thread ended may still hold the slot.)"""

    __slots__ = ("__weakref__", "slot")

    def __init__(self, slot: _Slot) -> None:
        self.slot = slot


class BusyAttempt(Exception):
    """One attempt met ``SQLITE_BUSY`` under :meth:`Database.attempt_once`."""


class Database:
    """One litejobs database file, shared by any number of threads.

    Open it with :meth:`Database.open`; every thread that uses it gets its own
    apsw connection on first use.
    """

    def __init__(
        self,
        path: str,
        *,
        clock: Clock,
        retry: RetryPolicy,
        busy_timeout: float,
        synchronous: Synchronous,
        rng: random.Random,
        vfs: str | None,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
    ) -> None:
        self.path = path
        #: The largest payload, body or result accepted, in bytes of JSON.
        self.max_payload_bytes = max_payload_bytes
        self.clock = clock
        self.retry = retry
        self.busy_timeout_ms = round(busy_timeout * 1000)
        self.synchronous = synchronous
        self._rng = rng
        self._vfs = vfs
        self._local = threading.local()
        self._lock = threading.Lock()
        self._slots: weakref.WeakSet[_Slot] = weakref.WeakSet()
        self._counter = RetryCounter()
        self._closed = False

    @classmethod
    def open(
        cls,
        path: str | os.PathLike[str],
        *,
        clock: Clock | None = None,
        retry: RetryPolicy | None = None,
        busy_timeout: float = 5.0,
        synchronous: Synchronous = "NORMAL",
        seed: int | None = None,
        vfs: str | None = None,
        max_payload_bytes: int = MAX_PAYLOAD_BYTES,
    ) -> Database:
        """Open (creating if needed) the litejobs database at ``path``.

        Args:
            clock: time source and retry sleeper; the wall clock by default.
            retry: policy around every transaction; 5 attempts from 100 ms, x2.
            busy_timeout: seconds each connection waits on a lock inside SQLite
                before the retry policy sees ``SQLITE_BUSY``.
            synchronous: the ``PRAGMA synchronous`` level of every connection.
            seed: seeds the retry jitter, for reproducible runs.
            vfs: name of a registered SQLite VFS to open the file through.
            max_payload_bytes: the largest payload, message body or result
                accepted, in bytes of JSON (1 MiB by default); larger ones
                raise InvalidPayloadError and write nothing.

        Raises:
            SchemaError: the file is not a litejobs database, or is newer.
            StorageError: the file or its directory cannot be read or written.
            ConfigError: a setting is out of range.
        """
        path = os.fspath(path)
        if path in ("", ":memory:") or path.startswith("file:"):
            raise ConfigError(
                f"litejobs needs a database file path, got {path!r}: in-memory and URI "
                "databases are private to one connection, and litejobs uses one per thread"
            )
        if synchronous not in _SYNCHRONOUS:
            raise ConfigError(f"synchronous must be one of {_SYNCHRONOUS}, got {synchronous!r}")
        if not isinstance(busy_timeout, int | float) or not 0 <= busy_timeout < 86_400:
            raise ConfigError(
                f"busy_timeout must be between 0 and 86400 seconds, got {busy_timeout!r}"
            )
        if (
            isinstance(max_payload_bytes, bool)
            or not isinstance(max_payload_bytes, int)
            or max_payload_bytes < 64
        ):
            raise ConfigError(f"max_payload_bytes must be an int >= 64, got {max_payload_bytes!r}")
        directory = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(directory):
            raise StorageError(
                f"cannot create database {path}: directory {directory} does not exist"
            )
        if vfs is None:
            _create_private(path)
        db = cls(
            path,
            clock=clock or SystemClock(),
            retry=retry or RetryPolicy(),
            busy_timeout=busy_timeout,
            synchronous=synchronous,
            rng=random.Random(seed),
            vfs=vfs,
            max_payload_bytes=max_payload_bytes,
        )
        try:
            db._prepare_file()
        except BaseException:
            with contextlib.suppress(StorageError):  # the first error is the one to report
                db.close()
            raise
        return db

    # -- connections -------------------------------------------------------

    def connection(self) -> apsw.Connection:
        """Return this thread's connection, opening and setting it up on first use.

        The connection is closed when its thread ends (trio retires idle
        worker threads), so connections never outnumber live threads.

        Raises:
            StorageError: the database is closed, or the file cannot be opened.
            BusyError, SchemaError: as for any call, setting a new connection
                up stayed locked, or found a newer schema.
        """
        slot = self._slot()
        if not slot.ready:
            self._with_retry(_nothing)  # sets it up under the retry policy
        return slot.conn

    def _slot(self, calls: int = 0) -> _Slot:
        """This thread's slot, its connection open but maybe not yet set up,
        with ``calls`` more calls counted on it."""
        owner = getattr(self._local, "owner", None)
        new = owner is None and not self._closed
        if new:
            owner = self._local.owner = _Owner(_Slot(self._open()))
            weakref.finalize(owner, _close, owner.slot.conn)
        # Under the lock, close() sees this call or this call sees close().
        with self._lock:
            if not self._closed and owner is not None:
                if new:
                    self._slots.add(owner.slot)
                owner.slot.calls += calls
                return owner.slot
        if new and owner is not None:  # close() came while it opened
            self._drop(owner.slot)
        raise StorageError(f"database {self.path} is closed")

    def _leave(self, slot: _Slot) -> None:
        """End a call on ``slot``. Close its connection if close() came
        meanwhile, or if it was never set up (a first call that fails leaves
        no connection open)."""
        with self._lock:  # as in _slot
            slot.calls -= 1
            drop = not slot.calls and (self._closed or not slot.ready)
        if drop:
            self._drop(slot)

    def _drop(self, slot: _Slot) -> None:
        """Close this thread's connection; nobody to tell if closing fails
        (the call's own outcome stands)."""
        with self._lock:
            self._slots.discard(slot)
        del self._local.owner
        _close(slot.conn)

    def _open(self) -> apsw.Connection:
        flags = apsw.SQLITE_OPEN_READWRITE | apsw.SQLITE_OPEN_CREATE
        try:
            conn = apsw.Connection(self.path, flags=flags, vfs=self._vfs)
        except apsw.Error as exc:
            raise translate(exc, self.path) from exc
        conn.set_busy_timeout(self.busy_timeout_ms)
        return conn

    def _set_up(self, conn: apsw.Connection) -> None:
        """Apply the per-connection settings and check the schema version.

        Run inside the first call's attempts, under the retry policy: these
        statements read the file, so they meet ``SQLITE_BUSY`` like any other
        (in WAL mode while another connection recovers the log, or holds the
        file in exclusive locking mode).
        """
        rows(conn, f"PRAGMA synchronous={self.synchronous}")
        rows(conn, "PRAGMA foreign_keys=ON")
        ((version,),) = rows(conn, "PRAGMA user_version")
        if version > SCHEMA_VERSION:
            # A newer litejobs upgraded the file while this one had it open.
            raise SchemaError(
                f"{self.path} now has litejobs schema version {version}, newer than this "
                f"litejobs understands ({SCHEMA_VERSION}): another, newer litejobs upgraded "
                "it; upgrade this one too"
            )

    def close(self) -> None:
        """Close the database. Safe to call twice.

        Every call that starts afterwards, on any thread, raises
        StorageError. A connection idle now is closed now. A connection that
        another thread is using for a call right now is left to that thread:
        its call goes on as usual, and the connection is closed as the call
        returns or raises.

        Raises:
            StorageError: checkpointing the log into the file failed (a disk
                error) as the last idle connection closed. The connections
                are closed all the same, and nothing committed is lost: the
                log keeps it for the next open. (A failed checkpoint by a
                connection its thread closes later is not reported.)
        """
        with self._lock:
            self._closed = True
            idle = [slot for slot in self._slots if not slot.calls]
            for slot in idle:
                self._slots.discard(slot)
        errors = []
        for slot in idle:
            error = _close(slot.conn)
            # ThreadingViolationError: a thread is using the connection outside
            # a litejobs call (through connection()); its end closes it.
            if error is not None and not isinstance(error, apsw.ThreadingViolationError):
                errors.append(error)
        if errors:
            raise StorageError(
                f"closed database {self.path}, but could not checkpoint its write-ahead log: "
                f"{errors[0]}; what was committed stays in {self.path}-wal, and the next "
                "open replays it"
            ) from errors[0]

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- the schema --------------------------------------------------------

    def _prepare_file(self) -> None:
        # One read transaction, so that a schema another process commits
        # meanwhile is seen whole or not at all.
        fresh = self.read(self._check_header)
        self._with_retry(_use_wal)
        # Creating the schema also proves the file writable; an existing
        # database proves it with an empty write transaction.
        self.write(self._create_schema if fresh else lambda conn: None)

    def _check_header(self, conn: apsw.Connection) -> bool:
        """Return whether the file is empty; refuse anything not ours."""
        ((app_id,),) = rows(conn, "PRAGMA application_id")
        ((version,),) = rows(conn, "PRAGMA user_version")
        ((tables,),) = rows(conn, "SELECT count(*) FROM sqlite_schema")
        if app_id == 0 and version == 0 and tables == 0:
            return True
        if app_id != APPLICATION_ID:
            raise SchemaError(
                f"{self.path} is not a litejobs database: it is an SQLite file of another "
                f"application (application_id={app_id}, {tables} schema objects); "
                "refusing to touch it"
            )
        if version > SCHEMA_VERSION:
            raise SchemaError(
                f"{self.path} has litejobs schema version {version}, newer than this "
                f"litejobs understands ({SCHEMA_VERSION}); upgrade litejobs to open it"
            )
        if version < SCHEMA_VERSION:
            raise SchemaError(f"{self.path} has unknown litejobs schema version {version}")
        return False

    def _create_schema(self, conn: apsw.Connection) -> None:
        if self._check_header(conn):  # another process may have won the race
            schema = resources.files("litejobs").joinpath("schema.sql").read_text("utf-8")
            conn.execute(schema).fetchall()
            rows(conn, f"PRAGMA application_id={APPLICATION_ID}")
            rows(conn, f"PRAGMA user_version={SCHEMA_VERSION}")

    # -- transactions ------------------------------------------------------

    def write(self, fn: Callable[[apsw.Connection], T]) -> T:
        """Run ``fn(conn)`` inside ``BEGIN IMMEDIATE ... COMMIT``, retried as a whole.

        A :class:`LiteJobsError` raised by ``fn`` rolls back and propagates
        unchanged, so validation inside a transaction leaves nothing behind.
        """
        return self._with_retry(lambda conn: _transaction(conn, "BEGIN IMMEDIATE", fn))

    def autocommit(self, fn: Callable[[apsw.Connection], T]) -> T:
        """Run ``fn(conn)``, which must be one write statement, retried on busy.

        One statement takes the write lock up front just like ``BEGIN
        IMMEDIATE``, and skipping BEGIN/COMMIT is measurably faster.
        """
        return self._with_retry(fn)

    def read(self, fn: Callable[[apsw.Connection], T]) -> T:
        """Run ``fn(conn)`` in one read transaction, so its queries agree."""
        return self._with_retry(lambda conn: _transaction(conn, "BEGIN", fn))

    def _with_retry(self, op: Callable[[apsw.Connection], T]) -> T:
        """Run ``op(conn)`` on this thread's connection, again after each
        ``SQLITE_BUSY`` until the policy's attempts run out, counting the
        attempts once; every other error leaves as :func:`for_caller` says."""
        slot = self._slot(calls=1)
        try:
            return self._attempts(slot, op)
        finally:
            self._leave(slot)

    def _attempts(self, slot: _Slot, op: Callable[[apsw.Connection], T]) -> T:
        conn = slot.conn
        if not conn.get_autocommit():
            # Only an interrupt between BEGIN returning and our handler
            # running can leave this; it would hold the write lock forever.
            conn.execute("ROLLBACK")
        once = getattr(self._local, "once", False)
        attempt = 1
        delays: Iterator[float] | None = None  # made on the first busy attempt only
        while True:
            try:
                if not slot.ready:
                    self._set_up(conn)
                    slot.ready = True
                result = op(conn)
            except apsw.BusyError:
                if once:
                    raise BusyAttempt from None
                if delays is None:
                    delays = self.retry_delays()
                delay = next(delays, None)
                if delay is None:
                    raise self.gave_up(attempt) from None
                self.clock.sleep(delay)
                attempt += 1
                continue
            except BaseException as exc:
                if not once:
                    self._counter.record(attempt)
                error = for_caller(exc, self.path)
                if error is exc:
                    raise
                raise error from exc
            if not once:
                self._counter.record(attempt)
            return result

    # -- retries driven from outside (see litejobs._runtime.run_db) ------------

    def attempt_once(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)``, a litejobs call, with no retry inside it.

        ``SQLITE_BUSY`` rolls back and raises :class:`BusyAttempt`, so that an
        async caller can wait through its runtime (cancellable, and virtual
        under test) and call again. Every public litejobs call commits at most
        one transaction before it returns or raises, so calling it again after
        :class:`BusyAttempt` is safe. The caller records the attempts.
        """
        self._local.once = True
        try:
            return fn(*args)
        finally:
            self._local.once = False

    def retry_delays(self) -> Iterator[float]:
        """The waits before each further attempt, from this database's policy."""
        return self.retry.delays(self._rng)

    def record_attempts(self, attempts: int) -> None:
        """Count one operation that succeeded, or failed for a reason other
        than the lock, after ``attempts`` attempts."""
        self._counter.record(attempts)

    def gave_up(self, attempts: int) -> BusyError:
        """Count an operation that ran out of attempts, and make its error."""
        self._counter.record(attempts, gave_up=True)
        return BusyError(
            f"database {self.path} stayed locked through {attempts} attempts; another "
            "connection holds the write lock too long (raise RetryPolicy.attempts or "
            "busy_timeout)",
            attempts=attempts,
        )

    @property
    def retry_metrics(self) -> RetryMetrics:
        """What the retry policy has done since the database was opened."""
        return self._counter.snapshot()
