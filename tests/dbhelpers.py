"""Helpers for asserting what a call did, or did not do, to the database."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import apsw

import litejobs
from litejobs._db import rows


def snapshot(db: litejobs.Database) -> dict[str, list]:
    """Every row litejobs keeps, for asserting that a refused call changed nothing."""
    conn = db.connection()
    return {
        table: rows(conn, f"SELECT {_as_stored(conn, table)} FROM {table} ORDER BY {order}")
        for table, order in [("messages", "id"), ("jobs", "id"), ("sqlite_sequence", "name")]
    }


def _as_stored(conn, table: str) -> str:
    """Every column, text as its bytes: a row written from outside may hold
    text that is not UTF-8, which apsw cannot decode."""
    names = [name for _, name, *_ in rows(conn, f"PRAGMA table_info({table})")]
    return ", ".join(f"CAST({name} AS BLOB)" for name in names)


def open_connections(path: Path) -> int:
    """How many apsw connections to ``path`` this process has open."""
    return [conn.filename for conn in apsw.connections()].count(str(path))


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
