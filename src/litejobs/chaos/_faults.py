"""Disk faults on demand: an SQLite VFS that passes every call through to the
default VFS, except the one I/O it is told to fail.

SQLite keeps a litejobs database in two files, the main database and its
write-ahead log (``-wal``); the shared-memory index (``-shm``) is rebuilt from
the log on recovery, and statement journals and sort files are temporary.
So only reads, writes and syncs of the main database and the log are counted
and can fail; every other file is opened straight on the default VFS::

    with FaultyVFS() as vfs:
        db = litejobs.Database.open(path, vfs=vfs.name)
        vfs.reset_counts()
        queue.send("x")                      # fault-free: learn the I/O
        writes = vfs.counts().of(FaultKind.WRITE_EIO)
        vfs.arm(Fault(FaultKind.WRITE_EIO, at=writes - 1))
        queue.send("y")                      # its last write fails
        vfs.disarm()                         # -> the FiredFault, or None

Each kind fails the way SQLite's unix VFS reports the same trouble from the
operating system: EIO on read, write or fsync is ``SQLITE_IOERR_READ``,
``_WRITE`` or ``_FSYNC``; ENOSPC is ``SQLITE_FULL`` with nothing written; a
short write puts a prefix of the buffer on disk and then reports
``SQLITE_FULL``, as ``unixWrite`` does for any write that comes up short.
"""

from __future__ import annotations

import enum
import itertools
import os
import threading
from collections.abc import Callable
from typing import Any

import apsw
import attrs

from litejobs._errors import ConfigError
from litejobs._queue import check_int


class FaultKind(enum.Enum):
    """Which I/O fails and how."""

    READ_EIO = "read_eio"
    WRITE_EIO = "write_eio"
    FSYNC_EIO = "fsync_eio"
    ENOSPC = "enospc"
    SHORT_WRITE = "short_write"

    @property
    def method(self) -> str:
        """The ``VFSFile`` method this kind fails: ``xRead``, ``xWrite`` or ``xSync``."""
        return _METHODS[self]

    @property
    def code(self) -> int:
        """The extended SQLite result code the failing call returns."""
        return _CODES[self]


_METHODS = {
    FaultKind.READ_EIO: "xRead",
    FaultKind.WRITE_EIO: "xWrite",
    FaultKind.FSYNC_EIO: "xSync",
    FaultKind.ENOSPC: "xWrite",
    FaultKind.SHORT_WRITE: "xWrite",
}
_CODES = {
    FaultKind.READ_EIO: apsw.SQLITE_IOERR_READ,
    FaultKind.WRITE_EIO: apsw.SQLITE_IOERR_WRITE,
    FaultKind.FSYNC_EIO: apsw.SQLITE_IOERR_FSYNC,
    FaultKind.ENOSPC: apsw.SQLITE_FULL,
    FaultKind.SHORT_WRITE: apsw.SQLITE_FULL,
}
_WHY = {
    FaultKind.READ_EIO: "EIO",
    FaultKind.WRITE_EIO: "EIO",
    FaultKind.FSYNC_EIO: "EIO",
    FaultKind.ENOSPC: "ENOSPC",
    FaultKind.SHORT_WRITE: "short write",
}


def _kind(value: FaultKind | str) -> FaultKind:
    try:
        return FaultKind(value)
    except ValueError:
        choices = ", ".join(repr(k.value) for k in FaultKind)
        raise ConfigError(f"fault kind must be one of {choices}, got {value!r}") from None


def _index(instance: object, attribute: attrs.Attribute, value: int | None) -> None:
    if value is not None or attribute.name == "at":
        check_int(value, f"Fault.{attribute.name}", 0)


@attrs.frozen
class Fault:
    """Fail the call numbered ``at`` (from 0, counted from :meth:`FaultyVFS.arm`)
    among the calls of ``kind``'s method on a database or log file.

    ``keep`` matters for :attr:`FaultKind.SHORT_WRITE` only: how many bytes
    reach the file before the write fails (at most all but one; ``None``
    keeps half the buffer).
    """

    kind: FaultKind = attrs.field(converter=_kind)
    at: int = attrs.field(validator=_index)
    keep: int | None = attrs.field(default=None, validator=_index)


@attrs.frozen
class FiredFault:
    """The call a :class:`Fault` failed: which file (its base name), where,
    how many bytes it was asked for, and how many it wrote (short writes)."""

    fault: Fault
    file: str
    offset: int | None
    size: int | None
    written: int = 0

    def __str__(self) -> str:
        kind = self.fault.kind
        where = "" if self.offset is None else f" at offset {self.offset}, {self.size} bytes"
        wrote = f", {self.written} written" if kind is FaultKind.SHORT_WRITE else ""
        return f"{kind.value}: {kind.method} #{self.fault.at} on {self.file}{where}{wrote}"


@attrs.frozen
class IOCounts:
    """How many reads, writes and syncs reached the database and log files."""

    reads: int = 0
    writes: int = 0
    syncs: int = 0

    def of(self, kind: FaultKind) -> int:
        """The count of the calls ``kind`` can fail."""
        return {"xRead": self.reads, "xWrite": self.writes, "xSync": self.syncs}[kind.method]


_names = itertools.count()

# The files whose I/O is counted and can fail (see the module docstring).
_COUNTED = apsw.SQLITE_OPEN_MAIN_DB | apsw.SQLITE_OPEN_WAL


