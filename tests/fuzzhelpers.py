"""Running ``litejobs fuzz`` and ``pytest`` as a user would, in a scratch
directory whose ``.hypothesis`` is the default example database."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
from pathlib import Path

PROPERTIES = Path(__file__).resolve().parent.parent / "properties"


def env(**extra: str) -> dict[str, str]:
    """The environment of a developer's shell: the dev profile, whatever CI says."""
    environ = {k: v for k, v in os.environ.items() if k not in ("CI", "LITEJOBS_PROFILE")}
    return {**environ, "LITEJOBS_PROFILE": "dev", **extra}


def fuzz(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "litejobs", "fuzz", *args],
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )


def pytest_replay(cwd: Path, module: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Plain pytest on one property module, with Hypothesis's statistics."""
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(PROPERTIES / module),
            "-p",
            "no:cacheprovider",
            "--hypothesis-show-statistics",
            *args,
        ],
        cwd=cwd,
        env=env(),
        capture_output=True,
        text=True,
        timeout=900,
    )


def reused_failures(output: str) -> int:
    """Failing examples in the reuse phase: the ones replayed from a database.
    Hypothesis's statistics say "N passing examples, M failing examples" in
    older releases and "N passing, M failing, and K invalid test cases" in
    newer ones."""
    match = re.search(
        r"during reuse phase.*?(\d+) passing(?: examples)?, (\d+) failing", output, re.S
    )
    return int(match[2]) if match else 0


def stuck_in_one_input(plan, index, deadline, stop, outbox) -> None:
    """A fuzz process whose current input never ends: only a kill stops it.
    Module-level so that a spawned process can import it."""
    outbox.send(("stats", {}))
    threading.Event().wait()
