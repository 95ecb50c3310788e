"""The load scenario end to end (light sizes only: heavy runs are a benchmark)."""

from __future__ import annotations

import socket

import pytest

import litejobs
from litejobs import _load
from litejobs._load import LoadConfig, run_load, verify

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
        "jobs_finished_as_expected": True,
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
    assert result.passed, result.criteria
    assert result.metrics["jobs_failed"] > 0  # exactly the pages the site fails


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


def test_a_pool_whose_jobs_all_fail_does_not_pass(tmp_path, monkeypatch):
    async def broken(job, ctx):
        raise RuntimeError("broken handler")

    monkeypatch.setattr(_load, "synthetic_handlers", lambda runtime: {"work": broken})
    result = run_load(LoadConfig.for_scenario("custom", parents=2, children=3), tmp_path)
    assert not result.passed
    assert not result.criteria["jobs_finished_as_expected"]
    assert not result.criteria["throughput_at_least_10_jobs_per_s"]
    assert result.metrics["throughput_jobs_per_s"] == 0.0


class TestVerify:
    """Each database check, fed a state a broken pool could leave."""

    @pytest.fixture
    def family(self, db, store, queue):
        parent = store.create_parent("load")
        store.spawn_children(parent, "work", [0, 1], queue=queue, keys=["0", "1"])
        while (message := queue.receive(visibility_timeout=5)) is not None:
            job = store.start(message.body["job_id"], message.receipt)
            store.complete(job.id, message.receipt, None)
        return parent, {parent: {"0": "completed", "1": "completed"}}

    def test_a_finished_run_passes_every_check(self, db, family):
        _, expected = family
        assert verify(db.connection(), expected) == _load.Checks(0, 0, 1, 1, 0)

    def test_a_leftover_message_is_seen(self, db, queue, family):
        _, expected = family
        queue.send("left behind")
        assert verify(db.connection(), expected).messages_left == 1

    def test_a_missing_or_extra_child_breaks_the_hierarchy(self, db, family):
        parent, expected = family
        assert verify(db.connection(), {parent: {"0": "completed"}}).parents_intact == 0
        more = {parent: {**expected[parent], "2": "completed"}}
        assert verify(db.connection(), more).parents_intact == 0

    def test_an_orphan_is_seen(self, db, family):
        _, expected = family
        conn = db.connection()
        conn.execute("PRAGMA foreign_keys=OFF")
        conn.execute(
            "INSERT INTO jobs (parent_id, kind, status, payload, created_at) "
            "VALUES (999, 'work', 'completed', 'null', 0)"
        )
        conn.execute("PRAGMA foreign_keys=ON")
        assert verify(conn, expected).orphans == 1

    def test_an_unexpected_status_and_an_unfinished_parent_are_seen(self, db, store, queue):
        parent = store.create_parent("load")
        store.spawn_children(parent, "work", [0], queue=queue, keys=["0"])
        checks = verify(db.connection(), {parent: {"0": "completed"}})
        assert checks.unexpected_outcomes == 1  # still pending
        assert checks.parents_terminal == 0
