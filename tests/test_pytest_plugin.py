"""The litejobs pytest plugin, loaded from its entry point in a fresh pytest
process: profiles, the slow marker, fixtures and its options."""

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
"""


@pytest.fixture
def sample(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    for key in ("CI", "LITEJOBS_PROFILE"):
        monkeypatch.delenv(key, raising=False)
    pytester.makepyfile(test_sample=SAMPLE)
    return pytester


def test_the_ci_profile_leaves_slow_properties_out(sample, monkeypatch):
    monkeypatch.setenv("LITEJOBS_PROFILE", "ci")
    result = sample.runpytest_subprocess("-s")
    result.assert_outcomes(passed=2, deselected=1)
    result.stdout.fnmatch_lines(["litejobs: Hypothesis profile ci", "*max_examples 100*"])


def test_the_dev_profile_runs_them_and_the_fixtures_work(sample):
    result = sample.runpytest_subprocess("-s")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["litejobs: Hypothesis profile dev", "*max_examples 50*"])


def test_hypothesis_profile_option_wins(sample):
    result = sample.runpytest_subprocess("-s", "--hypothesis-profile=nightly")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*max_examples 20000*"])


def test_an_unknown_mutant_is_a_usage_error(sample):
    result = sample.runpytest_subprocess("--litejobs-mutant", "nope")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*no mutant 'nope'; known: double_receive*"])


def test_a_mutant_and_a_shared_database_show_in_the_header(sample, tmp_path):
    shared = tmp_path / "shared"
    result = sample.runpytest_subprocess(
        "--litejobs-mutant", "double_receive", "--litejobs-db", str(shared)
    )
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(
        [f"litejobs: replaying from {shared} (read-only)", "litejobs: mutant double_receive*"]
    )