class FaultyVFS(apsw.VFS):
    """An SQLite VFS over the default one that fails one chosen I/O call.

    It registers itself under a unique :attr:`name` (pass it to
    ``Database.open(vfs=...)``) and unregisters on :meth:`close` or at the
    end of a ``with`` block; close the databases opened through it first.
    Counting and arming are guarded by a lock, so connections in several
    threads may share it; the order of their calls is then theirs.

    Args:
        on_fire: called with the :class:`FiredFault` just before the failing
            call returns its error (after a short write's prefix reached the
            file); a kill trial's victim SIGKILLs itself there, so the crash
            lands inside the write or before the sync.
    """

    def __init__(self, on_fire: Callable[[FiredFault], None] | None = None) -> None:
        #: The name the VFS is registered under, unique in this process.
        self.name = f"litejobs-faults-{os.getpid()}-{next(_names)}"
        self._lock = threading.Lock()
        self._counts = {"xRead": 0, "xWrite": 0, "xSync": 0}
        self._armed: Fault | None = None
        self._seen = 0
        self._fired: FiredFault | None = None
        self._on_fire = on_fire
        super().__init__(self.name, "")

    # -- counting and arming -------------------------------------------------

    def counts(self) -> IOCounts:
        """The calls counted since creation or the last :meth:`reset_counts`,
        armed or not (a failed call counts too)."""
        with self._lock:
            c = self._counts
            return IOCounts(reads=c["xRead"], writes=c["xWrite"], syncs=c["xSync"])

    def reset_counts(self) -> None:
        """Start counting from zero."""
        with self._lock:
            self._counts = dict.fromkeys(self._counts, 0)

    def arm(self, fault: Fault) -> None:
        """Fail the ``fault.at``-th call of its kind from now on, once; this
        replaces any fault armed before and forgets the last one fired."""
        if not isinstance(fault, Fault):
            raise ConfigError(f"arm() takes a litejobs.chaos.Fault, got {fault!r}")
        with self._lock:
            self._armed, self._seen, self._fired = fault, 0, None

    def disarm(self) -> FiredFault | None:
        """Stop failing, and return the call that failed, if one did."""
        with self._lock:
            self._armed = None
            return self._fired

    @property
    def armed(self) -> Fault | None:
        """The fault waiting to fire, if any."""
        return self._armed

    @property
    def fired(self) -> FiredFault | None:
        """The call the last armed fault failed, if it fired."""
        return self._fired

    def _io(
        self, method: str, file: str, offset: int | None, size: int | None
    ) -> FiredFault | None:
        """Count one call; say how it fails if it must."""
        with self._lock:
            self._counts[method] += 1
            fault = self._armed
            if fault is None or fault.kind.method != method:
                return None
            index, self._seen = self._seen, self._seen + 1
            if index != fault.at:
                return None
            self._armed = None
            written = 0
            if fault.kind is FaultKind.SHORT_WRITE and size:
                written = size // 2 if fault.keep is None else min(fault.keep, size - 1)
            self._fired = FiredFault(fault, file, offset, size, written)
            return self._fired

    def _fail(self, fired: FiredFault) -> Exception:
        """The error a fired call returns, after telling ``on_fire``."""
        if self._on_fire is not None:
            self._on_fire(fired)
        return _error(fired.fault)

    # -- the VFS -----------------------------------------------------------

    def xOpen(self, name: str | apsw.URIFilename | None, flags: list[int]) -> apsw.VFSFile:
        if name is not None and flags[0] & _COUNTED:
            return _FaultyFile(self, name, flags)
        return apsw.VFSFile("", name, flags)

    def close(self) -> None:
        """Unregister the VFS; databases opened through it keep working until
        they close. Safe to call twice."""
        self.unregister()

    def __enter__(self) -> FaultyVFS:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class _FaultyFile(apsw.VFSFile):
    """A database or log file that reports each read, write and sync to its
    :class:`FaultyVFS`, and fails the one it is told to."""

    def __init__(self, vfs: FaultyVFS, name: str | apsw.URIFilename, flags: list[int]) -> None:
        super().__init__("", name, flags)
        path = name.filename() if isinstance(name, apsw.URIFilename) else name
        self._vfs = vfs
        self._file = os.path.basename(path)

    def xRead(self, amount: int, offset: int) -> bytes:
        fired = self._vfs._io("xRead", self._file, offset, amount)
        if fired is not None:
            raise self._vfs._fail(fired)
        return super().xRead(amount, offset)

    def xWrite(self, data: Any, offset: int) -> None:
        fired = self._vfs._io("xWrite", self._file, offset, len(data))
        if fired is None:
            return super().xWrite(data, offset)
        if fired.written:
            super().xWrite(bytes(memoryview(data)[: fired.written]), offset)
        raise self._vfs._fail(fired)

    def xSync(self, flags: int) -> None:
        fired = self._vfs._io("xSync", self._file, None, None)
        if fired is not None:
            raise self._vfs._fail(fired)
        return super().xSync(flags)


def _error(fault: Fault) -> Exception:
    """The apsw exception whose extended code SQLite sees, with a message that
    says the fault was injected."""
    exc = apsw.exception_for(fault.kind.code)
    exc.args = (f"injected {_WHY[fault.kind]} on {fault.kind.method} #{fault.at}",)
    return exc
