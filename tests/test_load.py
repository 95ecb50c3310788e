"""The load scenario end to end (light sizes only: heavy runs are a benchmark)."""

from __future__ import annotations

import socket

import pytest

import litejobs
from litejobs._load import LoadConfig, run_load

REQUIRED = {
    "jobs_total",
    "throughput_jobs_per_s",
    "p95_completion_s",
    "busy_errors_surfaced",
    "busy_retries",
    "deletion_rate",
    "hierarchy_integrity",
    "parents_terminal",
    "worker_start_offsets_s",
}


def test_the_light_scenario_passes_every_criterion(tmp_path):
    result = run_load(LoadConfig.for_scenario("light"), tmp_path)
    assert result.criteria == {
        "no_busy_errors_surfaced": True,
        "all_messages_deleted": True,
        "hierarchy_intact": True,
        "all_parents_terminal": True,
        "workers_staggered": True,
        "throughput_at_least_10_jobs_per_s": True,
    }
    metrics = result.metrics
    assert metrics["jobs_total"] == metrics["messages_sent"] == 100
    assert metrics["deletion_rate"] == metrics["hierarchy_integrity"] == 1.0
    assert metrics["worker_start_offsets_s"][0] == pytest.approx(0.0, abs=0.05)
    assert metrics["worker_start_offsets_s"][1] == pytest.approx(0.5, abs=0.05)
    assert len(result.completion_times_s) == 100
    assert result.samples[-1].completed == 100
    assert (tmp_path / "load.db").exists()


def test_results_hold_every_metric_the_report_promises(tmp_path):
    result = run_load(LoadConfig.for_scenario("custom", parents=2, children=3, workers=1), tmp_path)
    document = result.as_json()
    assert set(document["criteria"]) >= {"no_busy_errors_surfaced", "all_parents_terminal"}
    for key in REQUIRED:
        assert key in document["metrics"], key


def test_the_crawl_really_fetches_over_loopback_and_deduplicates(tmp_path):
    config = LoadConfig.for_scenario(
        "custom", parents=2, workload="crawl", fan_out=2, depth=2, max_depth=2, workers=2
    )
    result = run_load(config, tmp_path)
    assert result.passed, result.criteria
    # 7 pages per parent, every page fetched exactly once per parent although
    # every page links back to the root and to its parent.
    assert result.metrics["jobs_total"] == 14
    assert result.metrics["http_pages_requested"] == 7
    assert result.metrics["http_requests"] == 14


def test_a_crawl_with_failing_pages_fails_those_jobs_and_still_settles(tmp_path):
    config = LoadConfig.for_scenario(
        "custom",
        parents=1,
        workload="crawl",
        fan_out=3,
        depth=2,
        max_depth=2,
        error_rate=0.3,
        seed=3,
    )
    result = run_load(config, tmp_path)
    assert result.criteria["hierarchy_intact"]
    assert result.criteria["all_parents_terminal"]
    assert result.metrics["jobs_failed"] > 0


def test_the_synthetic_workload_needs_no_network(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the synthetic workload opened a connection")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    result = run_load(LoadConfig.for_scenario("custom", parents=2, children=5), tmp_path)
    assert result.passed


@pytest.mark.parametrize(
    ("scenario", "overrides"),
    [("huge", {}), ("light", {"workload": "telepathy"}), ("custom", {"workers": 0})],
)
def test_bad_scenarios_are_config_errors(scenario, overrides):
    with pytest.raises(litejobs.ConfigError):
        LoadConfig.for_scenario(scenario, **overrides)
