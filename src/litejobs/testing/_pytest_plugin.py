"""The litejobs pytest plugin (entry point ``pytest11``), loaded wherever
litejobs is installed, so it changes nothing unless asked.

Always: fixtures for a database file on a virtual clock, and the
``litejobs_slow`` marker, whose tests run only under the ``nightly`` profile
or with ``--litejobs-slow``. When a project opts in (``litejobs_profiles =
true`` in its pytest configuration, or ``LITEJOBS_PROFILE`` set): the
project's Hypothesis profiles, one loaded explicitly. On request:
``--litejobs-db`` replays failures found by ``litejobs fuzz`` from a shared
example database, and ``--litejobs-mutant`` applies a seeded bug.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from litejobs._clock import VirtualClock
from litejobs._db import Database

#: Where the virtual clock of the fixtures starts: a real epoch time in UTC
#: milliseconds, so that stored times look like the ones production writes.
CLOCK_START_MS = 1_700_000_000_000

_mutant_stack = pytest.StashKey[ExitStack]()
_profile_key = pytest.StashKey[str]()
_shared_key = pytest.StashKey[Any]()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        "litejobs_profiles",
        type="bool",
        default=False,
        help="register litejobs' Hypothesis profiles and load one (LITEJOBS_PROFILE, else "
        "ci under CI, else dev)",
    )
    group = parser.getgroup("litejobs")
    group.addoption(
        "--litejobs-db",
        metavar="DIR_OR_REDIS_URL",
        default=None,
        help="a shared Hypothesis example database (a directory or redis://host:port/db) "
        "read beside the local one and never written: failures found by `litejobs fuzz` "
        "replay from it",
    )
    group.addoption(
        "--litejobs-mutant",
        metavar="NAME",
        default=None,
        help="run with a seeded bug from litejobs.testing.MUTANTS applied",
    )
    group.addoption(
        "--litejobs-slow",
        action="store_true",
        help="also run tests marked litejobs_slow (the nightly profile always does)",
    )


@pytest.hookimpl(tryfirst=True)  # before Hypothesis's plugin reads --hypothesis-profile
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "litejobs_slow: a long property; run under nightly or with --litejobs-slow"
    )
    wanted = config.getini("litejobs_profiles") or "LITEJOBS_PROFILE" in os.environ
    shared = config.getoption("litejobs_db")
    mutant_name = config.getoption("litejobs_mutant")
    if not (wanted or shared or mutant_name):
        return
    try:
        from hypothesis import settings

        from litejobs.testing._profiles import default_profile, register_profiles
    except ImportError as exc:
        raise pytest.UsageError(
            f"litejobs' profiles and options need the test extra ({exc.name} is missing): "
            "python3 -m pip install 'litejobs[test]'"
        ) from None
    if wanted:
        register_profiles()
        profile = config.getoption("hypothesis_profile", None)
        if profile is None:
            profile = default_profile()
            settings.load_profile(profile)
        config.stash[_profile_key] = profile
    if shared:
        from litejobs._errors import ConfigError
        from litejobs.fuzz._databases import default_database, shared_database

        try:
            config.stash[_shared_key] = shared_database(default_database(), shared)
        except ConfigError as exc:
            raise pytest.UsageError(f"--litejobs-db: {exc}") from None
    if mutant_name:
        from litejobs.testing._mutants import MUTANTS, mutant

        if mutant_name not in MUTANTS:
            raise pytest.UsageError(
                f"--litejobs-mutant: no mutant {mutant_name!r}; known: {', '.join(MUTANTS)}"
            )
        stack = ExitStack()
        stack.enter_context(mutant(mutant_name))
        config.stash[_mutant_stack] = stack


def pytest_sessionstart(session: pytest.Session) -> None:
    database = session.config.stash.get(_shared_key, None)
    if database is not None:
        from hypothesis import settings

        # On top of whatever profile and options are in force. Replaying needs
        # a database, and a derandomized profile has none.
        name = f"{settings.get_current_profile_name()}+shared"
        settings.register_profile(name, database=database, derandomize=False)
        settings.load_profile(name)


def pytest_unconfigure(config: pytest.Config) -> None:
    stack = config.stash.get(_mutant_stack, None)
    if stack is not None:
        stack.close()


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = []
    if _profile_key in config.stash:
        lines.append(f"litejobs: Hypothesis profile {config.stash[_profile_key]}")
    if config.getoption("litejobs_db"):
        from litejobs.fuzz._databases import redact

        shared = redact(config.getoption("litejobs_db"))
        lines.append(f"litejobs: replaying from {shared} (read-only)")
    if config.getoption("litejobs_mutant"):
        lines.append(f"litejobs: mutant {config.getoption('litejobs_mutant')} applied")
    return lines


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("litejobs_slow") or _current_profile(config) == "nightly":
        return
    slow = [item for item in items if item.get_closest_marker("litejobs_slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("litejobs_slow")]


def _current_profile(config: pytest.Config) -> str | None:
    if _profile_key in config.stash:
        return config.stash[_profile_key]
    return config.getoption("hypothesis_profile", None)


@pytest.fixture
def litejobs_clock() -> VirtualClock:
    """A virtual clock; it moves only when the test advances it."""
    return VirtualClock(now=CLOCK_START_MS)


@pytest.fixture
def litejobs_db(tmp_path: Path, litejobs_clock: VirtualClock) -> Iterator[Database]:
    """A fresh database file in ``tmp_path`` on :func:`litejobs_clock`."""
    with Database.open(tmp_path / "litejobs.db", clock=litejobs_clock, seed=0) as database:
        yield database
