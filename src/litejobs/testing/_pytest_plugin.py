"""The litejobs pytest plugin (entry point ``pytest11``), active wherever
litejobs is installed.

It registers the project's Hypothesis profiles and loads one explicitly;
points the example database at a shared one (``--litejobs-db``) so that
failures found by ``litejobs fuzz`` or the nightly replay here; applies a
seeded bug for a session (``--litejobs-mutant``); gives fixtures for a
database file on a virtual clock; and defines the ``litejobs_slow`` marker,
whose properties the ``ci`` profile leaves out.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from hypothesis import settings

from litejobs._clock import VirtualClock
from litejobs._db import Database
from litejobs.testing._profiles import default_profile, register_profiles

#: Where the virtual clock of the fixtures starts: a real epoch time in UTC
#: milliseconds, so that stored times look like the ones production writes.
CLOCK_START_MS = 1_700_000_000_000

_mutant_stack = pytest.StashKey[ExitStack]()
_profile_key = pytest.StashKey[str]()


def pytest_addoption(parser: pytest.Parser) -> None:
    register_profiles()  # before Hypothesis's plugin loads --hypothesis-profile
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


@pytest.hookimpl(tryfirst=True)  # so Hypothesis's own options apply on top
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "litejobs_slow: a long property, run by the dev and nightly profiles, not ci"
    )
    profile = config.getoption("hypothesis_profile", None)
    if profile is None:
        profile = default_profile()
        settings.load_profile(profile)
    config.stash[_profile_key] = profile
    name = config.getoption("litejobs_mutant")
    if name:
        from litejobs.testing._mutants import MUTANTS, mutant

        if name not in MUTANTS:
            raise pytest.UsageError(
                f"--litejobs-mutant: no mutant {name!r}; known: {', '.join(MUTANTS)}"
            )
        stack = ExitStack()
        stack.enter_context(mutant(name))
        config.stash[_mutant_stack] = stack


def pytest_sessionstart(session: pytest.Session) -> None:
    shared = session.config.getoption("litejobs_db")
    if shared:
        from litejobs.fuzz._databases import default_database, shared_database

        # On top of whatever profile and options are in force. Replaying needs
        # a database, and a derandomized profile has none.
        name = f"{settings.get_current_profile_name()}+shared"
        settings.register_profile(
            name, database=shared_database(default_database(), shared), derandomize=False
        )
        settings.load_profile(name)


def pytest_unconfigure(config: pytest.Config) -> None:
    stack = config.stash.get(_mutant_stack, None)
    if stack is not None:
        stack.close()


def pytest_report_header(config: pytest.Config) -> list[str]:
    lines = [f"litejobs: Hypothesis profile {config.stash.get(_profile_key, '?')}"]
    if config.getoption("litejobs_db"):
        from litejobs.fuzz._databases import redact

        shared = redact(config.getoption("litejobs_db"))
        lines.append(f"litejobs: replaying from {shared} (read-only)")
    if config.getoption("litejobs_mutant"):
        lines.append(f"litejobs: mutant {config.getoption('litejobs_mutant')} applied")
    return lines


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.stash.get(_profile_key, None) != "ci":
        return
    slow = [item for item in items if item.get_closest_marker("litejobs_slow")]
    if slow:
        config.hook.pytest_deselected(items=slow)
        items[:] = [item for item in items if not item.get_closest_marker("litejobs_slow")]


@pytest.fixture
def litejobs_clock() -> VirtualClock:
    """A virtual clock; it moves only when the test advances it."""
    return VirtualClock(now=CLOCK_START_MS)


@pytest.fixture
def litejobs_db(tmp_path: Path, litejobs_clock: VirtualClock) -> Iterator[Database]:
    """A fresh database file in ``tmp_path`` on :func:`litejobs_clock`."""
    with Database.open(tmp_path / "litejobs.db", clock=litejobs_clock, seed=0) as database:
        yield database
