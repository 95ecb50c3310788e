"""Helpers for asserting what a call did, or did not do, to the database."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import litejobs
from litejobs._db import rows


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
