"""Fixtures shared by the unit tests: a real database file on a virtual clock."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import litejobs
from litejobs._db import rows


@pytest.fixture
def clock() -> litejobs.VirtualClock:
    return litejobs.VirtualClock(now=1_700_000_000_000)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "litejobs.db"


@pytest.fixture
def db(db_path: Path, clock: litejobs.VirtualClock) -> Iterator[litejobs.Database]:
    with litejobs.Database.open(db_path, clock=clock, seed=0) as database:
        yield database


@pytest.fixture
def queue(db: litejobs.Database) -> litejobs.Queue:
    return litejobs.Queue(db, "work")


@pytest.fixture
def store(db: litejobs.Database) -> litejobs.JobStore:
    return litejobs.JobStore(db)


def snapshot(db: litejobs.Database) -> dict[str, list]:
    """Every row litejobs keeps, for asserting that a refused call changed nothing."""
    conn = db.connection()
    return {
        "messages": rows(conn, "SELECT * FROM messages ORDER BY id"),
        "jobs": rows(conn, "SELECT * FROM jobs ORDER BY id"),
        "sequence": rows(conn, "SELECT * FROM sqlite_sequence ORDER BY name"),
    }


def file_snapshot(path: Path) -> dict[str, bytes]:
    """The bytes of a database file and its WAL, for files litejobs must not touch."""
    return {p.name: p.read_bytes() for p in path.parent.glob(path.name + "*")}


@pytest.fixture
def read_only_dir(tmp_path: Path) -> Iterator[Path]:
    """A directory the process really cannot write.

    Root ignores permission bits, so as root this mounts a read-only tmpfs
    (and can remount it writable to prepare files inside).
    """
    directory = tmp_path / "read-only"
    directory.mkdir()
    if os.geteuid() != 0:
        directory.chmod(0o555)
        yield directory
        directory.chmod(0o755)
        return
    mount = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "ro,size=8m", "tmpfs", str(directory)],
        capture_output=True,
        text=True,
    )
    if mount.returncode != 0:
        pytest.skip(f"running as root and cannot mount a read-only tmpfs: {mount.stderr.strip()}")
    try:
        yield directory
    finally:
        subprocess.run(["umount", "-l", str(directory)], check=False)


def set_writable(directory: Path, writable: bool) -> None:
    """Flip a :func:`read_only_dir` between writable and read-only."""
    if os.geteuid() != 0:
        directory.chmod(0o755 if writable else 0o555)
        for child in directory.iterdir():
            child.chmod(0o644 if writable else 0o444)
        return
    subprocess.run(
        ["mount", "-o", f"remount,{'rw' if writable else 'ro'}", str(directory)], check=True
    )
