"""The litejobs pytest plugin, loaded from its entry point in a fresh pytest
process: opt-in profiles, the slow marker, fixtures and options."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]

SAMPLE = """
import pytest
from hypothesis import settings

@pytest.mark.litejobs_slow
def test_slow():
    pass

def test_fixtures(litejobs_db, litejobs_clock):
    before = litejobs_clock.now_ms()
    litejobs_clock.advance(1.5)
    assert litejobs_clock.now_ms() == before + 1500
    assert litejobs_db.path.endswith("litejobs.db")

def test_profile():
    print("max_examples", settings.default.max_examples)
    print("derandomize", settings.default.derandomize)
    print("database", type(settings.default.database).__name__)
"""


@pytest.fixture
def sample(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    for key in ("CI", "LITEJOBS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    pytester.makepyfile(test_sample=SAMPLE)
    pytester.makeini("[pytest]\nlitejobs_profiles = true\n")
    return pytester


def test_the_ci_profile_leaves_slow_properties_out(sample, monkeypatch):
    monkeypatch.setenv("LITEJOBS_PROFILE", "ci")
    result = sample.runpytest_subprocess("-s")
    result.assert_outcomes(passed=2, deselected=1)
    result.stdout.fnmatch_lines(["litejobs: Hypothesis profile ci", "*max_examples 100*"])


def test_the_dev_profile_is_quick_and_the_fixtures_work(sample):
    result = sample.runpytest_subprocess("-s")
    result.assert_outcomes(passed=2, deselected=1)
    result.stdout.fnmatch_lines(["litejobs: Hypothesis profile dev", "*max_examples 50*"])


@pytest.mark.parametrize("option", ["--hypothesis-profile=nightly", "--litejobs-slow"])
def test_nightly_or_the_option_runs_slow_properties(sample, option):
    result = sample.runpytest_subprocess("-s", option)
    result.assert_outcomes(passed=3)


def test_the_hypothesis_profile_option_wins(sample):
    result = sample.runpytest_subprocess("-s", "--hypothesis-profile=nightly")
    result.stdout.fnmatch_lines(["*max_examples 20000*"])


def test_without_opting_in_the_plugin_leaves_hypothesis_alone(pytester, monkeypatch):
    for key in ("CI", "LITEJOBS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    pytester.makepyfile(test_sample=SAMPLE)
    result = pytester.runpytest_subprocess("-s")
    result.assert_outcomes(passed=2, deselected=1)
    result.stdout.no_fnmatch_line("litejobs: Hypothesis profile*")
    result.stdout.fnmatch_lines(["*max_examples 100*"])  # Hypothesis's own default


def test_an_unknown_mutant_is_a_usage_error(sample):
    result = sample.runpytest_subprocess("--litejobs-mutant", "nope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*no mutant 'nope'; known: double_receive*"])


def test_an_unreachable_shared_database_is_a_usage_error_without_its_password(sample):
    result = sample.runpytest_subprocess("--litejobs-db", "redis://:s3cret@127.0.0.1:1/0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--litejobs-db: cannot reach the example database*"])
    assert "s3cret" not in result.stderr.str() + result.stdout.str()


def test_a_shared_database_replays_even_under_ci_and_shows_in_the_header(
    sample, monkeypatch, tmp_path
):
    monkeypatch.setenv("LITEJOBS_PROFILE", "ci")
    shared = tmp_path / "shared"
    result = sample.runpytest_subprocess(
        "-s", "--litejobs-mutant", "double_receive", "--litejobs-db", str(shared)
    )
    result.assert_outcomes(passed=2, deselected=1)
    result.stdout.fnmatch_lines(
        [
            f"litejobs: replaying from {shared} (read-only)",
            "litejobs: mutant double_receive*",
            "*derandomize False*",
            "*database MultiplexedDatabase*",
        ]
    )
