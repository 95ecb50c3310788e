"""The load report: terminal summary, results.json, report.md and the plots."""

import json
import math

import pytest

from litejobs._metrics import LoadResult, Sample
from litejobs._report import ReportFiles, format_summary, markdown_report, write_report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PLOTS = ("throughput.png", "queue_depth.png", "completion_times.png")
REQUIRED_METRICS = (
    "jobs_total", "wall_time_s", "throughput_jobs_per_s", "mean_completion_s",
    "p50_completion_s", "p95_completion_s", "p99_completion_s", "busy_errors_surfaced",
    "busy_retries", "attempts_distribution", "messages_sent", "messages_deleted",
    "messages_redelivered", "deletion_rate", "hierarchy_integrity", "parents_terminal",
    "queue_depth_mean", "queue_depth_peak", "worker_utilisation", "worker_start_offsets_s",
)  # fmt: skip
CRITERIA = (
    "no_busy_errors_surfaced",
    "all_messages_deleted",
    "hierarchy_intact",
    "all_parents_terminal",
    "workers_staggered",
    "throughput_at_least_10_jobs_per_s",
)


def make_result(
    *, failing=(), samples=None, completion_times=None, **metric_overrides
) -> LoadResult:
    metrics = {
        "jobs_total": 1000,
        "wall_time_s": 42.5,
        "throughput_jobs_per_s": 23.53,
        "mean_completion_s": 0.84,
        "p50_completion_s": 0.61,
        "p95_completion_s": 2.3,
        "p99_completion_s": 4.75,
        "busy_errors_surfaced": 0,
        "busy_retries": 17,
        "attempts_distribution": {"1": 990, "2": 8, "10": 2},
        "messages_sent": 1010,
        "messages_deleted": 1010,
        "messages_redelivered": 12,
        "deletion_rate": 1.0,
        "hierarchy_integrity": 1.0,
        "parents_terminal": 1.0,
        "queue_depth_mean": 123.4,
        "queue_depth_peak": 900,
        "worker_utilisation": [0.91, 0.88, 0.93, 0.9],
        "worker_start_offsets_s": [0.0, 0.5, 1.0, 1.5],
    } | metric_overrides
    if samples is None:
        samples = tuple(
            Sample(t=i * 0.5, completed=i * 12, queue_depth=900 - i * 10) for i in range(80)
        )
    if completion_times is None:
        completion_times = tuple(0.1 + (i % 37) * 0.05 for i in range(1000))
    return LoadResult(
        scenario="crawl-hierarchy",
        started_at="2025-05-01T12:00:00Z",
        config={
            "parents": 10,
            "children": 100,
            "workers": 4,
            "stagger_s": 0.5,
            "workload": "local-http",
            "poll_interval_s": 0.05,
            "visibility_timeout_s": 30.0,
            "machine": "x86_64, 8 cores",
            "python": "3.11.7",
            "sqlite": "3.46.0",
        },
        criteria={name: name not in failing for name in CRITERIA},
        metrics=metrics,
        samples=tuple(samples),
        completion_times_s=tuple(completion_times),
    )


def assert_is_png(path):
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    assert len(data) > len(PNG_SIGNATURE)


def test_summary_of_a_passing_run_says_pass_and_ticks_every_criterion():
    summary = format_summary(make_result())
    header = summary.splitlines()[0]
    assert "crawl-hierarchy" in header
    assert "PASS" in header
    for name in CRITERIA:
        assert f"✓ {name}" in summary
    assert "✗" not in summary
    for figure in ("1,000", "42.50 s", "23.53 jobs/s", "4.750 s", "900", "91.0 %", "1.500 s"):
        assert figure in summary


def test_summary_of_a_failing_run_says_fail_and_crosses_the_failed_criterion():
    summary = format_summary(make_result(failing=["throughput_at_least_10_jobs_per_s"]))
    assert "FAIL" in summary.splitlines()[0]
    assert "✗ throughput_at_least_10_jobs_per_s" in summary
    assert "✓ no_busy_errors_surfaced" in summary


def test_nan_metrics_render_as_not_available():
    result = make_result(p99_completion_s=math.nan, worker_utilisation=[], completion_times=())
    summary = format_summary(result)
    p99_line = next(line for line in summary.splitlines() if "completion p99" in line)
    assert p99_line.split()[-1] == "n/a"
    assert "nan" not in summary.lower()
    report_md = markdown_report(result)
    assert "| completion p99 | n/a |" in report_md
    assert "| worker utilisation | n/a |" in report_md


def test_long_worker_lists_are_summarised_rather_than_listed():
    summary = format_summary(make_result(worker_utilisation=[0.5] * 31 + [1.0]))
    assert "min 50.0 %, mean 51.6 %, max 100.0 % (of 32)" in summary


def test_report_folder_holds_json_markdown_and_three_plots(tmp_path):
    result = make_result()
    files = write_report(result, tmp_path / "nested" / "run")
    assert files == ReportFiles(
        json=tmp_path / "nested/run/results.json",
        markdown=tmp_path / "nested/run/report.md",
        plots=tuple(tmp_path / "nested/run" / name for name in PLOTS),
    )

    document = json.loads(files.json.read_text())
    assert document == result.as_json()
    assert set(document["criteria"]) == set(CRITERIA)
    assert set(REQUIRED_METRICS) <= set(document["metrics"])

    assert files.markdown.read_text() == markdown_report(result)
    for path in files.plots:
        assert_is_png(path)


@pytest.mark.parametrize("failing", [(), ("all_messages_deleted", "workers_staggered")])
def test_markdown_marks_each_criterion_and_links_the_plots(failing):
    report_md = markdown_report(make_result(failing=failing))
    assert report_md.startswith("# Load test: crawl-hierarchy (2025-05-01)")
    assert ("**FAIL**" if failing else "**PASS**") in report_md
    for name in CRITERIA:
        mark = "✗" if name in failing else "✓"
        assert f"| {mark} | `{name}` |" in report_md
    assert "| children | 100 |" in report_md
    assert "| throughput | 23.53 jobs/s |" in report_md
    assert "| 10 | 2 | 0.2 % |" in report_md
    for name in PLOTS:
        assert f"]({name})" in report_md


@pytest.mark.parametrize("samples", [(), (Sample(t=0.0, completed=0, queue_depth=5),)])
def test_a_run_with_no_data_still_writes_every_plot(tmp_path, samples):
    result = make_result(
        samples=samples,
        completion_times=(),
        mean_completion_s=math.nan,
        attempts_distribution={},
    )
    files = write_report(result, tmp_path)
    for path in files.plots:
        assert_is_png(path)
    assert "| completion mean | n/a |" in files.markdown.read_text()


def test_unknown_metrics_and_config_keys_appear_under_their_own_names():
    result = make_result(lease_renewals=7)
    result.config["journal_mode"] = "wal|test"
    report_md = markdown_report(result)
    assert "| lease_renewals | 7 |" in report_md
    assert "| journal_mode | wal\\|test |" in report_md
