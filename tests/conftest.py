"""Fixtures shared by the unit tests: a real database file on a virtual clock."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

import litejobs


@pytest.fixture
def clock(litejobs_clock: litejobs.VirtualClock) -> litejobs.VirtualClock:
    return litejobs_clock


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
